"""The state database: Alembic schema, episodes, the append-only action log, the outbox."""

from __future__ import annotations

import threading
from datetime import UTC, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from guardian.config import Config
from guardian.cycle import audit_cycle
from guardian.daemon.schema import metadata
from guardian.daemon.store import InstanceRef, Store
from guardian.errors import ConfigError
from guardian.prices import PriceCatalog
from tests.fake_provider import NOW, FakeProvider, flat_samples, make_instance

REF = InstanceRef("aws:123456789012:i-1", "aws", "123456789012", "us-east-1", "i-1", "trainer")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(f"sqlite:///{tmp_path / 'state' / 'state.db'}")


def test_migrations_build_exactly_the_schema_the_code_uses(store: Store) -> None:
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
    assert version == "0002"


def test_opening_again_keeps_the_data_and_migrates_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    first = Store.open(url)
    with first.transaction() as tx:
        tx.open_episode(REF, NOW, NOW + timedelta(minutes=15), "stop")
    first.close()
    second = Store.open(url)
    with second.reader() as tx:
        assert list(tx.open_episodes()) == [REF.instance_key]


def test_times_come_back_aware_utc_and_naive_ones_are_refused(store: Store) -> None:
    local = (NOW + timedelta(hours=1)).astimezone()  # the machine's zone, not UTC's object
    with store.transaction() as tx:
        tx.open_episode(REF, local, local + timedelta(minutes=15), "stop")
    with store.reader() as tx:
        episode = tx.open_episodes()[REF.instance_key]
    assert episode.warned_at == local
    assert episode.warned_at.tzinfo is UTC
    assert episode.as_ladder().deadline == local + timedelta(minutes=15)
    naive = NOW.replace(tzinfo=None)
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), store.transaction() as tx:
        tx.open_episode(REF, naive, naive + timedelta(days=1), "stop")


def test_one_open_episode_per_instance(store: Store) -> None:
    with store.transaction() as tx:
        first = tx.open_episode(REF, NOW, NOW + timedelta(minutes=15), "stop")
    with pytest.raises(sa.exc.IntegrityError), store.transaction() as tx:
        tx.open_episode(REF, NOW, NOW + timedelta(minutes=15), "stop")
    with store.transaction() as tx:
        tx.close_episode(first, NOW, "resumed:busy")
        tx.open_episode(REF, NOW + timedelta(hours=1), NOW + timedelta(hours=2), "alert")
    with store.reader() as tx:
        episode = tx.open_episodes()[REF.instance_key]
    assert episode.id != first
    assert episode.promise == "alert"


def test_episode_fields_that_may_change_are_few(store: Store) -> None:
    with store.transaction() as tx:
        episode_id = tx.open_episode(REF, NOW, NOW + timedelta(minutes=15), "stop")
        tx.update_episode(episode_id, blocked_reason="max_stops_per_cycle")
        with pytest.raises(ValueError, match="not mutable"):
            tx.update_episode(episode_id, deadline="tomorrow")
    with store.reader() as tx:
        assert tx.open_episodes()[REF.instance_key].blocked_reason == "max_stops_per_cycle"


def test_an_intent_without_outcome_is_pending_and_takes_exactly_one_outcome(store: Store) -> None:
    with store.transaction() as tx:
        intent = tx.record_action(
            at=NOW, cycle_id="c1", ref=REF, action="stop", phase="intent", episode_id=7
        )
    with store.reader() as tx:
        pending = tx.pending_intents()
    assert [(p.id, p.action, p.episode_id, p.ref) for p in pending] == [(intent, "stop", 7, REF)]
    with store.transaction() as tx:
        tx.record_action(
            at=NOW,
            cycle_id="c2",
            ref=REF,
            action="stop",
            phase="outcome",
            outcome="ok",
            intent_id=intent,
        )
    with store.reader() as tx:
        assert tx.pending_intents() == []
    with pytest.raises(sa.exc.IntegrityError), store.transaction() as tx:
        tx.record_action(
            at=NOW,
            cycle_id="c3",
            ref=REF,
            action="stop",
            phase="outcome",
            outcome="ok",
            intent_id=intent,
        )
    with store.reader() as tx:
        assert [a.phase for a in tx.actions_since(NOW - timedelta(hours=1))] == [
            "intent",
            "outcome",
        ]


