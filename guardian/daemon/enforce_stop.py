"""The stop itself, and what enforcement carries through a cycle (``enforce.Enforcer`` mixes
``StopSteps`` in): the intent committed before the call — fenced, within the cycle's stop
budget, the episode's only stop in flight — the call (a plain Auto Scaling group's member into
Standby first, when allowed), and the outcome recorded whatever happens. A stop the cloud
refuses for good (stop protection) is recorded once, never retried, and gives its slot of the
stop budget back.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import structlog
from sqlalchemy.exc import IntegrityError

from guardian.config import Config
from guardian.daemon.crashpoints import crash_point
from guardian.daemon.messages import Message, stop_failed_message, stopped_message
from guardian.daemon.notify import Notifier
from guardian.daemon.store import EpisodeRow, InstanceRef, Store, Tx
from guardian.errors import GuardianError
from guardian.model import Finding, GpuInstance
from guardian.policy import STANDBY_STOP, standby_eligible
from guardian.providers import Provider, ScalingGroups, StopResult

__all__ = [
    "CycleState",
    "EnforceSummary",
    "Recorder",
    "RunBudget",
    "StopSteps",
    "UnitGuard",
]

log = structlog.get_logger("guardian.daemon.enforce")


@dataclass
class EnforceSummary:
    warned: int = 0
    resumed: int = 0
    stops: Counter[tuple[str, bool]] = field(default_factory=Counter)  # (action, dry_run)
    stop_failures: Counter[str] = field(default_factory=Counter)  # by provider
    blocked: Counter[str] = field(default_factory=Counter)  # recorded blocks by reason
    tripped_units: tuple[str, ...] = ()
    reconciled: int = 0
    unconfirmed: int = 0  # stops whose answer was lost: read from the instance next cycle


class UnitGuard(Protocol):
    """What a unit's enforcement may write, and whether it may still act (``coordination``)."""

    replica: str | None

    def fence(self, tx: Tx) -> None:
        """Raise ``LeaseLost`` inside ``tx`` unless this replica still holds the unit."""
        ...

    def reserve_stop(self, tx: Tx) -> bool:
        """Take one stop of ``limits.max_stops_per_cycle`` in ``tx``; False when spent."""
        ...

    def return_stop(self, tx: Tx) -> None:
        """Give one reserved stop back (the cloud refused the stop for good)."""
        ...

    def held(self) -> bool:
        """Whether the unit is still this replica's right now (checked before a cloud call)."""
        ...


class RunBudget:
    """Without a coordinator: the stop budget of one ``Enforcer.run``, nothing to fence."""

    replica: str | None = None

    def __init__(self, limit: int) -> None:
        self._left = limit

    def fence(self, tx: Tx) -> None:
        return None

    def reserve_stop(self, tx: Tx) -> bool:
        if self._left <= 0:
            return False
        self._left -= 1
        return True

    def return_stop(self, tx: Tx) -> None:
        self._left += 1

    def held(self) -> bool:
        return True


class _AlreadyStopping(Exception):
    """Another writer has a stop of this episode in flight: roll the intent back."""


