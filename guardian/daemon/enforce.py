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
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from guardian.config import Config, Mode
from guardian.cycle import CycleResult
from guardian.daemon.messages import (
    Message,
    breaker_message,
    not_stopped_message,
    reconciled_message,
    resumed_message,
    stop_failed_message,
    stopped_message,
    warning_message,
)
from guardian.daemon.notify import Notifier
from guardian.daemon.owned import (
    GATED,
    GROUP,
    Gated,
    OwnedAlerts,
    group_key,
    protection_block,
    scaling_group_block,
)
from guardian.daemon.store import EpisodeRow, InstanceRef, Store, Tx
from guardian.errors import GuardianError
from guardian.model import Controller, Finding, GpuInstance, Verdict
from guardian.policy import (
    STANDBY_STOP,
    Block,
    Step,
    instance_block,
    next_step,
    ownership_block,
    permanent_block,
    standby_eligible,
)
from guardian.providers import Provider, ScalingGroups, StopResult, UnitError

__all__ = ["EnforceSummary", "Enforcer"]

log = structlog.get_logger(__name__)

_MEASURED = (Verdict.IDLE, Verdict.UNDERUSED, Verdict.BUSY)
_BREAKER_MIN_IDLE = 3


@dataclass
class EnforceSummary:
    warned: int = 0
    resumed: int = 0
    stops: Counter[tuple[str, bool]] = field(default_factory=Counter)  # (action, dry_run)
    stop_failures: Counter[str] = field(default_factory=Counter)  # by provider
    blocked: Counter[str] = field(default_factory=Counter)  # recorded blocks by reason
    tripped_units: tuple[str, ...] = ()
    reconciled: int = 0


def _unit(instance: GpuInstance | InstanceRef) -> str:
    return f"{instance.provider} {instance.account} {instance.region}"


def _unit_failed(result: CycleResult, ref: InstanceRef) -> UnitError | None:
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


@dataclass
class _Cycle:
    """What one ``Enforcer.run`` carries from instance to instance."""

    now: datetime  # when enforcement runs: deadlines count from here, not from the audit
    audited_at: datetime  # when the findings were measured: sample ages are relative to it
    cycle_id: str
    summary: EnforceSummary
    tripped: set[str] = field(default_factory=set)
    stops: int = 0  # stop attempts so far (real or dry-run), for limits.max_stops_per_cycle
    gated: dict[str, Gated] = field(default_factory=dict)  # idle behind a permanent gate
    stop_protected: set[str] = field(default_factory=set)  # instance keys known protected
    standby_taken: Counter[str] = field(default_factory=Counter)  # Standbys this cycle, by group
    standby_claims: Counter[str] = field(default_factory=Counter)  # open stop promises, by group


