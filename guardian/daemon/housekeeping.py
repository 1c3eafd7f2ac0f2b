"""Enforcement's housekeeping around the warn→stop ladder, once per cycle: reconcile stops a
crash interrupted, trip or clear the circuit breaker, close the episodes of instances that are
gone. Each acts through a ``Recorder``, so every row and alert carries the cycle's time and id.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from guardian.cycle import CycleResult
from guardian.daemon.messages import Message, breaker_message, reconciled_message
from guardian.daemon.notify import Notifier
from guardian.daemon.store import EpisodeRow, InstanceRef, Store, Tx
from guardian.model import Finding, GpuInstance, Verdict
from guardian.providers import UnitError

__all__ = [
    "Recorder",
    "close_vanished",
    "reconcile_stops",
    "trip_breakers",
    "unit",
    "unit_failed",
]

log = structlog.get_logger(__name__)

_MEASURED = (Verdict.IDLE, Verdict.UNDERUSED, Verdict.BUSY)
_BREAKER_MIN_IDLE = 3


def unit(instance: GpuInstance | InstanceRef) -> str:
    """The unit a circuit breaker covers: provider, account and region."""
    return f"{instance.provider} {instance.account} {instance.region}"


def unit_failed(result: CycleResult, ref: InstanceRef) -> UnitError | None:
    """A listing failure that may have hidden this instance.

    Errors name an account by id, or — when even that failed — by a label (``default``, a
    role's name or ARN). A label could be any account, so it counts as this one: an episode is
    kept open a cycle too long rather than closed by an outage.
    """
    listed = {finding.instance.account for finding in result.findings}
    for error in result.errors:
        if error.provider != ref.provider:
            continue
        if error.account == ref.account or error.account not in listed:
            return error
    return None


@dataclass(frozen=True)
class Recorder:
    """Writes the action log and queues alerts for one cycle, stamped with its time and id."""

    notifier: Notifier
    now: datetime
    cycle_id: str

    def record(self, tx: Tx, ref: InstanceRef, action: str, **fields: Any) -> int:
        fields.setdefault("phase", "event")
        return tx.record_action(
            at=self.now, cycle_id=self.cycle_id, ref=ref, action=action, **fields
        )

    def alert(self, tx: Tx, message: Message, key: str, inst: GpuInstance | None = None) -> None:
        self.notifier.enqueue(
            tx,
            message,
            at=self.now,
            dedupe_key=key,
            owner=inst.owner if inst is not None else None,
            instance_key=inst.key if inst is not None else None,
        )


def reconcile_stops(store: Store, result: CycleResult, rec: Recorder) -> int:
    """Give every stop intent without an outcome (a crash mid-stop) its outcome now; returns
    how many."""
    with store.reader() as tx:
        pending = tx.pending_intents()
    running = {finding.instance.key for finding in result.findings}
    for intent in pending:
        failed_unit = unit_failed(result, intent.ref)
        if intent.ref.instance_key in running:
            outcome = "not_executed"
            detail = "still running after a restart: the stop did not take effect"
        elif failed_unit is not None:
            outcome = "unknown"
            detail = f"could not check after a restart: {failed_unit.message}"
        else:
            outcome = "ok"
            detail = "no longer running after a restart: the stop took effect"
        label = f"{intent.ref.name or intent.ref.instance_id} ({intent.ref.instance_id})"
        with store.transaction() as tx:
            rec.record(
                tx,
                intent.ref,
                intent.action,
                phase="outcome",
                outcome=outcome,
                reason=detail,
                intent_id=intent.id,
                episode_id=intent.episode_id,
            )
            if outcome == "ok" and intent.episode_id is not None:
                tx.close_episode(intent.episode_id, rec.now, "stopped")
            message = reconciled_message(label, outcome, detail)
            rec.alert(tx, message, f"reconciled:{intent.id}")
        log.warning(
            "stop_reconciled",
            instance_id=intent.ref.instance_id,
            intent_id=intent.id,
            outcome=outcome,
        )
    return len(pending)


def trip_breakers(
    store: Store, findings: Sequence[Finding], max_idle_fraction: float, rec: Recorder
) -> set[str]:
    """Units where too many instances look idle at once: a metrics pipeline, not a fleet."""
    measured: Counter[str] = Counter()
    idle: dict[str, list[Finding]] = defaultdict(list)
    for finding in findings:
        if finding.decision.verdict in _MEASURED:
            measured[unit(finding.instance)] += 1
        if finding.decision.verdict is Verdict.IDLE:
            idle[unit(finding.instance)].append(finding)
    tripped = {
        name
        for name, items in idle.items()
        if len(items) >= _BREAKER_MIN_IDLE and len(items) / measured[name] > max_idle_fraction
    }
    with store.transaction() as tx:
        already = tx.open_conditions("breaker:")
        for name in sorted(tripped - {k.removeprefix("breaker:") for k in already}):
            detail = f"{len(idle[name])} of {measured[name]} measured instances idle"
            tx.open_condition(f"breaker:{name}", rec.now, detail)
            message = breaker_message(name, idle[name], measured[name], max_idle_fraction)
            rec.alert(tx, message, f"breaker:{name}:{rec.now.isoformat()}")
            log.error("circuit_breaker_tripped", unit=name, detail=detail)
        for key in already:
            name = key.removeprefix("breaker:")
            if name not in tripped and measured[name] > 0:
                tx.close_condition(key)
                log.info("circuit_breaker_cleared", unit=name)
    return tripped


def close_vanished(
    store: Store,
    episodes: Iterable[EpisodeRow],
    result: CycleResult,
    providers: Container[str],
    rec: Recorder,
) -> None:
    """Episodes of instances no longer running: stopped or terminated by someone else.

    Closed only when their provider listed its instances without error, so an API outage
    never ends an episode (which would re-warn) — and a machine started again later starts
    a new episode with a new warning rather than inheriting a past deadline.
    """
    for episode in episodes:
        if episode.ref.provider not in providers:
            continue
        if unit_failed(result, episode.ref) is not None:
            continue
        with store.transaction() as tx:
            tx.close_episode(episode.id, rec.now, "vanished")
            rec.record(
                tx,
                episode.ref,
                "close",
                episode_id=episode.id,
                reason="no longer running: stopped or terminated outside guardian",
            )
        log.info("episode_closed", instance_id=episode.ref.instance_id, reason="vanished")
