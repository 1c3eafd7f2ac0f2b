"""Warn, then stop: the one module that acts on instances, behind safety gates.

Per cycle, on the findings of ``audit_cycle``: reconcile stops a crash interrupted, check the
circuit breaker, walk each instance through ``ladder.next_step`` (one warning per episode) and,
at the deadline, stop what is still idle — unless a gate blocks it, with the reason recorded.
A stop writes its intent before the provider call and its outcome after, so a crash between the
two is reconciled on restart, never repeated blindly and never lost. Never terminates or deletes.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from guardian.config import Config, Mode
from guardian.cycle import CycleResult
from guardian.daemon.crashpoints import crash_point
from guardian.daemon.health_messages import stop_confirmed_message
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
from guardian.daemon.store import EpisodeRow, InstanceRef, Store, Tx
from guardian.errors import GuardianError
from guardian.model import Finding, GpuInstance, Verdict
from guardian.policy import Step, instance_block, next_step, permanent_block
from guardian.providers import Provider, UnitError

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
    unconfirmed: int = 0  # stops whose answer was lost: read from the instance next cycle


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


class Enforcer:
    def __init__(
        self, config: Config, store: Store, notifier: Notifier, providers: Sequence[Provider]
    ) -> None:
        self._config = config
        self._store = store
        self._notifier = notifier
        self._providers = {provider.name: provider for provider in providers}

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
        for finding in result.findings:  # most wasteful first: they get the stop budget
            episode = open_episodes.pop(finding.instance.key, None)
            with structlog.contextvars.bound_contextvars(instance_id=finding.instance.instance_id):
                self._step(finding, episode, cyc)
        self._close_vanished(open_episodes.values(), result, cyc)
        return cyc.summary

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
            stale = self._stale_reason(finding, episode, cyc.audited_at)
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
                blocked = self._gate(finding, cyc)
                if blocked is not None:
                    self._block(finding, episode, blocked, cyc)
                else:
                    cyc.stops += 1
                    self._stop(finding, episode, cyc)

    def _promise(self, inst: GpuInstance) -> str:
        """What a warning given now promises: a stop, a dry-run stop, or an alert only."""
        if self._config.mode is not Mode.ENFORCE or permanent_block(inst, self._config) is not None:
            return "alert"
        return "dry_run" if self._config.dry_run else "stop"

    def _warn(self, finding: Finding, cyc: _Cycle) -> None:
        inst = finding.instance
        if _unit(inst) in cyc.tripped:
            log.info("warning_suppressed", reason="circuit_breaker", unit=_unit(inst))
            return
        deadline = cyc.now + self._config.idle.grace
        block = permanent_block(inst, self._config)
        promise = self._promise(inst)
        message = warning_message(
            finding,
            now=cyc.now,
            deadline=deadline,
            will_stop=self._config.mode is Mode.ENFORCE,
            dry_run=self._config.dry_run,
            alert_only_reason=block.detail if block else None,
            instance_store_loss=inst.has_instance_store and promise != "alert",
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

    def _stale_reason(
        self, finding: Finding, episode: EpisodeRow, audited_at: datetime
    ) -> str | None:
        """Why the warning no longer covers a stop now, if it does not.

        The warning must have promised this stop (settings may have changed since), and the
        instance must have stayed idle since the warning: the trailing idle run of its series
        has to start before it. A run that starts later means it was busy in between — e.g.
        while the daemon was down — so it gets a fresh warning and a fresh grace period.
        """
        if episode.promise != self._promise(finding.instance):
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
        block = instance_block(inst, self._config, cyc.now)  # this cycle's tags, right now
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
        action = "hibernate" if hibernate else "stop"
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
                message = stopped_message(finding, action=action, dry_run=True)
                # Owners hear nothing of a dry run: the notifier sends it to the channels only.
                self._alert(tx, cyc, message, f"would_stop:{episode.id}")
            cyc.summary.stops[(action, True)] += 1
            log.info("instance_would_stop", action=action)
            return
        crash_point("before_intent")
        # No stop without its intent on record: a store that refuses the write raises here,
        # before the provider is called.
        with self._store.transaction() as tx:
            intent_id = self._record(
                tx, cyc, ref, action, phase="intent", reason=why, episode_id=episode.id
            )
        crash_point("after_intent")
        ok, detail, unconfirmed = False, "", False
        try:
            result = self._providers[inst.provider].stop(inst, hibernate=hibernate)
            ok, detail, action = result.ok, result.message, result.action or action
            unconfirmed = not ok and result.unconfirmed
        except GuardianError as exc:
            detail = str(exc)
        except Exception as exc:  # an SDK bug must not lose the outcome of an attempted stop
            log.exception("stop_raised")
            detail = f"{type(exc).__name__}: {exc}"
        crash_point("after_stop_call")
        if unconfirmed:
            self._leave_for_reconcile(intent_id, action, detail, cyc)
            return
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
                message = stopped_message(finding, action=action, dry_run=False)
                self._alert(tx, cyc, message, f"stopped:{intent_id}", inst)
            else:
                tx.update_episode(episode.id, stop_error=detail)
                if episode.stop_error != detail:  # one alert per distinct error, not per cycle
                    message = stop_failed_message(finding, detail)
                    self._alert(tx, cyc, message, f"stop_failed:{intent_id}", inst)
        crash_point("after_outcome")
        if ok:
            cyc.summary.stops[(action, False)] += 1
            log.warning("instance_stopped", action=action, intent_id=intent_id)
        else:
            cyc.summary.stop_failures[inst.provider] += 1
            log.error("stop_failed", action=action, intent_id=intent_id, error=detail)

    @staticmethod
    def _leave_for_reconcile(intent_id: int, action: str, detail: str, cyc: _Cycle) -> None:
        """A stop whose answer was lost may have worked: calling it failed would alert
        wrongly, retrying it blindly would stop twice. Its intent stays without an outcome, and
        the next cycle's ``_reconcile`` reads the outcome from the instance's state — the path
        a crash between the call and its record takes."""
        cyc.summary.unconfirmed += 1
        log.warning(
            "stop_unconfirmed",
            action=action,
            intent_id=intent_id,
            error=detail,
            then="its outcome is read from the instance's state next cycle",
        )

    # -- housekeeping around the ladder --------------------------------------------------------
    def _reconcile(self, result: CycleResult, cyc: _Cycle) -> None:
        """Give every stop intent without an outcome (a crash mid-stop, a lost answer) its
        outcome now, from the instance's state."""
        with self._store.reader() as tx:
            pending = tx.pending_intents()
        running = {finding.instance.key for finding in result.findings}
        for intent in pending:
            failed_unit = _unit_failed(result, intent.ref)
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
                if outcome == "ok":  # the same "Stopped" alert as a confirmed stop, once
                    self._notifier.enqueue(
                        tx,
                        stop_confirmed_message(intent.ref, intent.action),
                        at=cyc.now,
                        dedupe_key=f"stopped:{intent.id}",
                        owner=tx.last_owner(intent.ref.instance_key, intent.at),
                        instance_key=intent.ref.instance_key,
                    )
                else:
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
