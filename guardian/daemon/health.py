"""guardian's own health: alerts about itself, each once per problem and once on recovery.

Three problems are watched, each a condition in the state database (so a restart neither
repeats an alert nor forgets one) that opens once the problem has lasted
``limits.alert_after_failed_cycles`` cycles in a row and closes, with one more message, on the
first cycle without it:

- ``health:cycles``: cycles that fail — an unexpected error, or a state database that refuses
  writes (the audit still runs; nothing is warned about or stopped, as nothing can be recorded);
- ``unit:<provider>:<account>``: an account or project (or some of its regions) that could not
  be listed — expired credentials, a revoked role, a region that cannot be reached. Every
  cycle meanwhile its instances, as last listed, are reported *not audited*: not gone, so
  their episodes stay open, and never acted on, as enforcement only sees what was listed;
- ``metrics:<provider>``: instances listed while their metrics API fails. They are
  ``unmeasured`` and so never stopped; one alert says why, not one per instance or cycle.

Streaks are counted in memory: a restart counts again, which can only delay an alert. While the
database refuses writes nothing can be queued, so an alert goes out at once
(``Notifier.send_now``) and its condition is written when the database is back.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime

import structlog

from guardian.cycle import CycleResult
from guardian.daemon.health_messages import (
    cycles_failing_message,
    cycles_recovered_message,
    metrics_missing_message,
    metrics_restored_message,
    unit_restored_message,
    unit_unreachable_message,
)
from guardian.daemon.housekeeping import could_hide
from guardian.daemon.messages import Message
from guardian.daemon.notify import Notifier
from guardian.daemon.store import InstanceRef, Store
from guardian.errors import StateUnavailable
from guardian.providers import UnitError

__all__ = ["CYCLES", "HealthWatch"]

log = structlog.get_logger(__name__)

CYCLES = "health:cycles"
_PREFIXES = ("health:", "unit:", "metrics:")
_IDS_LOGGED = 20


@dataclass
class _Streak:
    since: datetime
    detail: str
    cycles: int = 1


class HealthWatch:
    """Counts what keeps going wrong and turns it into one alert each way."""

    def __init__(self, store: Store, alert_after: int) -> None:
        self._store = store
        self.alert_after = alert_after
        self.state_error: str | None = None  # set while the database refuses writes
        self._streaks: dict[str, _Streak] = {}
        self._open: dict[str, datetime] = {}  # condition key → since
        self._unrecorded: dict[str, str] = {}  # opened while the database refused: key → detail
        self._known: dict[str, InstanceRef] = {}  # instances as last listed
        try:
            with store.reader() as tx:
                for prefix in _PREFIXES:
                    self._open.update(tx.open_conditions(prefix))
                self._known = {o.ref.instance_key: o.ref for o in tx.latest_observations()}
        except StateUnavailable as exc:
            self.state_unavailable(str(exc))

    # -- the state database ------------------------------------------------------------------
    def state_unavailable(self, error: str) -> None:
        """Say once, in one line, why nothing is recorded; repeated calls stay quiet."""
        if self.state_error is None:
            log.error(
                "state_unwritable",
                error=error,
                then="auditing goes on; nothing is warned about or stopped until it accepts "
                "writes again",
            )
        self.state_error = error

    def state_ok(self) -> None:
        if self.state_error is not None:
            log.info("state_writable_again", was=self.state_error)
        self.state_error = None

    # -- after the audit -----------------------------------------------------------------------
    def audited(self, result: CycleResult) -> tuple[InstanceRef, ...]:
        """The instances a failed listing hid this cycle (as last listed), logged per unit;
        remembered, so an outage of many cycles keeps reporting them."""
        seen = {f.instance.key: InstanceRef.of(f.instance) for f in result.findings}
        listed_accounts = {f.instance.account for f in result.findings}
        hidden: dict[UnitError, list[InstanceRef]] = defaultdict(list)
        for key, ref in self._known.items():
            if key in seen:
                continue
            error = next((e for e in result.errors if could_hide(e, ref, listed_accounts)), None)
            if error is not None:
                hidden[error].append(ref)
        for error, refs in hidden.items():
            log.warning(
                "instances_not_audited",
                provider=error.provider,
                account=error.account,
                region=error.region,
                instances=len(refs),
                instance_ids=sorted(r.instance_id for r in refs)[:_IDS_LOGGED],
                error=error.message,
            )
        not_audited = tuple(ref for refs in hidden.values() for ref in refs)
        self._known = {**seen, **{ref.instance_key: ref for ref in not_audited}}
        return not_audited

    def check(
        self,
        now: datetime,
        notifier: Notifier,
        *,
        result: CycleResult | None,
        failure: str | None,
        not_audited: tuple[InstanceRef, ...] = (),
    ) -> None:
        """After each cycle: ``result`` when the audit ran, ``failure`` when the cycle failed
        (an error, or the database refusing writes)."""
        if self.state_error is None:
            self._record_unrecorded()
        if failure is not None:
            streak = self._bump(CYCLES, now, failure)
            if streak.cycles >= self.alert_after and CYCLES not in self._open:
                message = cycles_failing_message(streak.cycles, streak.since, failure)
                log.error("cycles_failing", cycles=streak.cycles, error=failure)
                self._open_condition(
                    CYCLES,
                    since=streak.since,
                    detail=failure,
                    message=message,
                    now=now,
                    notifier=notifier,
                )
        else:
            streak_seen = self._streaks.pop(CYCLES, None)
            if CYCLES in self._open:
                failed = streak_seen.cycles if streak_seen else self.alert_after
                message = cycles_recovered_message(failed, self._open[CYCLES])
                self._close_condition(CYCLES, message, now, notifier)
        if result is not None:
            self._check_units(result, now, notifier, not_audited)
            self._check_metrics(result, now, notifier)

    def _check_units(
        self,
        result: CycleResult,
        now: datetime,
        notifier: Notifier,
        not_audited: tuple[InstanceRef, ...],
    ) -> None:
        failing: dict[str, list[UnitError]] = defaultdict(list)
        for error in result.errors:
            failing[f"unit:{error.provider}:{error.account}"].append(error)
        listed = {f.instance.account for f in result.findings}
        for key, errors in failing.items():
            first = errors[0]
            streak = self._bump(key, now, first.message)
            regions = sorted({e.region for e in errors})
            if streak.cycles == 1:  # one error line per episode; the alert waits for the streak
                log.error(
                    "unit_unreachable",
                    provider=first.provider,
                    account=first.account,
                    regions=regions,
                    error=first.message,
                )
            if streak.cycles >= self.alert_after and key not in self._open:
                hidden = [r for r in not_audited if any(could_hide(e, r, listed) for e in errors)]
                message = unit_unreachable_message(
                    first.provider,
                    first.account,
                    regions=regions,
                    error=first.message,
                    not_audited=hidden,
                    cycles=streak.cycles,
                )
                self._open_condition(
                    key,
                    since=streak.since,
                    detail=first.message,
                    message=message,
                    now=now,
                    notifier=notifier,
                )
        for key in [k for k in self._streaks if k.startswith("unit:") and k not in failing]:
            del self._streaks[key]
        for key in [k for k in self._open if k.startswith("unit:") and k not in failing]:
            _, provider, account = key.split(":", 2)
            log.info("unit_audited_again", provider=provider, account=account)
            message = unit_restored_message(provider, account, self._open[key])
            self._close_condition(key, message, now, notifier)

    def _check_metrics(self, result: CycleResult, now: datetime, notifier: Notifier) -> None:
        listed: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        errors: dict[str, str] = {}
        for finding in result.findings:
            provider = finding.instance.provider
            listed[provider] += 1
            if finding.metrics_failed:
                failed[provider] += 1
                errors.setdefault(provider, "; ".join(finding.decision.reasons))
        for provider in listed:
            key = f"metrics:{provider}"
            if not failed[provider]:
                self._streaks.pop(key, None)
                if key in self._open:
                    log.info("metrics_back", provider=provider)
                    message = metrics_restored_message(provider, self._open[key])
                    self._close_condition(key, message, now, notifier)
                continue
            error = errors.get(provider) or "the metrics API failed"
            streak = self._bump(key, now, error)
            if streak.cycles >= self.alert_after and key not in self._open:
                log.error(
                    "metrics_missing",
                    provider=provider,
                    unmeasured=failed[provider],
                    listed=listed[provider],
                    cycles=streak.cycles,
                    error=error,
                )
                message = metrics_missing_message(
                    provider, failed[provider], listed[provider], error, streak.cycles
                )
                self._open_condition(
                    key,
                    since=streak.since,
                    detail=error,
                    message=message,
                    now=now,
                    notifier=notifier,
                )

    # -- conditions ----------------------------------------------------------------------------
    def _bump(self, key: str, now: datetime, detail: str) -> _Streak:
        streak = self._streaks.get(key)
        if streak is None:
            streak = self._streaks[key] = _Streak(now, detail)
        else:
            streak.cycles += 1
            streak.detail = detail
        return streak

    def _open_condition(
        self,
        key: str,
        *,
        since: datetime,
        detail: str,
        message: Message,
        now: datetime,
        notifier: Notifier,
    ) -> None:
        self._open[key] = since
        if self.state_error is None:  # else the outbox is not delivered: go around it
            try:
                with self._store.transaction() as tx:
                    if key not in tx.open_conditions(key):
                        tx.open_condition(key, since, detail)
                    notifier.enqueue(tx, message, at=now, dedupe_key=f"{key}:{since.isoformat()}")
            except StateUnavailable as exc:
                self.state_unavailable(str(exc))
            else:
                return
        self._unrecorded[key] = detail
        sent = notifier.send_now(message)
        log.warning("alert_sent_directly", condition=key, channels=sent)

    def _close_condition(
        self, key: str, message: Message, now: datetime, notifier: Notifier
    ) -> None:
        since = self._open[key]
        try:
            with self._store.transaction() as tx:
                tx.close_condition(key)
                notifier.enqueue(
                    tx, message, at=now, dedupe_key=f"{key}:{since.isoformat()}:cleared"
                )
        except StateUnavailable as exc:
            self.state_unavailable(str(exc))
            return  # still open: closed, with its message, once the database takes it
        del self._open[key]
        self._unrecorded.pop(key, None)

    def _record_unrecorded(self) -> None:
        """Write the conditions opened while the database refused, now that it accepts."""
        if not self._unrecorded:
            return
        try:
            with self._store.transaction() as tx:
                for key, detail in self._unrecorded.items():
                    if key in self._open and key not in tx.open_conditions(key):
                        tx.open_condition(key, self._open[key], detail)
        except StateUnavailable as exc:
            self.state_unavailable(str(exc))
            return
        self._unrecorded.clear()
