"""Enforcement's housekeeping around the warn→stop ladder, once per cycle: reconcile stops a
crash interrupted, trip or clear the circuit breaker, close the episodes of instances that are
gone. Each acts through a ``Recorder``, so every row and alert carries the cycle's time and id,
and every transaction is fenced by the unit's lease.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Container, Iterable, Sequence

import structlog

from guardian.cycle import CycleResult
from guardian.daemon.enforce_stop import Recorder
from guardian.daemon.health_messages import stop_confirmed_message
from guardian.daemon.messages import breaker_message, reconciled_message
from guardian.daemon.store import EpisodeRow, InstanceRef, Store
from guardian.model import Finding, GpuInstance, Verdict
from guardian.providers import UnitError

__all__ = [
    "close_vanished",
    "could_hide",
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


_AWS_ACCOUNT = re.compile(r"\d{12}")


def _names_an_account(error: UnitError) -> bool:
    """An AWS account id, a GCP project; not a label (``default``, a role) for whichever
    account the credentials would have reached."""
    return error.provider != "aws" or _AWS_ACCOUNT.fullmatch(error.account) is not None


def could_hide(error: UnitError, ref: InstanceRef, listed_accounts: Iterable[str]) -> bool:
    """Whether a listing failure may have hidden this instance: same provider; same account,
    or a label that could be any account not listed; and a matching region — ``*``/``global``
    for all, a zone for its region."""
    if error.provider != ref.provider:
        return False
    if error.account != ref.account and (
        _names_an_account(error) or error.account in set(listed_accounts)
    ):
        return False
    region = error.region
    return region in ("*", "global") or region == ref.region or region.startswith(ref.region + "-")


def unit_failed(result: CycleResult, ref: InstanceRef) -> UnitError | None:
    """A listing failure that may have hidden this instance (``could_hide``): its episode is
    kept open a cycle too long rather than closed by an outage."""
    listed = {finding.instance.account for finding in result.findings}
    return next((e for e in result.errors if could_hide(e, ref, listed)), None)


def reconcile_stops(
    store: Store,
    result: CycleResult,
    rec: Recorder,
    mine: Callable[[InstanceRef], bool] = lambda _: True,
) -> int:
    """Give every stop intent without an outcome (a crash mid-stop, a lost answer) of ``mine``
    its outcome now, from the instance's state; returns how many."""
    with store.reader() as tx:
        pending = [intent for intent in tx.pending_intents() if mine(intent.ref)]
    running = {finding.instance.key for finding in result.findings}
    for intent in pending:
        failed_unit = unit_failed(result, intent.ref)
        if intent.ref.instance_key in running:
            outcome = "not_executed"
            detail = "still running when checked again: the stop did not take effect"
        elif failed_unit is not None:
            outcome = "unknown"
            detail = f"could not check again: {failed_unit.message}"
        else:
            outcome = "ok"
            detail = "no longer running when checked again: the stop took effect"
        label = f"{intent.ref.name or intent.ref.instance_id} ({intent.ref.instance_id})"
        with store.transaction() as tx:
            rec.fence(tx)
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
            elif intent.episode_id is not None:
                tx.release_stop(intent.episode_id)
            if outcome == "ok":  # the same "Stopped" alert as a confirmed stop, once
                rec.notifier.enqueue(
                    tx,
                    stop_confirmed_message(intent.ref, intent.action),
                    at=rec.now,
                    dedupe_key=f"stopped:{intent.id}",
                    owner=tx.last_owner(intent.ref.instance_key, intent.at),
                    instance_key=intent.ref.instance_key,
                )
            else:
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
        rec.fence(tx)
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
            rec.fence(tx)
            tx.close_episode(episode.id, rec.now, "vanished")
            rec.record(
                tx,
                episode.ref,
                "close",
                episode_id=episode.id,
                reason="no longer running: stopped or terminated outside guardian",
            )
        log.info("episode_closed", instance_id=episode.ref.instance_id, reason="vanished")
