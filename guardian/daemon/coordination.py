"""Who audits which unit of a cycle: this process alone (SQLite), or replicas on one PostgreSQL.

A cycle is split into units (``providers.Unit``: provider, account or project, region).

- ``LocalCoordinator`` (SQLite): one process plans the units and runs them all; nothing changes.
- ``DbCoordinator`` (PostgreSQL): the cycle is ``floor(epoch seconds / poll_interval)``, the same
  number on every replica. The first replica to start it plans its units under an advisory lock
  (the others find the plan). Replicas then claim units one at a time with
  ``SELECT … FOR UPDATE SKIP LOCKED``; a claim is a lease on the database's clock, renewed while
  the unit runs, and a fencing token that every claim increments. Every write made for a unit
  re-checks the token in its own transaction (``fence``), so a replica that lost its lease — it
  died, hung or was paused past it, and another took the unit over — cannot warn or record a stop
  intent any more. Before the cloud call itself, the replica also checks its own clock against
  the lease (``Lease.held``), with a margin, which closes the gap between the intent's commit and
  the call. The stop budget (``limits.max_stops_per_cycle``) is a counter in the cycle's row.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
import structlog

from guardian import __version__
from guardian.daemon.store import Store, Tx
from guardian.errors import GuardianError
from guardian.providers import Unit, UnitError, UnitPlan

__all__ = [
    "Coordinator",
    "CyclePlan",
    "DbCoordinator",
    "Lease",
    "LeaseLost",
    "LocalCoordinator",
    "UnitReport",
    "coordinator_for",
    "replica_id",
]

log = structlog.get_logger(__name__)

PLAN_LOCK = 0x6767706C616E  # advisory lock held while a cycle is planned ("ggplan")
DIGEST_LOCK = 0x676764696773  # held while the daily digest is queued ("ggdigs")
PRICES_LOCK = 0x676770726963  # held while prices are refreshed ("ggpric")


class LeaseLost(GuardianError):
    """This replica no longer holds the unit: whatever it was about to write is not written."""


def replica_id() -> str:
    """``host-pid-random``: unique per process, readable in ``guardian status``."""
    return f"{socket.gethostname()[:80]}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


@dataclass
class Lease:
    """This replica's claim on one unit for one cycle."""

    unit: Unit
    token: int
    held_until: float  # time.monotonic() after which it no longer counts on holding it
    revoked: threading.Event = field(default_factory=threading.Event)

    def held(self) -> bool:
        return not self.revoked.is_set() and time.monotonic() < self.held_until

    def revoke(self) -> None:
        self.revoked.set()


@dataclass(frozen=True)
class CyclePlan:
    cycle: int
    started_at: datetime  # the cycle's time: observations of all its units carry it
    units: tuple[Unit, ...]  # as planned by this replica (empty when another one planned it)
    errors: tuple[UnitError, ...] = ()
    planned_here: bool = True


@dataclass(frozen=True)
class UnitReport:
    instances: int
    api_calls: int
    duration_s: float
    error: str | None = None


class Coordinator(Protocol):
    replica: str
    shared: bool  # other replicas share the cycle: claim no more once the next one is due

    def plan(self, now: datetime, make_plan: Callable[[], UnitPlan]) -> CyclePlan: ...
    def claim(self, plan: CyclePlan) -> Lease | None: ...
    def others_busy(self, plan: CyclePlan) -> bool: ...
    def renew(self, leases: Sequence[Lease]) -> None: ...
    def finish(self, plan: CyclePlan, lease: Lease, report: UnitReport) -> None: ...
    def fence(self, tx: Tx, lease: Lease) -> None: ...
    def reserve_stop(self, tx: Tx, plan: CyclePlan, limit: int) -> bool: ...
    def return_stop(self, tx: Tx, plan: CyclePlan) -> None: ...
    def heartbeat(self, cycle: int | None, running: int, done: int) -> None: ...