def test_a_failed_transaction_leaves_nothing_behind(store: Store) -> None:
    def crash_between_writes() -> None:
        with store.transaction() as tx:
            tx.open_episode(REF, NOW, NOW + timedelta(minutes=15), "stop")
            tx.enqueue(at=NOW, kind="warning", dedupe_key="w", targets=["url:a"], message={})
            raise RuntimeError("crash between the writes")

    with pytest.raises(RuntimeError):
        crash_between_writes()
    with store.reader() as tx:
        assert tx.open_episodes() == {}
        assert tx.pending_notifications() == 0


def test_outbox_rows_per_target_deduplicated_and_retried(store: Store) -> None:
    message = {"kind": "warning", "severity": "warning", "title": [], "lines": []}
    with store.transaction() as tx:
        assert (
            tx.enqueue(
                at=NOW,
                kind="warning",
                dedupe_key="warn:1",
                targets=["url:a", "url:b", "url:a"],
                message=message,
            )
            == 2
        )
        assert (
            tx.enqueue(
                at=NOW,
                kind="warning",
                dedupe_key="warn:1",
                targets=["url:a", "owner:x@y.z"],
                message=message,
            )
            == 1
        )
    with store.reader() as tx:
        due = tx.due_notifications(NOW)
    assert [row.target for row in due] == ["url:a", "url:b", "owner:x@y.z"]
    with store.transaction() as tx:
        tx.mark_delivered(due[0].id, NOW)
        tx.mark_failed(due[1].id, "503", NOW + timedelta(seconds=30))
        tx.mark_dropped(due[2].id, NOW, "channel no longer configured")
    with store.reader() as tx:
        assert tx.due_notifications(NOW) == []
        assert [r.target for r in tx.due_notifications(NOW + timedelta(seconds=30))] == ["url:b"]
        assert tx.pending_notifications() == 1
        rows = {r.target: r for r in tx.notifications_since(NOW - timedelta(days=1))}
    assert rows["url:a"].delivered_at == NOW
    assert rows["url:a"].attempts == 1
    assert (rows["url:b"].attempts, rows["url:b"].last_error) == (1, "503")
    assert rows["owner:x@y.z"].dropped_at == NOW


def test_prune_drops_old_observations_but_never_the_action_log(store: Store) -> None:
    instance = make_instance("i-1")
    provider = FakeProvider([instance], {instance.key: flat_samples(0.0, 120)})
    findings = audit_cycle(Config(), [provider], PriceCatalog(types={}), NOW).findings
    old, new = NOW - timedelta(days=40), NOW
    with store.transaction() as tx:
        for at, cycle in ((old, "old"), (new, "new")):
            tx.record_cycle(
                cycle_id=cycle,
                started_at=at,
                duration_s=1.0,
                findings=findings,
                errors=0,
                hourly_burn_usd=1.0,
                idle_burn_usd_per_hour=1.0,
            )
        tx.record_action(at=old, cycle_id="old", ref=REF, action="warn", phase="event")
        assert tx.prune(NOW - timedelta(days=35)) == 1
    with store.reader() as tx:
        assert [o.at for o in tx.observations_since(old - timedelta(days=1))] == [new]
        assert len(tx.actions_since(old - timedelta(days=1))) == 1


def test_conditions_open_and_close(store: Store) -> None:
    with store.transaction() as tx:
        tx.open_condition("breaker:aws 1 us-east-1", NOW, "4 of 5 idle")
        tx.open_condition("other:x", NOW, "")
    with store.reader() as tx:
        assert tx.open_conditions("breaker:") == {"breaker:aws 1 us-east-1": NOW}
    with store.transaction() as tx:
        tx.close_condition("breaker:aws 1 us-east-1")
    with store.reader() as tx:
        assert tx.open_conditions("breaker:") == {}


def test_concurrent_writers_from_threads_do_not_lose_rows(store: Store) -> None:
    def write(worker: int) -> None:
        for i in range(20):
            with store.transaction() as tx:
                tx.record_action(
                    at=NOW,
                    cycle_id=f"w{worker}",
                    ref=REF,
                    action="warn",
                    phase="event",
                    reason=str(i),
                )

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with store.reader() as tx:
        assert len(tx.actions_since(NOW - timedelta(minutes=1))) == 80


def test_a_bad_state_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="state_url"):
        Store("not a url")
    with pytest.raises(ConfigError, match=r"gpu-guardian\[postgres\]"):
        Store("postgresql+nosuchdriver://u@localhost/db")
