"""The state database on a real PostgreSQL (and SQLite beside it): migrations, serialized
migrations of replicas started together, and the database-level guarantees the replicas rely on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext

from guardian.daemon.schema import metadata
from guardian.daemon.store import MIGRATIONS, InstanceRef, Store
from tests.fake_provider import NOW

REF = InstanceRef("aws:123456789012:i-1", "aws", "123456789012", "us-east-1", "i-1", "trainer")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return str(request.getfixturevalue("pg_url"))


def _upgrade(url: str, revision: str) -> None:
    engine = sa.create_engine(url)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    engine.dispose()


def test_migrations_build_exactly_the_schema_on_both_databases(url: str) -> None:
    store = Store.open(url)
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
    assert version == "0002"
    store.close()


def test_upgrading_from_the_first_schema_keeps_open_episodes(url: str) -> None:
    _upgrade(url, "0001")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO episodes (instance_key, provider, account, region, instance_id, "
                "warned_at, deadline, promise) VALUES (:k, 'aws', '123456789012', 'us-east-1', "
                "'i-1', :at, :at, 'stop')"
            ),
            {"k": REF.instance_key, "at": NOW},
        )
    engine.dispose()
    store = Store.open(url)
    with store.reader() as tx:
        (episode,) = tx.open_episodes().values()
    with store.transaction() as tx:
        assert tx.take_stop(episode.id, 1)
        assert not tx.take_stop(episode.id, 2)  # one stop in flight per episode
    store.close()


def _together(count: int, work: Callable[[int], object]) -> list[BaseException | None]:
    barrier = threading.Barrier(count)
    outcomes: list[BaseException | None] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            work(index)
        except BaseException as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


def test_three_replicas_migrating_an_empty_database_at_once_all_come_up(pg_url: str) -> None:
    stores: list[Store] = []

    def open_one(_index: int) -> None:
        stores.append(Store.open(pg_url))

    assert _together(3, open_one) == [None, None, None]
    assert len(stores) == 3
    with stores[0].engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    for store in stores:
        store.close()


def test_one_warning_per_episode_even_from_two_replicas_at_once(pg_url: str) -> None:
    stores = [Store.open(pg_url), Store.open(pg_url)]

    def warn(index: int) -> None:
        with stores[index].transaction() as tx:
            tx.open_episode(REF, NOW, NOW + timedelta(minutes=15), "stop")

    outcomes = _together(2, warn)
    assert sorted(type(o).__name__ for o in outcomes) == ["IntegrityError", "NoneType"]
    with stores[0].reader() as tx:
        assert list(tx.open_episodes()) == [REF.instance_key]
    for store in stores:
        store.close()


def test_an_outbox_row_is_taken_for_delivery_by_one_replica_only(pg_url: str) -> None:
    stores = [Store.open(pg_url), Store.open(pg_url)]
    with stores[0].transaction() as tx:
        tx.enqueue(at=NOW, kind="warn", dedupe_key="warn:1", targets=["url:a"], message={})
    with stores[1].transaction() as tx:  # the same message queued by another replica: no row
        queued = tx.enqueue(at=NOW, kind="warn", dedupe_key="warn:1", targets=["url:a"], message={})
    assert queued == 0
    hold = NOW + timedelta(minutes=2)
    with stores[0].transaction() as first:
        taken = first.claim_due_notifications(NOW, hold)
        with stores[1].transaction() as second:  # while the first holds it: skipped, not waited
            assert second.claim_due_notifications(NOW, hold) == []
    assert [row.dedupe_key for row in taken] == ["warn:1"]
    with stores[1].transaction() as tx:  # taken: not due again until the hold ends
        assert tx.claim_due_notifications(NOW + timedelta(minutes=1), hold) == []
        assert len(tx.claim_due_notifications(hold, hold + timedelta(minutes=2))) == 1
    for store in stores:
        store.close()
