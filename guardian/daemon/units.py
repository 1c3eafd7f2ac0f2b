"""One replica's share of a cycle: claim units, audit and enforce each on a bounded pool.

At most ``units.workers`` units run at once, each on its own thread. A unit still running after
``units.timeout`` is given up: its lease is revoked (so its thread, whatever it is waiting on,
can no longer write or stop anything), it is recorded as failed, and its slot goes to the next
unit — one hanging account delays nobody else beyond its own timeout. The thread itself ends
when its call returns (every SDK call has its own timeout).

Per (account, region) at most one unit runs at a time, across replicas too, so the API rate
an account sees is that of one unit: see docs/scale-out.md for the figures.
"""

from __future__ import annotations

import contextvars
import math
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from guardian.config import Config
from guardian.cycle import CycleResult, audit_cycle, audit_units
from guardian.daemon.coordination import Coordinator, CyclePlan, Lease, LeaseLost, UnitReport
from guardian.daemon.enforce import Enforcer, EnforceSummary
from guardian.daemon.store import Store, Tx
from guardian.errors import StateUnavailable
from guardian.model import Finding
from guardian.prices import PriceCatalog
from guardian.providers import Provider, Unit, UnitError, UnitPlan

__all__ = ["ReplicaCycle", "UnitRunner", "merge_summaries"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ReplicaCycle:
    """What this replica did of one cycle."""

    plan: CyclePlan
    result: CycleResult
    enforcement: EnforceSummary
    units: int
    failed_units: int
    api_calls: int
    # The state database refused a write: the audit stands, nothing more was enforced.
    state_error: str | None = None


def merge_summaries(summaries: Sequence[EnforceSummary]) -> EnforceSummary:
    total = EnforceSummary()
    tripped: list[str] = []
    for s in summaries:
        total.warned += s.warned
        total.resumed += s.resumed
        total.reconciled += s.reconciled
        total.unconfirmed += s.unconfirmed
        total.stops.update(s.stops)
        total.stop_failures.update(s.stop_failures)
        total.blocked.update(s.blocked)
        tripped.extend(s.tripped_units)
    total.tripped_units = tuple(sorted(tripped))
    return total


class _Guard:
    """``enforce.UnitGuard`` for one claimed unit."""

    def __init__(self, coordinator: Coordinator, plan: CyclePlan, lease: Lease, limit: int):
        self.replica: str | None = coordinator.replica
        self._coordinator = coordinator
        self._plan = plan
        self._lease = lease
        self._limit = limit

    def fence(self, tx: Tx) -> None:
        self._coordinator.fence(tx, self._lease)

    def reserve_stop(self, tx: Tx) -> bool:
        return self._coordinator.reserve_stop(tx, self._plan, self._limit)

    def return_stop(self, tx: Tx) -> None:
        self._coordinator.return_stop(tx, self._plan)

    def held(self) -> bool:
        return self._lease.held()


@dataclass
class _Slot:
    lease: Lease
    started: float
    findings: tuple[Finding, ...] = ()
    errors: tuple[UnitError, ...] = ()
    summary: EnforceSummary | None = None
    failure: str | None = None
    state_error: str | None = None  # the database refused writes: audited, not enforced
    abandoned: bool = False


@dataclass
class _Work:
    """Everything one run of ``UnitRunner.run`` shares with its unit threads."""

    config: Config
    providers: dict[str, Provider]
    enforcer: Enforcer
    catalog: PriceCatalog
    plan: CyclePlan
    cycle_id: str
    finished: queue.Queue[_Slot] = field(default_factory=queue.Queue)


class UnitRunner:
    def __init__(
        self,
        coordinator: Coordinator,
        store: Store,
        clock: Callable[[], datetime],
        stopping: threading.Event,
    ) -> None:
        self.coordinator = coordinator
        self._store = store
        self._clock = clock
        self._stopping = stopping
        self._lock = threading.Lock()
        self._running: dict[str, _Slot] = {}
        self._done_total = 0
        self._cycle: int | None = None

    # -- the keeper thread: leases renewed, the replica seen alive ----------------------------
    def keep_alive(self) -> None:
        with self._lock:
            leases = [slot.lease for slot in self._running.values() if not slot.abandoned]
            running, done, cycle = len(leases), self._done_total, self._cycle
        if leases:
            self.coordinator.renew(leases)
        self.coordinator.heartbeat(cycle, running, done)

    # -- a cycle ------------------------------------------------------------------------------
    def run(
        self,
        config: Config,
        providers: Sequence[Provider],
        enforcer: Enforcer,
        catalog: PriceCatalog,
        cycle_id: str,
    ) -> ReplicaCycle:
        calls_before = _api_calls(providers)
        try:
            with self._store.state_errors():
                plan = self.coordinator.plan(self._clock(), lambda: _plan_all(providers))
        except StateUnavailable as exc:
            return self._audit_only(config, providers, catalog, str(exc), calls_before)
        for error in plan.errors if plan.planned_here else ():
            log.warning(
                "unit_plan_failed",
                provider=error.provider,
                account=error.account,
                operation=error.operation,
                error=error.message,
            )
        work = _Work(config, {p.name: p for p in providers}, enforcer, catalog, plan, cycle_id)
        with self._lock:
            self._cycle = plan.cycle
        try:
            slots = self._work_through(work)
        finally:
            self._drop_leftovers()
        findings = sorted(
            (f for s in slots for f in s.findings),
            key=lambda f: (-(f.decision.wasted_usd or 0.0), f.instance.key),
        )
        errors = [e for s in slots for e in s.errors]
        if plan.planned_here:
            errors[:0] = plan.errors
        failed = sum(1 for s in slots if s.failure or s.errors)
        summary = merge_summaries([s.summary for s in slots if s.summary is not None])
        state_error = next((s.state_error for s in slots if s.state_error), None)
        return ReplicaCycle(
            plan,
            CycleResult(plan.started_at, tuple(findings), tuple(errors)),
            summary,
            units=len(slots),
            failed_units=failed,
            api_calls=sum(_api_calls(providers).values()) - sum(calls_before.values()),
            state_error=state_error,
        )

    def _audit_only(
        self,
        config: Config,
        providers: Sequence[Provider],
        catalog: PriceCatalog,
        state_error: str,
        calls_before: Counter[str],
    ) -> ReplicaCycle:
        """The shared database is down (PostgreSQL), so no unit can be claimed: audit
        everything read-only, as if alone, and enforce nothing — nothing could be recorded
        first. Every replica does so until the database is back (more API calls for the
        outage, and the metrics and status line stay current)."""
        now = self._clock()
        result = audit_cycle(config, providers, catalog, now)
        return ReplicaCycle(
            CyclePlan(cycle=-1, started_at=now, units=(), planned_here=False),
            result,
            EnforceSummary(),
            units=0,
            failed_units=0,
            api_calls=sum(_api_calls(providers).values()) - sum(calls_before.values()),
            state_error=state_error,
        )

    def _work_through(self, work: _Work) -> list[_Slot]:
        config, plan = work.config, work.plan
        timeout_s = config.units.timeout.total_seconds()
        wait_s = min(max(config.units.lease.total_seconds() / 8, 0.2), 2.0)
        # With replicas, claim no more once the next cycle is due: its plan holds what is left.
        # Alone (SQLite), a slow cycle takes longer, as it always has.
        poll_s = max(config.poll_interval.total_seconds(), 1.0)
        stop_claiming = time.time() + poll_s if self.coordinator.shared else math.inf
        done: list[_Slot] = []
        while True:
            self._collect(work, done)
            self._expire(work, done, timeout_s)
            with self._lock:
                active = sum(1 for s in self._running.values() if not s.abandoned)
            claiming = not self._stopping.is_set() and time.time() < stop_claiming
            if claiming and active < config.units.workers:
                try:
                    lease = self.coordinator.claim(plan)
                except Exception as exc:  # the database is gone: finish what runs, claim no more
                    log.error("unit_claim_failed", error=str(exc).splitlines()[0][:300])
                    stop_claiming = 0.0
                    continue
                if lease is not None:
                    self._start(work, lease)
                    continue
            if active == 0:
                if not claiming or not self._others_busy(plan):
                    break
                # Units of this cycle are held by other replicas: wait, and take over any
                # whose lease runs out (its replica died or hangs).
                time.sleep(wait_s)
                continue
            try:
                done_slot = work.finished.get(timeout=wait_s)
            except queue.Empty:
                continue
            work.finished.put(done_slot)
        return done

    def _others_busy(self, plan: CyclePlan) -> bool:
        try:
            return self.coordinator.others_busy(plan)
        except Exception as exc:
            log.error("unit_claim_failed", error=str(exc).splitlines()[0][:300])
            return False

    def _drop_leftovers(self) -> None:
        """Units still running when a cycle ends early (it failed): given up, leases revoked,
        so that none is renewed for ever by a cycle that no longer waits for it."""
        with self._lock:
            left = list(self._running.values())
            self._running.clear()
        for slot in left:
            slot.abandoned = True
            slot.lease.revoke()
            log.warning("unit_abandoned", unit=slot.lease.unit.key)

    def _start(self, work: _Work, lease: Lease) -> None:
        slot = _Slot(lease, time.monotonic())
        with self._lock:
            self._running[lease.unit.key] = slot
        # The unit's thread logs with the cycle's context (cycle_id) bound by the caller.
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run,
            args=(self._run_unit, work, slot),
            name=f"unit-{lease.unit.key}",
            daemon=True,
        )
        thread.start()

    def _run_unit(self, work: _Work, slot: _Slot) -> None:
        unit = slot.lease.unit
        with structlog.contextvars.bound_contextvars(unit=unit.key, claim=slot.lease.token):
            try:
                provider = work.providers.get(unit.provider)
                if provider is None:
                    raise LeaseLost(f"provider {unit.provider} is not configured here")
                result = audit_units(work.config, provider, [unit], work.catalog, self._clock())
                guard = _Guard(
                    self.coordinator, work.plan, slot.lease, work.config.limits.max_stops_per_cycle
                )
                try:
                    slot.summary = work.enforcer.run(
                        result, self._clock(), work.cycle_id, unit=unit, guard=guard
                    )
                    with self._store.transaction() as tx:
                        self.coordinator.fence(tx, slot.lease)
                        tx.record_observations(work.cycle_id, work.plan.started_at, result.findings)
                except StateUnavailable as exc:
                    # The audit stands (reported, counted); nothing more is warned about or
                    # stopped, as nothing could be recorded. The daemon says so once.
                    slot.state_error = str(exc)
                slot.findings, slot.errors = result.findings, result.errors
            except LeaseLost as exc:
                slot.failure = f"lease lost: {exc}"
                log.warning("unit_lease_lost", error=str(exc))
            except Exception as exc:  # a database or SDK failure ends this unit, not the cycle
                slot.failure = f"{type(exc).__name__}: {exc}"
                log.error("unit_failed", error=slot.failure[:500])
            work.finished.put(slot)

    def _collect(self, work: _Work, done: list[_Slot]) -> None:
        while True:
            try:
                slot = work.finished.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                if slot.abandoned or self._running.get(slot.lease.unit.key) is not slot:
                    continue  # given up already: recorded as timed out
                del self._running[slot.lease.unit.key]
                self._done_total += 1
            done.append(slot)
            self._finish(work, slot)

    def _expire(self, work: _Work, done: list[_Slot], timeout_s: float) -> None:
        now = time.monotonic()
        with self._lock:
            late = [s for s in self._running.values() if now - s.started > timeout_s]
            for slot in late:
                slot.abandoned = True
                slot.lease.revoke()
                del self._running[slot.lease.unit.key]
        for slot in late:
            slot.failure = f"timed out after {timeout_s:g} s (units.timeout); given up"
            log.error("unit_timed_out", unit=slot.lease.unit.key, seconds=timeout_s)
            done.append(slot)
            self._finish(work, slot)

    def _finish(self, work: _Work, slot: _Slot) -> None:
        if slot.failure and slot.failure.startswith("lease lost"):
            return  # not ours any more: the replica that holds it now records the outcome
        error = slot.failure or (slot.errors[0].message if slot.errors else None)
        report = UnitReport(
            instances=len(slot.findings),
            api_calls=0,
            duration_s=time.monotonic() - slot.started,
            error=error[:2000] if error else None,
        )
        try:
            self.coordinator.finish(work.plan, slot.lease, report)
        except Exception as exc:
            log.error("unit_finish_failed", unit=slot.lease.unit.key, error=str(exc)[:300])
        log.info(
            "unit_done",
            unit=slot.lease.unit.key,
            instances=report.instances,
            seconds=round(report.duration_s, 3),
            error=report.error,
        )


def _plan_all(providers: Sequence[Provider]) -> UnitPlan:
    units: list[Unit] = []
    errors: list[UnitError] = []
    for provider in providers:
        plan = provider.units()
        units.extend(plan.units)
        errors.extend(plan.errors)
    return UnitPlan(tuple(units), tuple(errors))


def _api_calls(providers: Sequence[Provider]) -> Counter[str]:
    total: Counter[str] = Counter()
    for provider in providers:
        total.update(getattr(provider, "api_calls", None) or {})
    return total