class LocalCoordinator:
    """SQLite: this process plans and runs every unit; a lease ends only by a unit's timeout."""

    shared = False

    def __init__(self, replica: str | None = None) -> None:
        self.replica = replica or replica_id()
        self._lock = threading.Lock()
        self._queue: list[Unit] = []
        self._stops: dict[int, int] = {}
        self._cycles = 0

    def plan(self, now: datetime, make_plan: Callable[[], UnitPlan]) -> CyclePlan:
        planned = make_plan()
        with self._lock:
            self._cycles += 1
            self._queue = list(planned.units)
            return CyclePlan(self._cycles, now, planned.units, planned.errors)

    def claim(self, plan: CyclePlan) -> Lease | None:
        with self._lock:
            if not self._queue:
                return None
            return Lease(self._queue.pop(0), token=1, held_until=math.inf)

    def others_busy(self, plan: CyclePlan) -> bool:
        return False

    def renew(self, leases: Sequence[Lease]) -> None:
        return None

    def finish(self, plan: CyclePlan, lease: Lease, report: UnitReport) -> None:
        return None

    def fence(self, tx: Tx, lease: Lease) -> None:
        if not lease.held():
            raise LeaseLost(f"unit {lease.unit.key} was given up (timed out)")

    def reserve_stop(self, tx: Tx, plan: CyclePlan, limit: int) -> bool:
        with self._lock:
            used = self._stops.get(plan.cycle, 0)
            if used >= limit:
                return False
            self._stops = {plan.cycle: used + 1}
            return True

    def return_stop(self, tx: Tx, plan: CyclePlan) -> None:
        with self._lock:
            used = self._stops.get(plan.cycle, 0)
            self._stops = {plan.cycle: max(0, used - 1)}

    def heartbeat(self, cycle: int | None, running: int, done: int) -> None:
        return None


_CLAIM = sa.text(
    """
    UPDATE work_units
       SET owner = :me, token = token + 1, cycle = :cycle, claimed_at = now(),
           lease_until = now() + :lease * interval '1 second', error = NULL
     WHERE key = (
           SELECT key FROM work_units
            WHERE planned_cycle = :cycle AND done_cycle < :cycle
              AND (lease_until IS NULL OR lease_until < now())
            ORDER BY (cycle = :cycle) DESC, key
            LIMIT 1
            FOR UPDATE SKIP LOCKED)
    RETURNING key, token, cycle
    """
)
_PLAN_UNIT = sa.text(
    """
    INSERT INTO work_units (key, provider, account, region, planned_cycle, cycle, done_cycle, token)
    VALUES (:key, :provider, :account, :region, :cycle, -1, -1, 0)
    ON CONFLICT (key) DO UPDATE SET planned_cycle = EXCLUDED.planned_cycle
    """
)