class Enforcer:
    def __init__(
        self, config: Config, store: Store, notifier: Notifier, providers: Sequence[Provider]
    ) -> None:
        self._config = config
        self._store = store
        self._notifier = notifier
        self._providers = {provider.name: provider for provider in providers}
        self._owned = OwnedAlerts(store, self._providers)

    def run(self, result: CycleResult, now: datetime, cycle_id: str) -> EnforceSummary:
        """Act on one cycle's findings at ``now`` — the time after the audit, so the time an
        audit takes is never taken out of anybody's grace period."""
        cyc = _Cycle(now, result.generated_at, cycle_id, EnforceSummary())
        self._reconcile(result, cyc)
        if self._config.mode is Mode.AUDIT:
            return cyc.summary
        cyc.tripped = self._circuit_breaker(result.findings, cyc)
        with self._store.reader() as tx:
            open_episodes = tx.open_episodes()
            protected = tx.open_conditions(f"{GATED}stop_protection:")
            open_groups = tx.open_conditions(GROUP)
        cyc.stop_protected = {key.split(":", 2)[2] for key in protected}
        self._owned.load_groups(self._groups_wanted(result.findings, open_groups))
        self._count_claims(result.findings, open_episodes, cyc)
        for finding in result.findings:  # most wasteful first: they get the stop budget
            episode = open_episodes.pop(finding.instance.key, None)
            with structlog.contextvars.bound_contextvars(instance_id=finding.instance.instance_id):
                block = self._owned_block(finding, episode, cyc)
                if block is not None:
                    self._leave_to_owner(finding, episode, block, cyc)
                else:
                    self._step(finding, episode, cyc)
        self._close_vanished(open_episodes.values(), result, cyc)
        recorded = self._owned.settle(
            cyc.gated,
            result,
            lambda ref: _unit_failed(result, ref) is not None,
            now=cyc.now,
            record=lambda tx, ref, action, **fields: self._record(tx, cyc, ref, action, **fields),
            alert=lambda tx, message, key, inst: self._alert(tx, cyc, message, key, inst),
        )
        cyc.summary.blocked.update(recorded)
        return cyc.summary

    # -- instances left to their owner: a controller, a reservation, stop protection ------------
    def _groups_wanted(
        self, findings: Sequence[Finding], open_groups: Mapping[str, datetime]
    ) -> dict[tuple[str, str, str], set[str]]:
        """Auto Scaling groups whose capacity this cycle needs: Standby mode's members (is there
        room above the minimum?) and groups whose alert goes out now (min / desired in it)."""
        wanted: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        for finding in findings:
            inst = finding.instance
            owner = inst.managed_by
            if finding.decision.verdict is not Verdict.IDLE or owner is None:
                continue
            if owner.kind is not Controller.AUTOSCALING_GROUP or inst.reserved:
                continue
            alerting = f"{GROUP}{group_key(inst, 'managed')}" not in open_groups
            if standby_eligible(inst, self._config) or alerting:
                wanted[(inst.provider, inst.account, inst.region)].add(owner.name)
        return wanted

    def _count_claims(
        self, findings: Sequence[Finding], episodes: Mapping[str, EpisodeRow], cyc: _Cycle
    ) -> None:
        """Standby-mode members already promised a stop: each takes one of the group's places
        above its minimum until it is stopped, so no more are warned than can be stopped."""
        for finding in findings:
            inst, episode = finding.instance, episodes.get(finding.instance.key)
            if episode is None or episode.promise == "alert" or episode.stop_state is not None:
                continue
            if standby_eligible(inst, self._config) and inst.managed_by is not None:
                cyc.standby_claims[inst.managed_by.name] += 1

    def _owned_block(
        self, finding: Finding, episode: EpisodeRow | None, cyc: _Cycle
    ) -> Block | None:
        """The permanent gate that hands an idle instance to the group pass, if any."""
        inst = finding.instance
        if finding.decision.verdict is not Verdict.IDLE or self._config.mode is Mode.AUDIT:
            return None
        if _unit(inst) in cyc.tripped:
            return None  # the breaker speaks for the whole unit; nothing else is said
        block = ownership_block(inst, self._config)
        if block is not None:
            return block
        group = self._owned.group_of(inst)
        if standby_eligible(inst, self._config) and group is not None and episode is None:
            claimed = cyc.standby_claims[group.name]
            if inst.instance_id not in group.standby and group.desired - claimed <= group.min_size:
                return scaling_group_block(inst, group)  # no room above the minimum for it
        if inst.key in cyc.stop_protected:
            return protection_block(inst)
        return None

    def _leave_to_owner(
        self, finding: Finding, episode: EpisodeRow | None, block: Block, cyc: _Cycle
    ) -> None:
        inst = finding.instance
        if episode is not None and episode.stop_state is None:  # warned before it was known
            with self._store.transaction() as tx:
                tx.close_episode(episode.id, cyc.now, f"alert_only:{block.reason}")
                self._record(
                    tx,
                    cyc,
                    InstanceRef.of(inst),
                    "close",
                    reason=f"alert-only from now on: {block.detail}",
                    episode_id=episode.id,
                )
        cyc.gated[inst.key] = Gated(finding, block, group_key(inst, block.reason))

    # -- small helpers: every log row and alert carries the cycle's time and id ---------------
    def _record(self, tx: Tx, cyc: _Cycle, ref: InstanceRef, action: str, **fields: Any) -> int:
        fields.setdefault("phase", "event")
        return tx.record_action(at=cyc.now, cycle_id=cyc.cycle_id, ref=ref, action=action, **fields)

    def _alert(
        self, tx: Tx, cyc: _Cycle, message: Message, key: str, inst: GpuInstance | None = None
    ) -> None:
        self._notifier.enqueue(
            tx,
            message,
            at=cyc.now,
            dedupe_key=key,
            owner=inst.owner if inst is not None else None,
            instance_key=inst.key if inst is not None else None,
        )

    # -- the ladder ----------------------------------------------------------------------------
    def _step(self, finding: Finding, episode: EpisodeRow | None, cyc: _Cycle) -> None:
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
                    tx.close_episode(episode.id, cyc.now, "rewarn")
                    self._record(
                        tx,
                        cyc,
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
                    cyc.stops += 1
                    self._stop(finding, episode, cyc)

    def _permanent(self, finding: Finding, cyc: _Cycle) -> Block | None:
        return permanent_block(
            finding.instance, self._config, now=cyc.now, local_disk=finding.local_disk_used
        )

    def _promise(self, finding: Finding, cyc: _Cycle) -> str:
        """What a warning given now promises: a stop, a dry-run stop, or an alert only."""
        if self._config.mode is not Mode.ENFORCE or self._permanent(finding, cyc) is not None:
            return "alert"
        return "dry_run" if self._config.dry_run else "stop"

    def _stop_protected(self, finding: Finding, cyc: _Cycle) -> bool:
        """Before a warning that promises a stop: one DescribeInstanceAttribute. A protected
        instance goes to the group pass (and its open condition spares later cycles the call)."""
        inst = finding.instance
        provider = self._providers.get(inst.provider)
        if provider is None or provider.stop_protection(inst) is not True:
            return False  # unreadable: warn; a refused stop is then recorded once, for good
        cyc.stop_protected.add(inst.key)
        block = protection_block(inst)
        cyc.gated[inst.key] = Gated(finding, block, group_key(inst, block.reason))
        log.info("stop_protection_found")
        return True

    def _warn(self, finding: Finding, cyc: _Cycle) -> None:
        inst = finding.instance
        if _unit(inst) in cyc.tripped:
            log.info("warning_suppressed", reason="circuit_breaker", unit=_unit(inst))
            return
        deadline = cyc.now + self._config.idle.grace
        block = self._permanent(finding, cyc)
        promise = self._promise(finding, cyc)
        if promise != "alert" and self._stop_protected(finding, cyc):
            return
        group = self._owned.group_of(inst) if standby_eligible(inst, self._config) else None
        if group is not None and promise != "alert":
            cyc.standby_claims[group.name] += 1
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
        with self._store.transaction() as tx:
            episode_id = tx.open_episode(InstanceRef.of(inst), cyc.now, deadline, promise)
            self._record(
                tx,
                cyc,
                InstanceRef.of(inst),
                "warn",
                outcome=promise,
                reason="; ".join(finding.decision.reasons),
                dry_run=self._config.dry_run,
                episode_id=episode_id,
            )
            self._alert(tx, cyc, message, f"warn:{episode_id}", inst)
        cyc.summary.warned += 1
        log.info("instance_warned", deadline=deadline.isoformat(), promise=promise)

    def _resume(self, finding: Finding, episode: EpisodeRow, cyc: _Cycle) -> None:
        inst, verdict = finding.instance, finding.decision.verdict
        with self._store.transaction() as tx:
            tx.close_episode(episode.id, cyc.now, f"resumed:{verdict.value}")
            self._record(
                tx,
                cyc,
                InstanceRef.of(inst),
                "resume",
                outcome=verdict.value,
                reason="; ".join(finding.decision.reasons),
                episode_id=episode.id,
            )
            self._alert(tx, cyc, resumed_message(finding), f"resumed:{episode.id}", inst)
        cyc.summary.resumed += 1
        log.info("instance_resumed", verdict=verdict.value)

    def _stale_reason(self, finding: Finding, episode: EpisodeRow, cyc: _Cycle) -> str | None:
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
    def _gate(self, finding: Finding, cyc: _Cycle) -> tuple[str, str, bool] | None:
        """The first safety gate that blocks a stop: (reason, explanation, for good)."""
        inst = finding.instance
        block = instance_block(  # this cycle's tags and local-disk reading, right now
            inst, self._config, cyc.now, local_disk=finding.local_disk_used
        )
        group = self._owned.group_of(inst) if standby_eligible(inst, self._config) else None
        if block is None and group is not None:
            taken = cyc.standby_taken[group.name]
            if inst.instance_id not in group.standby and group.desired - taken <= group.min_size:
                block = scaling_group_block(inst, group)
        if block is not None:
            return block.reason, block.detail, block.permanent
        if _unit(inst) in cyc.tripped:
            return "circuit_breaker", f"circuit breaker tripped in {_unit(inst)}", False
        if cyc.stops >= self._config.limits.max_stops_per_cycle:
            return (
                "max_stops_per_cycle",
                f"{cyc.stops} stops this cycle already (limits.max_stops_per_cycle)",
                False,
            )
        if inst.provider not in self._providers:
            return "no_provider", f"provider {inst.provider} is not configured", False
        return None

    def _block(
        self, finding: Finding, episode: EpisodeRow, blocked: tuple[str, str, bool], cyc: _Cycle
    ) -> None:
        reason, text, permanent = blocked
        log.info("stop_blocked", reason=reason, detail=text)
        if episode.blocked_reason == reason:
            return  # recorded already: a gate is recorded again only when the reason changes
        inst = finding.instance
        with self._store.transaction() as tx:
            self._record(
                tx,
                cyc,
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
                message = not_stopped_message(finding, text)
                self._alert(tx, cyc, message, f"not_stopped:{episode.id}", inst)
        cyc.summary.blocked[reason] += 1

    def _stop(self, finding: Finding, episode: EpisodeRow, cyc: _Cycle) -> None:
        inst = finding.instance
        ref = InstanceRef.of(inst)
        hibernate = self._config.enforce.hibernate and inst.hibernation_configured
        provider = self._providers[inst.provider]
        standby = standby_eligible(inst, self._config) and isinstance(provider, ScalingGroups)
        group_name = inst.managed_by.name if standby and inst.managed_by else None
        action = STANDBY_STOP if standby else "hibernate" if hibernate else "stop"
        why = f"idle past its deadline {episode.deadline:%Y-%m-%d %H:%M:%S} UTC"
        if self._config.dry_run:
            with self._store.transaction() as tx:
                self._record(
                    tx,
                    cyc,
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
                # Owners hear nothing of a dry run: the notifier sends it to the channels only.
                self._alert(tx, cyc, message, f"would_stop:{episode.id}")
            cyc.summary.stops[(action, True)] += 1
            log.info("instance_would_stop", action=action)
            return
        with self._store.transaction() as tx:
            intent_id = self._record(
                tx, cyc, ref, action, phase="intent", reason=why, episode_id=episode.id
            )
        ok, detail, refused = False, "", False
        try:
            result = self._call_stop(provider, inst, cyc, hibernate=hibernate, standby=standby)
            ok, detail, action = result.ok, result.message, result.action or action
            refused = result.permanent and not ok
        except GuardianError as exc:
            detail = str(exc)
        except Exception as exc:  # an SDK bug must not lose the outcome of an attempted stop
            log.exception("stop_raised")
            detail = f"{type(exc).__name__}: {exc}"
        with self._store.transaction() as tx:
            self._record(
                tx,
                cyc,
                ref,
                action,
                phase="outcome",
                outcome="ok" if ok else "failed",
                reason=detail or why,
                intent_id=intent_id,
                episode_id=episode.id,
            )
            if ok:
                tx.close_episode(episode.id, cyc.now, "stopped" if action == "stop" else action)
                message = stopped_message(
                    finding, action=action, dry_run=False, standby_group=group_name
                )
                self._alert(tx, cyc, message, f"stopped:{intent_id}", inst)
            elif refused:  # for good: recorded once, never retried this episode
                tx.update_episode(
                    episode.id, stop_error=detail, stop_state="blocked", blocked_reason="refused"
                )
                message = stop_failed_message(finding, detail, retried=False)
                self._alert(tx, cyc, message, f"stop_failed:{intent_id}", inst)
            else:
                tx.update_episode(episode.id, stop_error=detail)
                if episode.stop_error != detail:  # one alert per distinct error, not per cycle
                    message = stop_failed_message(finding, detail)
                    self._alert(tx, cyc, message, f"stop_failed:{intent_id}", inst)
        if refused:  # a stop the cloud refuses for good takes no slot of max_stops_per_cycle
            cyc.stops -= 1
            cyc.summary.blocked["refused"] += 1
        if ok:
            cyc.summary.stops[(action, False)] += 1
            log.warning("instance_stopped", action=action, intent_id=intent_id)
        else:
            cyc.summary.stop_failures[inst.provider] += 1
            log.error("stop_failed", action=action, intent_id=intent_id, error=detail)

    def _call_stop(
        self, provider: Provider, inst: GpuInstance, cyc: _Cycle, *, hibernate: bool, standby: bool
    ) -> StopResult:
        if not (standby and isinstance(provider, ScalingGroups)):
            return provider.stop(inst, hibernate=hibernate)
        group = self._owned.group_of(inst)
        if group is not None and inst.instance_id not in group.standby:
            cyc.standby_taken[group.name] += 1  # one less above the minimum, this cycle
        return provider.standby_and_stop(inst, hibernate=hibernate)

    # -- housekeeping around the ladder --------------------------------------------------------
    def _reconcile(self, result: CycleResult, cyc: _Cycle) -> None:
        """Give every stop intent without an outcome (a crash mid-stop) its outcome now."""
        with self._store.reader() as tx:
            pending = tx.pending_intents()
        running = {finding.instance.key for finding in result.findings}
        for intent in pending:
            failed_unit = _unit_failed(result, intent.ref)
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
            with self._store.transaction() as tx:
                self._record(
                    tx,
                    cyc,
                    intent.ref,
                    intent.action,
                    phase="outcome",
                    outcome=outcome,
                    reason=detail,
                    intent_id=intent.id,
                    episode_id=intent.episode_id,
                )
                if outcome == "ok" and intent.episode_id is not None:
                    tx.close_episode(intent.episode_id, cyc.now, "stopped")
                message = reconciled_message(label, outcome, detail)
                self._alert(tx, cyc, message, f"reconciled:{intent.id}")
            cyc.summary.reconciled += 1
            log.warning(
                "stop_reconciled",
                instance_id=intent.ref.instance_id,
                intent_id=intent.id,
                outcome=outcome,
            )

    def _circuit_breaker(self, findings: Sequence[Finding], cyc: _Cycle) -> set[str]:
        """Units where too many instances look idle at once: a metrics pipeline, not a fleet."""
        measured: Counter[str] = Counter()
        idle: dict[str, list[Finding]] = defaultdict(list)
        for finding in findings:
            if finding.decision.verdict in _MEASURED:
                measured[_unit(finding.instance)] += 1
            if finding.decision.verdict is Verdict.IDLE:
                idle[_unit(finding.instance)].append(finding)
        limit = self._config.limits.max_idle_fraction
        tripped = {
            unit
            for unit, items in idle.items()
            if len(items) >= _BREAKER_MIN_IDLE and len(items) / measured[unit] > limit
        }
        with self._store.transaction() as tx:
            already = tx.open_conditions("breaker:")
            for unit in sorted(tripped - {k.removeprefix("breaker:") for k in already}):
                detail = f"{len(idle[unit])} of {measured[unit]} measured instances idle"
                tx.open_condition(f"breaker:{unit}", cyc.now, detail)
                message = breaker_message(unit, idle[unit], measured[unit], limit)
                self._alert(tx, cyc, message, f"breaker:{unit}:{cyc.now.isoformat()}")
                log.error("circuit_breaker_tripped", unit=unit, detail=detail)
            for key in already:
                unit = key.removeprefix("breaker:")
                if unit not in tripped and measured[unit] > 0:
                    tx.close_condition(key)
                    log.info("circuit_breaker_cleared", unit=unit)
        cyc.summary.tripped_units = tuple(sorted(tripped))
        return tripped

    def _close_vanished(
        self, episodes: Iterable[EpisodeRow], result: CycleResult, cyc: _Cycle
    ) -> None:
        """Episodes of instances no longer running: stopped or terminated by someone else.

        Closed only when their provider listed its instances without error, so an API outage
        never ends an episode (which would re-warn) — and a machine started again later starts
        a new episode with a new warning rather than inheriting a past deadline.
        """
        for episode in episodes:
            if episode.ref.provider not in self._providers:
                continue
            if _unit_failed(result, episode.ref) is not None:
                continue
            with self._store.transaction() as tx:
                tx.close_episode(episode.id, cyc.now, "vanished")
                self._record(
                    tx,
                    cyc,
                    episode.ref,
                    "close",
                    episode_id=episode.id,
                    reason="no longer running: stopped or terminated outside guardian",
                )
            log.info("episode_closed", instance_id=episode.ref.instance_id, reason="vanished")
