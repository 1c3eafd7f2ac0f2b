"""guardian's health and its state database: failing cycles alert once each way, and a database
that refuses writes stops every act that could not be recorded first, never the audit.

The daemon runs in this process over FakeProviders on a simulated clock, with a real SQLite
store and apprise delivering to a local webhook receiver. The database is broken the way SQLite
breaks: ``PRAGMA query_only`` (what a read-only file gives: "attempt to write a readonly
database", which chmod cannot produce for root) and ``PRAGMA max_page_count`` at the current size
with every free page used (a full disk: "database or disk is full").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from guardian.config import Config
from guardian.daemon.service import CycleReport, Daemon
from guardian.errors import StateUnavailable
from guardian.model import GpuInstance
from guardian.providers import StopResult
from tests.e2e.receivers import HttpReceiver
from tests.fake_provider import CATALOG, NOW, FakeProvider, flat_samples, make_instance


@dataclass
class WitnessProvider(FakeProvider):
    """Checks, at the moment of each stop call, that the store already holds its intent."""

    daemon: Daemon | None = None
    unrecorded_stops: list[str] = field(default_factory=list)

    def stop(self, instance: GpuInstance, *, hibernate: bool = False) -> StopResult:
        assert self.daemon is not None
        with self.daemon.store.reader() as tx:
            pending = {intent.ref.instance_key for intent in tx.pending_intents()}
        if instance.key not in pending:
            self.unrecorded_stops.append(instance.key)
        self.instances = [i for i in self.instances if i.key != instance.key]
        return super().stop(instance, hibernate=hibernate)


class World:
    """An idle and a busy instance whose GPU history always ends at the simulated clock."""

    def __init__(self, tmp_path: Path, webhook: str, **changes: Any) -> None:
        self.now = NOW
        launched = NOW - timedelta(days=1)
        self.idle = make_instance("i-idle", launch_time=launched)
        self.busy = make_instance("i-busy", launch_time=launched)
        self.provider = WitnessProvider([self.idle, self.busy])
        self.broken: str | None = None  # None | "catalog"
        data: dict[str, Any] = {
            "mode": "enforce",
            "poll_interval": "1m",
            "state_dir": str(tmp_path / "state"),
            "metrics": {"listen": ""},
            "limits": {"max_idle_fraction": 1.0},
            "idle": {"window": "30m", "grace": "5m", "history_margin": 0, "window_bursty": "0s"},
            "notify": {"urls": [webhook], "digest": ""},
            **changes,
        }
        self.daemon = Daemon(
            Config.model_validate(data),
            providers=lambda _config: [self.provider],
            catalog=self._catalog,
            clock=lambda: self.now,
        )
        self.provider.daemon = self.daemon

    def _catalog(self, _state_dir: Path) -> Any:
        if self.broken == "catalog":
            raise RuntimeError("price catalog unreadable")
        return CATALOG

    def cycle(self) -> CycleReport | None:
        self.provider.samples = {
            self.idle.key: flat_samples(0.0, 120, end=self.now),
            self.busy.key: flat_samples(95.0, 120, end=self.now),
        }
        report = self.daemon.run_cycle()
        self.now += timedelta(minutes=1)
        return report

    def actions(self) -> list[tuple[str, str, str | None]]:
        with self.daemon.store.reader() as tx:
            rows = tx.actions_since(NOW - timedelta(days=1))
        return [(a.action, a.phase, a.outcome) for a in rows]


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    yield receiver
    receiver.close()


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_failing_cycles_alert_once_when_they_persist_and_once_when_they_recover(
    tmp_path: Path, http: HttpReceiver
) -> None:
    world = World(tmp_path, http.url())
    world.cycle()
    world.broken = "catalog"
    with capture_logs() as logs:
        for _ in range(6):
            assert world.cycle() is None
    assert len(_events(logs, "cycle_failed")) == 6
    assert len(_events(logs, "cycles_failing")) == 1
    world.broken = None
    world.cycle()
    world.cycle()
    health = [title for title in http.titles() if title.startswith("guardian")]
    assert health == [
        "guardian: the last 3 cycles failed",
        "guardian: cycles succeed again after 6 failed",
    ]
    world.daemon.close()


def test_a_single_failed_cycle_stays_quiet_and_one_means_at_once(
    tmp_path: Path, http: HttpReceiver
) -> None:
    world = World(tmp_path, http.url())
    world.broken = "catalog"
    world.cycle()
    world.broken = None
    world.cycle()
    assert not [t for t in http.titles() if t.startswith("guardian")]
    world.daemon.close()

    eager = World(tmp_path / "eager", http.url(), limits={"alert_after_failed_cycles": 1})
    eager.broken = "catalog"
    eager.cycle()
    assert "guardian: the last 1 cycles failed" in http.titles()
    eager.daemon.close()


def _read_only(_dbapi: Any, _record: Any) -> None:
    cursor = _dbapi.cursor()
    cursor.execute("PRAGMA query_only = ON")
    cursor.close()


def _full(_dbapi: Any, _record: Any) -> None:
    cursor = _dbapi.cursor()
    pages = cursor.execute("PRAGMA page_count").fetchone()[0]
    cursor.execute(f"PRAGMA max_page_count = {pages}")
    cursor.close()


def _fill(engine: sa.Engine) -> int:
    """Use up every free page (the ballast table exists already), so that any write that
    needs one more page fails; returns the rows it took."""
    for rows in range(100_000):
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("INSERT INTO ballast VALUES (zeroblob(1000))"))
        except sa.exc.OperationalError as exc:
            if "full" not in str(exc.orig):
                raise
            return rows
    raise AssertionError("max_page_count did not bound the database")


def test_a_read_only_state_database_stops_every_unrecorded_act_never_the_audit(
    tmp_path: Path, http: HttpReceiver
) -> None:
    world = World(tmp_path, http.url())
    world.cycle()  # warned: deadline in 5 minutes
    engine = world.daemon.store.engine
    sa.event.listen(engine, "connect", _read_only)
    engine.dispose()
    with capture_logs() as logs:
        reports = [world.cycle() for _ in range(8)]  # the deadline passes meanwhile
    # Still auditing: every cycle measured both instances and said what it could not record.
    assert all(r is not None and len(r.result.findings) == 2 and r.state_error for r in reports)
    (said,) = _events(logs, "state_unwritable")  # one line, not one per cycle
    assert said["error"].endswith("attempt to write a readonly database")
    assert world.provider.stopped == []  # the stop intent could not be written: no stop
    assert http.titles().count("guardian: the last 3 cycles failed") == 1  # past the outbox
    with pytest.raises(StateUnavailable), world.daemon.store.transaction() as tx:
        tx.open_condition("probe", NOW, "write")

    sa.event.remove(engine, "connect", _read_only)  # the file is writable again
    with capture_logs() as logs:
        world.cycle()  # the very next cycle: no pooled read-only connection is reused
    assert _events(logs, "state_writable_again")
    assert world.provider.stopped == [world.idle.key]
    assert world.provider.unrecorded_stops == []
    assert world.actions() == [
        ("warn", "event", "stop"),
        ("stop", "intent", None),
        ("stop", "outcome", "ok"),
    ]
    titles = http.titles()
    assert titles.count("guardian: the last 3 cycles failed") == 1
    assert titles.count("guardian: cycles succeed again after 8 failed") == 1
    assert titles.count(f"Stopped idle GPU instance name-i-idle ({world.idle.instance_id})") == 1
    world.daemon.close()


def test_a_full_state_database_is_said_once_audited_through_and_recovered_from(
    tmp_path: Path, http: HttpReceiver
) -> None:
    """A full disk still takes writes that fit in a page with room, so the daemon runs on
    until one needs a new page; from then on it audits, records nothing, says why once."""
    world = World(tmp_path, http.url())
    engine = world.daemon.store.engine
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE ballast (junk BLOB)"))
    sa.event.listen(engine, "connect", _full)
    engine.dispose()
    _fill(engine)
    reports: list[CycleReport | None] = []
    with capture_logs() as logs:
        while not (reports and reports[-1] is not None and reports[-1].state_error):
            assert len(reports) < 80, "the database never filled up"
            reports.append(world.cycle())
        reports += [world.cycle() for _ in range(3)]
    assert all(r is not None and r.result.findings for r in reports)
    (said,) = _events(logs, "state_unwritable")
    assert said["error"].endswith("database or disk is full")
    assert world.provider.unrecorded_stops == []  # whatever it stopped, it recorded first
    assert http.titles().count("guardian: the last 3 cycles failed") == 1

    sa.event.remove(engine, "connect", _full)  # space is freed
    with capture_logs() as logs:
        world.cycle()
        world.cycle()
    assert _events(logs, "state_writable_again")
    assert world.provider.stopped == [world.idle.key]  # once, in all
    with world.daemon.store.reader() as tx:
        assert tx.pending_intents() == []
    assert sum(t.startswith("guardian: cycles succeed again") for t in http.titles()) == 1
    world.daemon.close()


def test_a_state_outage_between_the_stop_and_its_outcome_is_reconciled(
    tmp_path: Path, http: HttpReceiver
) -> None:
    """The intent is written, the stop made, then the database refuses the outcome: the
    intent stays open and is answered, from the instance's state, once it accepts again."""
    world = World(tmp_path, http.url())
    world.cycle()
    engine = world.daemon.store.engine
    original_stop = world.provider.stop

    def stop_then_break(instance: GpuInstance, *, hibernate: bool = False) -> StopResult:
        result = original_stop(instance, hibernate=hibernate)
        sa.event.listen(engine, "connect", _read_only)
        engine.dispose()
        return result

    world.provider.stop = stop_then_break  # type: ignore[method-assign]
    world.now += timedelta(minutes=5)
    report = world.cycle()
    assert report is not None
    assert report.state_error
    with world.daemon.store.reader() as tx:
        assert [i.action for i in tx.pending_intents()] == ["stop"]
    sa.event.remove(engine, "connect", _read_only)
    world.cycle()
    assert world.actions() == [
        ("warn", "event", "stop"),
        ("stop", "intent", None),
        ("stop", "outcome", "ok"),
    ]
    assert world.provider.stopped == [world.idle.key]  # once
    world.daemon.flush_outbox()
    assert f"Stopped idle GPU instance name-i-idle ({world.idle.instance_id})" in http.titles()
    world.daemon.close()


def test_status_line_names_what_was_not_audited_or_recorded() -> None:
    from guardian.cycle import CycleResult
    from guardian.daemon.enforce import EnforceSummary
    from guardian.daemon.store import InstanceRef

    ref = InstanceRef("aws:1:i-1", "aws", "1", "us-west-2", "i-1")
    report = CycleReport(
        "c",
        CycleResult(datetime.now(UTC), ()),
        EnforceSummary(),
        0.1,
        not_audited=(ref,),
        state_error="full",
    )
    assert report.status_line().endswith(
        "0 errors, 1 not audited; state database refuses writes: nothing enforced"
    )