@dataclass(frozen=True)
class Recorder:
    """Writes the action log and queues alerts for one cycle, stamped with its time, id and
    replica; ``fence`` makes a transaction fail unless this replica still holds the unit."""

    notifier: Notifier
    now: datetime  # when enforcement runs: deadlines count from here, not from the audit
    cycle_id: str
    guard: UnitGuard

    def fence(self, tx: Tx) -> None:
        self.guard.fence(tx)

    def record(self, tx: Tx, ref: InstanceRef, action: str, **fields: Any) -> int:
        fields.setdefault("phase", "event")
        return tx.record_action(
            at=self.now,
            cycle_id=self.cycle_id,
            ref=ref,
            action=action,
            replica=self.guard.replica,
            **fields,
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


@dataclass
class CycleState:
    """What one ``Enforcer.run`` carries from instance to instance."""

    rec: Recorder
    audited_at: datetime  # when the findings were measured: sample ages are relative to it
    summary: EnforceSummary
    tripped: set[str] = field(default_factory=set)

    @property
    def now(self) -> datetime:
        return self.rec.now

    @property
    def cycle_id(self) -> str:
        return self.rec.cycle_id

    @property
    def guard(self) -> UnitGuard:
        return self.rec.guard


def _leave_for_reconcile(intent_id: int, action: str, detail: str, cyc: CycleState) -> None:
    """A stop whose answer was lost may have worked: calling it failed would alert wrongly,
    retrying it blindly would stop twice. Its intent stays without an outcome (and the episode's
    stop stays taken), and the next cycle's reconciliation reads the outcome from the
    instance's state — the path a crash between the call and its record takes."""
    cyc.summary.unconfirmed += 1
    log.warning(
        "stop_unconfirmed",
        action=action,
        intent_id=intent_id,
        error=detail,
        then="its outcome is read from the instance's state next cycle",
    )


class _Owners(Protocol):
    def take(self, instance: GpuInstance) -> None: ...


class StopSteps:
    """Mixed into ``Enforcer``, which provides these attributes and the ``_block`` hook."""

    _config: Config
    _store: Store
    _providers: dict[str, Provider]
    _owners: _Owners

    def _block(
        self,
        finding: Finding,
        episode: EpisodeRow,
        blocked: tuple[str, str, bool],
        cyc: CycleState,
    ) -> None:
        raise NotImplementedError

    def _stop(self, finding: Finding, episode: EpisodeRow, cyc: CycleState) -> None:
        inst = finding.instance
        ref = InstanceRef.of(inst)
        hibernate = self._config.enforce.hibernate and inst.hibernation_configured
        provider = self._providers[inst.provider]
        standby = standby_eligible(inst, self._config) and isinstance(provider, ScalingGroups)
        group_name = inst.managed_by.name if standby and inst.managed_by else None
        action = STANDBY_STOP if standby else "hibernate" if hibernate else "stop"
        why = f"idle past its deadline {episode.deadline:%Y-%m-%d %H:%M:%S} UTC"
        spent = (
            "max_stops_per_cycle",
            f"{self._config.limits.max_stops_per_cycle} stops this cycle already "
            "(limits.max_stops_per_cycle)",
            False,
        )
        if self._config.dry_run:
            with self._store.transaction() as tx:
                cyc.guard.fence(tx)
                reserved = cyc.guard.reserve_stop(tx)
                if reserved:
                    cyc.rec.record(
                        tx,
                        ref,
                        action,
                        outcome="dry_run",
                        reason=why,
                        dry_run=True,
                        episode_id=episode.id,
                    )
                    tx.update_episode(episode.id, stop_state="would_stop")
                    message = stopped_message(
                        finding, action=action, dry_run=True, standby_group=group_name
                    )
                    # Owners hear nothing of a dry run: the notifier sends it to channels only.
                    cyc.rec.alert(tx, message, f"would_stop:{episode.id}")
            if not reserved:
                self._block(finding, episode, spent, cyc)
                return
            cyc.summary.stops[(action, True)] += 1
            log.info("instance_would_stop", action=action)
            return
        crash_point("before_intent")
        # No stop without its intent on record: a store that refuses the write raises here,
        # before the provider is called.
        intent_id = self._write_intent(finding, episode, cyc, action, why)
        crash_point("after_intent")
        if intent_id is None:
            self._block(finding, episode, spent, cyc)
            return
        if intent_id < 0:
            return  # another writer is stopping it: its outcome will be recorded there
        ok, detail, refused, unconfirmed = False, "", False, False
        if not cyc.guard.held():
            # The lease ran out between the intent and now (a pause, a slow database): another
            # replica may hold the unit already, so the call is not made.
            detail = "not called: this replica's lease on the unit ran out before the call"
        else:
            try:
                result = self._call_stop(provider, inst, hibernate=hibernate, standby=standby)
                ok, detail, action = result.ok, result.message, result.action or action
                refused = result.permanent and not ok
                unconfirmed = result.unconfirmed and not ok
            except GuardianError as exc:
                detail = str(exc)
            except Exception as exc:  # an SDK bug must not lose the outcome of a stop
                log.exception("stop_raised")
                detail = f"{type(exc).__name__}: {exc}"
        crash_point("after_stop_call")
        if unconfirmed:
            _leave_for_reconcile(intent_id, action, detail, cyc)
            return
        self._write_outcome(
            finding,
            episode,
            cyc,
            action=action,
            intent_id=intent_id,
            ok=ok,
            detail=detail or why,
            refused=refused,
            standby_group=group_name,
        )
        crash_point("after_outcome")

    def _call_stop(
        self, provider: Provider, inst: GpuInstance, *, hibernate: bool, standby: bool
    ) -> StopResult:
        if not (standby and isinstance(provider, ScalingGroups)):
            return provider.stop(inst, hibernate=hibernate)
        self._owners.take(inst)  # one place less above the group's minimum, this cycle
        return provider.standby_and_stop(inst, hibernate=hibernate)

    def _write_intent(
        self, finding: Finding, episode: EpisodeRow, cyc: CycleState, action: str, why: str
    ) -> int | None:
        """The stop intent, committed before the call: fenced, within the stop budget, and the
        episode's only stop in flight. None: the budget is spent; -1: another writer has it."""
        ref = InstanceRef.of(finding.instance)
        try:
            with self._store.transaction() as tx:
                cyc.guard.fence(tx)
                if not cyc.guard.reserve_stop(tx):
                    return None
                intent_id = cyc.rec.record(
                    tx, ref, action, phase="intent", reason=why, episode_id=episode.id
                )
                if not tx.take_stop(episode.id, intent_id):
                    raise _AlreadyStopping
        except _AlreadyStopping:
            log.warning("stop_in_flight_elsewhere", episode=episode.id)
            return -1
        return intent_id

    def _write_outcome(
        self,
        finding: Finding,
        episode: EpisodeRow,
        cyc: CycleState,
        *,
        action: str,
        intent_id: int,
        ok: bool,
        detail: str,
        refused: bool = False,
        standby_group: str | None = None,
    ) -> None:
        """The outcome, never fenced: a stop that was made is recorded whoever holds the unit
        now (an outcome already given by a takeover's reconciliation stands)."""
        inst = finding.instance
        try:
            with self._store.transaction() as tx:
                cyc.rec.record(
                    tx,
                    InstanceRef.of(inst),
                    action,
                    phase="outcome",
                    outcome="ok" if ok else "failed",
                    reason=detail,
                    intent_id=intent_id,
                    episode_id=episode.id,
                )
                if ok:
                    tx.close_episode(episode.id, cyc.now, "stopped" if action == "stop" else action)
                    message = stopped_message(
                        finding, action=action, dry_run=False, standby_group=standby_group
                    )
                    cyc.rec.alert(tx, message, f"stopped:{intent_id}", inst)
                elif refused:  # for good: recorded once, never retried this episode
                    tx.release_stop(episode.id)
                    tx.update_episode(
                        episode.id,
                        stop_error=detail,
                        stop_state="blocked",
                        blocked_reason="refused",
                    )
                    # A stop the cloud refuses for good takes no slot of max_stops_per_cycle.
                    cyc.guard.return_stop(tx)
                    message = stop_failed_message(finding, detail, retried=False)
                    cyc.rec.alert(tx, message, f"stop_failed:{intent_id}", inst)
                else:
                    tx.release_stop(episode.id)
                    tx.update_episode(episode.id, stop_error=detail)
                    if episode.stop_error != detail:  # one alert per distinct error
                        message = stop_failed_message(finding, detail)
                        cyc.rec.alert(tx, message, f"stop_failed:{intent_id}", inst)
        except IntegrityError:
            log.warning("stop_outcome_given_elsewhere", intent_id=intent_id)
            return
        if refused:
            cyc.summary.blocked["refused"] += 1
        if ok:
            cyc.summary.stops[(action, False)] += 1
            log.warning("instance_stopped", action=action, intent_id=intent_id)
        else:
            cyc.summary.stop_failures[inst.provider] += 1
            log.error("stop_failed", action=action, intent_id=intent_id, error=detail)