class DbCoordinator:
    """PostgreSQL: units claimed with leases and fencing tokens by any number of replicas."""

    shared = True

    def __init__(self, store: Store, poll_interval: timedelta, lease: timedelta) -> None:
        if not store.is_postgres:
            raise ValueError("DbCoordinator needs PostgreSQL")
        self.replica = replica_id()
        self._store = store
        self._poll_s = max(poll_interval.total_seconds(), 1.0)
        self._lease_s = lease.total_seconds()
        # Stop counting on a lease a quarter of it before it runs out: a paused or slow replica
        # must not start a stop in the moment its unit is handed to another.
        self._margin_s = self._lease_s / 4
        self._started_at = datetime.now(UTC)

    def _execute(self, statement: Any, **params: Any) -> Any:
        with self._store.engine.begin() as conn:
            return conn.execute(statement, params)

    def plan(self, now: datetime, make_plan: Callable[[], UnitPlan]) -> CyclePlan:
        cycle = int(now.timestamp() // self._poll_s)
        started_at = datetime.fromtimestamp(cycle * self._poll_s, UTC)
        with self._store.engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": PLAN_LOCK})
            existing = conn.execute(
                sa.text("SELECT errors FROM cycle_plans WHERE cycle = :cycle"), {"cycle": cycle}
            ).first()
            if existing is not None:
                errors = tuple(UnitError(**e) for e in existing.errors or [])
                return CyclePlan(cycle, started_at, (), errors, planned_here=False)
            planned = make_plan()  # under the lock: the other replicas wait for this plan
            conn.execute(
                sa.text(
                    "INSERT INTO cycle_plans (cycle, started_at, planned_at, planner, units, "
                    "stops, errors) VALUES (:cycle, :started, now(), :me, :units, 0, "
                    "CAST(:errors AS JSON))"
                ),
                {
                    "cycle": cycle,
                    "started": started_at,
                    "me": self.replica,
                    "units": len(planned.units),
                    "errors": _errors_json(planned.errors),
                },
            )
            if planned.units:
                conn.execute(
                    _PLAN_UNIT,
                    [
                        {
                            "key": u.key,
                            "provider": u.provider,
                            "account": u.account,
                            "region": u.region,
                            "cycle": cycle,
                        }
                        for u in planned.units
                    ],
                )
        log.info("cycle_planned", cycle=cycle, units=len(planned.units), errors=len(planned.errors))
        return CyclePlan(cycle, started_at, planned.units, planned.errors)

    def claim(self, plan: CyclePlan) -> Lease | None:
        sent = time.monotonic()
        row = self._execute(_CLAIM, me=self.replica, cycle=plan.cycle, lease=self._lease_s).first()
        if row is None:
            return None
        return Lease(Unit.from_key(row.key), int(row.token), sent + self._lease_s - self._margin_s)

    def others_busy(self, plan: CyclePlan) -> bool:
        row = self._execute(
            sa.text(
                "SELECT count(*) AS n FROM work_units "
                "WHERE planned_cycle = :cycle AND done_cycle < :cycle"
            ),
            cycle=plan.cycle,
        ).first()
        return bool(row and row.n)

    def renew(self, leases: Sequence[Lease]) -> None:
        sent = time.monotonic()
        with self._store.engine.begin() as conn:
            for lease in leases:
                if lease.revoked.is_set():
                    continue
                renewed = conn.execute(
                    sa.text(
                        "UPDATE work_units SET lease_until = now() + :lease * interval '1 second' "
                        "WHERE key = :key AND token = :token AND lease_until > now()"
                    ),
                    {"lease": self._lease_s, "key": lease.unit.key, "token": lease.token},
                ).rowcount
                if renewed:
                    lease.held_until = sent + self._lease_s - self._margin_s
                else:
                    lease.revoke()
                    log.warning("lease_lost", unit=lease.unit.key, token=lease.token)

    def finish(self, plan: CyclePlan, lease: Lease, report: UnitReport) -> None:
        done = self._execute(
            sa.text(
                "UPDATE work_units SET done_cycle = :cycle, lease_until = NULL, done_at = now(), "
                "duration_s = :duration, instances = :instances, api_calls = :calls, "
                "error = :error WHERE key = :key AND token = :token"
            ),
            cycle=plan.cycle,
            duration=report.duration_s,
            instances=report.instances,
            calls=report.api_calls,
            error=report.error,
            key=lease.unit.key,
            token=lease.token,
        ).rowcount
        if not done:
            log.warning("unit_taken_over", unit=lease.unit.key, token=lease.token)

    def fence(self, tx: Tx, lease: Lease) -> None:
        if not lease.held():
            raise LeaseLost(f"unit {lease.unit.key}: lease {lease.token} is no longer held")
        # FOR SHARE: a claim by another replica (an UPDATE of this row) waits for this
        # transaction to end, so what it writes is either fenced out or already committed.
        row = tx.conn.execute(
            sa.text(
                "SELECT 1 FROM work_units WHERE key = :key AND token = :token "
                "AND lease_until > now() FOR SHARE"
            ),
            {"key": lease.unit.key, "token": lease.token},
        ).first()
        if row is None:
            lease.revoke()
            raise LeaseLost(f"unit {lease.unit.key}: lease {lease.token} was taken over")

    def reserve_stop(self, tx: Tx, plan: CyclePlan, limit: int) -> bool:
        row = tx.conn.execute(
            sa.text(
                "UPDATE cycle_plans SET stops = stops + 1 WHERE cycle = :cycle AND stops < :limit "
                "RETURNING stops"
            ),
            {"cycle": plan.cycle, "limit": limit},
        ).first()
        return row is not None

    def return_stop(self, tx: Tx, plan: CyclePlan) -> None:
        tx.conn.execute(
            sa.text("UPDATE cycle_plans SET stops = stops - 1 WHERE cycle = :cycle AND stops > 0"),
            {"cycle": plan.cycle},
        )

    def heartbeat(self, cycle: int | None, running: int, done: int) -> None:
        self._execute(
            sa.text(
                "INSERT INTO replicas (id, host, pid, version, started_at, seen_at, cycle, "
                "units_running, units_done) VALUES (:id, :host, :pid, :version, :started, now(), "
                ":cycle, :running, :done) ON CONFLICT (id) DO UPDATE SET seen_at = now(), "
                "cycle = EXCLUDED.cycle, units_running = EXCLUDED.units_running, "
                "units_done = EXCLUDED.units_done"
            ),
            id=self.replica,
            host=socket.gethostname()[:250],
            pid=os.getpid(),
            version=__version__,
            started=self._started_at,
            cycle=cycle,
            running=running,
            done=done,
        )


def _errors_json(errors: Sequence[UnitError]) -> str:
    import json
    from dataclasses import asdict

    return json.dumps([asdict(e) for e in errors])


def coordinator_for(store: Store, poll_interval: timedelta, lease: timedelta) -> Coordinator:
    if store.is_postgres:
        return DbCoordinator(store, poll_interval, lease)
    return LocalCoordinator()
