"""Warn, then stop: the one module that acts on instances, behind safety gates.

Per cycle, on the findings of ``audit_cycle``: reconcile stops a crash interrupted, check the
circuit breaker, walk each instance through ``ladder.next_step`` (one warning per episode) and,
at the deadline, stop what is still idle — unless a gate blocks it, with the reason recorded.
Idle instances that a controller owns, that run in reserved capacity or that have stop
protection are never walked up the ladder: ``daemon.owned`` reports them by group, once per
idle episode, with the knob that saves the money. A plain Auto Scaling group's member is put
into Standby before its stop when ``enforce.autoscaling_groups: standby`` allows it.
A stop writes its intent before the provider call and its outcome after, so a crash between the
two is reconciled on restart, never repeated blindly and never lost. Never terminates or deletes.
With replicas (``daemon.units``), one run covers one unit: every write is fenced by the unit's
lease and the stop budget is shared in the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import structlog
from sqlalchemy.exc import IntegrityError

from guardian.config import Config, Mode
from guardian.cycle import CycleResult
from guardian.daemon.enforce_stop import (
    CycleState,
    EnforceSummary,
    Recorder,
    RunBudget,
    StopSteps,
    UnitGuard,
)
from guardian.daemon.housekeeping import (
    close_vanished,
    reconcile_stops,
    trip_breakers,
    unit,
    unit_failed,
)
from guardian.daemon.messages import (
    Message,
    not_stopped_message,
    resumed_message,
    warning_message,
)
from guardian.daemon.notify import Notifier
from guardian.daemon.owned import Owners, protection_block
from guardian.daemon.store import EpisodeRow, InstanceRef, Store, Tx
from guardian.model import Finding, Verdict
from guardian.policy import Block, Step, instance_block, next_step, permanent_block
from guardian.providers import Provider, Unit

__all__ = ["EnforceSummary", "Enforcer", "UnitGuard"]

log = structlog.get_logger(__name__)


class Enforcer(StopSteps):
    _owners: Owners

    def __init__(
        self, config: Config, store: Store, notifier: Notifier, providers: Sequence[Provider]
    ) -> None:
        self._config = config
        self._store = store
        self._notifier = notifier
        self._providers = {provider.name: provider for provider in providers}
        self._owners = Owners(config, store, self._providers)

    def run(
        self,
        result: CycleResult,
        now: datetime,
        cycle_id: str,
        *,
        unit: Unit | None = None,
        guard: UnitGuard | None = None,
    ) -> EnforceSummary:
        """Act on one cycle's findings at ``now`` — the time after the audit, so the time an
        audit takes is never taken out of anybody's grace period.

        With ``unit``, ``result`` is that unit's audit and only its episodes, stop intents and
        gates are touched; ``guard`` fences every write and holds the cycle's stop budget.
        """
        budget = guard or RunBudget(self._config.limits.max_stops_per_cycle)
        rec = Recorder(self._notifier, now, cycle_id, budget)
        cyc = CycleState(rec, result.generated_at, EnforceSummary())

        def mine(ref: InstanceRef) -> bool:
            return unit is None or unit.covers(ref.provider, ref.account, ref.region)

        cyc.summary.reconciled = reconcile_stops(self._store, result, rec, mine)
        if self._config.mode is Mode.AUDIT:
            return cyc.summary
        limit = self._config.limits.max_idle_fraction
        cyc.tripped = trip_breakers(self._store, result.findings, limit, rec)
        cyc.summary.tripped_units = tuple(sorted(cyc.tripped))
        with self._store.reader() as tx:
            open_episodes = {k: e for k, e in tx.open_episodes().items() if mine(e.ref)}
        self._owners.begin(result.findings, open_episodes)
        for finding in result.findings:  # most wasteful first: they get the stop budget
            episode = open_episodes.pop(finding.instance.key, None)
            with structlog.contextvars.bound_contextvars(instance_id=finding.instance.instance_id):
                block = self._owned_block(finding, episode, cyc)
                if block is not None:
                    self._leave_to_owner(finding, episode, block, cyc)
                else:
                    self._step(finding, episode, cyc)
        close_vanished(self._store, open_episodes.values(), result, self._providers, cyc.rec)
        failed = lambda ref: unit_failed(result, ref) is not None  # noqa: E731
        cyc.summary.blocked.update(self._owners.settle(result, failed, rec, mine))
        return cyc.summary

    # -- instances left to their owner: a controller, a reservation, stop protection ------------
    def _owned_block(
        self, finding: Finding, episode: EpisodeRow | None, cyc: CycleState
    ) -> Block | None:
        """The permanent gate that hands an idle instance to the group pass, if any."""
        if finding.decision.verdict is not Verdict.IDLE or unit(finding.instance) in cyc.tripped:
            return None  # a tripped breaker speaks for its whole unit; nothing else is said
        return self._owners.block(finding, episode)

    def _leave_to_owner(
        self, finding: Finding, episode: EpisodeRow | None, block: Block, cyc: CycleState
    ) -> None:
        inst = finding.instance
        if episode is not None and episode.stop_state is None:  # warned before it was known
            with self._store.transaction() as tx:
                cyc.guard.fence(tx)
                tx.close_episode(episode.id, cyc.now, f"alert_only:{block.reason}")
                cyc.rec.record(
                    tx,
                    InstanceRef.of(inst),
                    "close",
                    reason=f"alert-only from now on: {block.detail}",
                    episode_id=episode.id,
                )
        self._owners.leave(finding, block)

    # -- the ladder ----------------------------------------------------------------------------
    def _step(self, finding: Finding, episode: EpisodeRow | None, cyc: CycleState) -> None:
        inst = finding.instance
        ladder = episode.as_ladder() if episode is not None else None
        step, _ = next_step(
            inst.key, finding.decision.verdict, ladder, cyc.now, self._config.idle.grace
        )
        if step is Step.WARN:
            self._warn(finding, cyc)
        elif step is Step.RESUMED and episode is not None:
            self._resume(finding, episode, cyc)
        elif step is Step.STOP and episode is not None and self._config.mode is Mode.ENFORCE:
            if episode.stop_state == "blocked" and episode.promise != "alert":
                return  # a promised stop refused for good this episode: said once already
            blocked = self._gate(finding, cyc) if episode.stop_state is None else None
            if blocked is not None and blocked[2] and episode.promise != "alert":
                # A stop was promised, but a permanent gate stands now (its local disks filled
                # up, say): keeping the promise is unsafe, so say once that it is not kept.
                self._block(finding, episode, blocked, cyc)
                return
            stale = self._stale_reason(finding, episode, cyc)
            if stale is not None:
                with self._store.transaction() as tx:
                    cyc.guard.fence(tx)
                    tx.close_episode(episode.id, cyc.now, "rewarn")
                    cyc.rec.record(
                        tx,
                        InstanceRef.of(inst),
                        "close",
                        reason=f"warned again: {stale}",
                        episode_id=episode.id,
                    )
                self._warn(finding, cyc)
            elif episode.stop_state is None:  # else acted on already: blocked for good, dry run
                if blocked is not None:
                    self._block(finding, episode, blocked, cyc)
                else:
                    self._stop(finding, episode, cyc)

    def _permanent(self, finding: Finding, cyc: CycleState) -> Block | None:
        return permanent_block(
            finding.instance, self._config, now=cyc.now, local_disk=finding.local_disk_used
        )

    def _promise(self, finding: Finding, cyc: CycleState) -> str:
        """What a warning given now promises: a stop, a dry-run stop, or an alert only."""
        if self._config.mode is not Mode.ENFORCE or self._permanent(finding, cyc) is not None:
            return "alert"
        return "dry_run" if self._config.dry_run else "stop"

    def _stop_protected(self, finding: Finding) -> bool:
        """Before a warning that promises a stop: one DescribeInstanceAttribute. A protected
        instance goes to the group pass (and its open condition spares later cycles the call)."""
        inst = finding.instance
        provider = self._providers.get(inst.provider)
        if provider is None or provider.stop_protection(inst) is not True:
            return False  # unreadable: warn; a refused stop is then recorded once, for good
        self._owners.leave(finding, protection_block(inst))
        log.info("stop_protection_found")
        return True

    def _warn(self, finding: Finding, cyc: CycleState) -> None:
        inst = finding.instance
        if unit(inst) in cyc.tripped:
            log.info("warning_suppressed", reason="circuit_breaker", unit=unit(inst))
            return
        deadline = cyc.now + self._config.idle.grace
        block = self._permanent(finding, cyc)
        promise = self._promise(finding, cyc)
        if promise != "alert" and self._stop_protected(finding):
            return
        group = self._owners.standby_group(inst)
        if promise != "alert":
            self._owners.claim(inst)
        message = warning_message(
            finding,
            now=cyc.now,
            deadline=deadline,
            will_stop=self._config.mode is Mode.ENFORCE,
            dry_run=self._config.dry_run,
            alert_only_reason=block.detail if block else None,
            instance_store_loss=inst.has_instance_store and promise != "alert",
            standby_group=inst.managed_by.name if group is not None and inst.managed_by else None,
        )
        try:
            with self._store.transaction() as tx:
                cyc.guard.fence(tx)
                episode_id = self._open_and_warn(
                    finding, cyc, deadline=deadline, promise=promise, message=message, tx=tx
                )
        except IntegrityError:
            # The unique index on open episodes: another writer warned about it first (a
            # replica that held this unit before). One warning per episode, whoever gives it.
            log.info("warning_given_elsewhere", instance_key=inst.key)
            return
        cyc.summary.warned += 1
        log.info(
            "instance_warned", deadline=deadline.isoformat(), promise=promise, episode=episode_id
        )

    def _open_and_warn(
        self,
        finding: Finding,
        cyc: CycleState,
        *,
        deadline: datetime,
        promise: str,
        message: Message,
        tx: Tx,
    ) -> int:
        inst = finding.instance
        episode_id = tx.open_episode(InstanceRef.of(inst), cyc.now, deadline, promise)
        cyc.rec.record(
            tx,
            InstanceRef.of(inst),
            "warn",
            outcome=promise,
            reason="; ".join(finding.decision.reasons),
            dry_run=self._config.dry_run,
            episode_id=episode_id,
        )
        cyc.rec.alert(tx, message, f"warn:{episode_id}", inst)
        return episode_id

    def _resume(self, finding: Finding, episode: EpisodeRow, cyc: CycleState) -> None:
        inst, verdict = finding.instance, finding.decision.verdict
        with self._store.transaction() as tx:
            cyc.guard.fence(tx)
            tx.close_episode(episode.id, cyc.now, f"resumed:{verdict.value}")
            cyc.rec.record(
                tx,
                InstanceRef.of(inst),
                "resume",
                outcome=verdict.value,
                reason="; ".join(finding.decision.reasons),
                episode_id=episode.id,
            )
            message = resumed_message(finding, dry_run=self._config.dry_run)
            cyc.rec.alert(tx, message, f"resumed:{episode.id}", inst)
        cyc.summary.resumed += 1
        log.info("instance_resumed", verdict=verdict.value)

    def _stale_reason(self, finding: Finding, episode: EpisodeRow, cyc: CycleState) -> str | None:
        """Why the warning no longer covers a stop now, if it does not.

        The warning must have promised this stop (settings may have changed since), and the
        instance must have stayed idle since the warning: the trailing idle run of its series
        has to start before it. A run that starts later means it was busy in between — e.g.
        while the daemon was down — so it gets a fresh warning and a fresh grace period.
        """
        audited_at = cyc.audited_at
        if episode.promise != self._promise(finding, cyc):
            return f"the warning promised {episode.promise!r}; the settings now differ"
        decision = finding.decision
        if decision.idle_minutes is None or decision.newest_sample_age_s is None:
            return None
        period = timedelta(
            seconds=max(self._config.aws.metrics.period, self._config.gcp.metrics.period)
        )
        newest = audited_at - timedelta(seconds=decision.newest_sample_age_s)
        idle_since = newest - timedelta(minutes=decision.idle_minutes) + period
        if idle_since > episode.warned_at + 2 * period:
            return f"busy again after the warning; idle only since {idle_since:%H:%M:%S} UTC"
        return None

    # -- gates and stops -----------------------------------------------------------------------
    def _gate(self, finding: Finding, cyc: CycleState) -> tuple[str, str, bool] | None:
        """The first safety gate that blocks a stop: (reason, explanation, for good)."""
        inst = finding.instance
        block = instance_block(  # this cycle's tags and local-disk reading, right now
            inst, self._config, cyc.now, local_disk=finding.local_disk_used
        )
        block = block or self._owners.room_block(inst)
        if block is not None:
            return block.reason, block.detail, block.permanent
        if unit(inst) in cyc.tripped:
            return "circuit_breaker", f"circuit breaker tripped in {unit(inst)}", False
        # limits.max_stops_per_cycle is taken with the stop intent (``StopSteps``): shared by
        # every replica, and given back when the cloud refuses a stop for good.
        if inst.provider not in self._providers:
            return "no_provider", f"provider {inst.provider} is not configured", False
        return None

    def _block(
        self,
        finding: Finding,
        episode: EpisodeRow,
        blocked: tuple[str, str, bool],
        cyc: CycleState,
    ) -> None:
        reason, text, permanent = blocked
        log.info("stop_blocked", reason=reason, detail=text)
        if episode.blocked_reason == reason:
            return  # recorded already: a gate is recorded again only when the reason changes
        inst = finding.instance
        with self._store.transaction() as tx:
            cyc.guard.fence(tx)
            cyc.rec.record(
                tx,
                InstanceRef.of(inst),
                "block",
                outcome=reason,
                reason=text,
                dry_run=self._config.dry_run,
                episode_id=episode.id,
            )
            tx.update_episode(
                episode.id, blocked_reason=reason, stop_state="blocked" if permanent else None
            )
            if permanent:
                message = not_stopped_message(finding, text, dry_run=self._config.dry_run)
                cyc.rec.alert(tx, message, f"not_stopped:{episode.id}", inst)
        cyc.summary.blocked[reason] += 1
