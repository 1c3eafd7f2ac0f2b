"""The agent stopping its own machine: warn, wait ``idle.grace``, re-check, stop through the API.

The sequence is the daemon's warn-then-stop ladder (``guardian.policy.ladder``) on the agent's own
verdicts. At the deadline the agent re-reads its instance from the cloud (tags may have been
set to protect it meanwhile) — ``Provider.describe``: one DescribeInstances by id on AWS, one
``instances.get`` on GCP, never a region's discovery — and applies the same safety gates as the
daemon before calling ``Provider.stop``: protection tags, a controller that owns it (an agent on
an Auto Scaling group's member never stops its own machine, not even in Standby mode: that is
the daemon's job), reserved capacity, one-time spot, and its local disks as it measures them.
A person on the machine can postpone it with ``guardian agent keep 2h``, which writes a file in
the run directory (``guardian.agent.status``).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from guardian.config import Config
from guardian.errors import ProviderError
from guardian.model import Decision, GpuInstance, Point
from guardian.policy import NOTEBOOK_ADVICE, Episode, Step, instance_block, next_step
from guardian.providers import Provider, StopResult

__all__ = [
    "Alerter",
    "Autostop",
    "AutostopState",
    "CloudTarget",
    "StopTarget",
    "default_wall_command",
]

log = structlog.get_logger(__name__)


class StopTarget(Protocol):
    """The agent's own instance in its cloud: a fresh description, and the stop call."""

    def describe(self, instance: GpuInstance) -> GpuInstance: ...
    def stop(self, instance: GpuInstance, *, hibernate: bool) -> StopResult: ...


class CloudTarget:
    """``StopTarget`` over any ``Provider``: ``Provider.describe`` of our own instance."""

    def __init__(self, provider: Provider, instance_id: str) -> None:
        self.provider = provider
        self.instance_id = instance_id

    def describe(self, instance: GpuInstance) -> GpuInstance:
        fresh = self.provider.describe(instance)
        if fresh.instance_id != self.instance_id:
            raise ProviderError(
                f"the {self.provider.name} API described {fresh.instance_id}, not "
                f"{self.instance_id}",
                provider=self.provider.name,
            )
        return fresh

    def stop(self, instance: GpuInstance, *, hibernate: bool) -> StopResult:
        return self.provider.stop(instance, hibernate=hibernate)


def default_wall_command() -> tuple[str, ...] | None:
    found = shutil.which("wall")
    return (found,) if found else None


class Alerter:
    """Tells people: apprise URLs (``notify.urls``) and a wall message to logged-in users."""

    def __init__(self, urls: Sequence[str], wall: Sequence[str] | None) -> None:
        self.urls = tuple(urls)
        self.wall = tuple(wall) if wall else None
        self.sent = 0

    def send(self, title: str, body: str) -> None:
        self.sent += 1
        if self.urls:
            import apprise  # lazily: only an agent with autostop and URLs pays for it

            notifier = apprise.Apprise()
            for url in self.urls:
                notifier.add(url)
            if not notifier.notify(title=title, body=body):
                log.warning("alert_failed", title=title, channels=len(self.urls))
        if self.wall:
            try:
                subprocess.run(
                    [*self.wall, f"gpu-guardian: {title}\n{body}"],
                    check=True,
                    timeout=10,
                    capture_output=True,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                log.warning("wall_failed", error=str(exc))


@dataclass(frozen=True)
class AutostopState:
    step: Step
    episode: Episode | None  # the open idle episode: warned_at and stop deadline
    message: str | None  # what happened at this step, for the status file
    stopped: bool


_REFRESHED_FIELDS = (
    "tags",
    "name",
    "owner",
    "lifecycle",
    "has_instance_store",
    "spot_one_time",
    "hibernation_configured",
    "managed_by",
    "reservation",
)


class Autostop:
    """The ladder for this one machine, with the re-check and gates before the stop."""

    def __init__(
        self,
        config: Config,
        target: StopTarget,
        alerter: Alerter,
        *,
        refresh_every: timedelta = timedelta(minutes=5),
        retry_every: timedelta = timedelta(minutes=5),
    ) -> None:
        self.config = config
        self.target = target
        self.alerter = alerter
        self.refresh_every = refresh_every
        self.retry_every = retry_every
        self.episode: Episode | None = None
        self.stopped = False
        self._refreshed_at: datetime | None = None
        self._attempted_at: datetime | None = None
        self._blocked: str | None = None
        self._latest: GpuInstance | None = None

    def refresh(self, instance: GpuInstance, now: datetime) -> GpuInstance:
        """The instance with its cloud-side facts (tags, instance store, spot) re-read every
        ``refresh_every``; a failed read keeps the previous facts and is logged."""
        if self._refreshed_at is None or now - self._refreshed_at >= self.refresh_every:
            self._fresh(instance, now)
        return self._latest or instance

    def _fresh(self, instance: GpuInstance, now: datetime) -> GpuInstance | None:
        self._refreshed_at = now
        try:
            fresh = self.target.describe(instance)
        except ProviderError as exc:
            log.warning("instance_refresh_failed", error=str(exc))
            return None
        # Kept for the next polls too: what the stop's re-check saw is what the verdict uses.
        self._latest = dataclasses.replace(
            instance, **{name: getattr(fresh, name) for name in _REFRESHED_FIELDS}
        )
        return self._latest

    def step(
        self,
        decision: Decision,
        instance: GpuInstance,
        now: datetime,
        *,
        local_disk: Point | None = None,
    ) -> AutostopState:
        """One poll's step; ``local_disk`` is the agent's own reading of its local disks."""
        if self.stopped:
            return AutostopState(Step.WAIT, self.episode, "stop requested", True)
        grace = self.config.idle.grace
        step, episode = next_step(instance.key, decision.verdict, self.episode, now, grace)
        message: str | None = None
        if step is Step.WARN:
            message = self._warn(decision, instance, now, now + grace)
        elif step is Step.RESUMED:
            message = f"stop cancelled: {'; '.join(decision.reasons) or decision.verdict}"
            self._blocked = None
            self.alerter.send(f"{_label(instance)}: stop cancelled", message)
            log.info(
                "autostop_cancelled", instance_id=instance.instance_id, verdict=decision.verdict
            )
        elif step is Step.STOP and episode is not None:
            busy_since = self._busy_since_warning(decision, episode, now)
            if busy_since:  # like the daemon: a stop needs idleness since the warning
                step, episode = Step.WARN, Episode(instance.key, now, now + grace)
                message = self._warn(decision, instance, now, episode.deadline)
            else:
                message = self._stop(instance, now, local_disk)
        self.episode = episode
        return AutostopState(step, episode, message, self.stopped)

    def _busy_since_warning(self, decision: Decision, episode: Episode, now: datetime) -> bool:
        """Whether the trailing idle run began after the warning: the machine was not idle
        (e.g. unmeasured, then busy) in between, so the warning no longer covers a stop."""
        if decision.idle_minutes is None:
            return False
        age = timedelta(seconds=decision.newest_sample_age_s or 0.0)
        idle_since = now - age - timedelta(minutes=decision.idle_minutes)
        slack = 2 * self.config.agent.interval + timedelta(minutes=1)  # minutes are rounded
        return idle_since > episode.warned_at + slack

    def _warn(
        self, decision: Decision, instance: GpuInstance, now: datetime, deadline: datetime
    ) -> str:
        at = deadline.strftime("%H:%M UTC")
        body = (
            f"{_label(instance)} is idle: {'; '.join(decision.reasons)}. "
            f"It will be stopped at {at} unless its GPUs get busy again. To keep it, run "
            f"`guardian agent keep 2h` on the machine or tag it guardian:protect=true."
        )
        if decision.notebook_idle_minutes is not None:
            body += f" {NOTEBOOK_ADVICE}"
        self.alerter.send(f"{_label(instance)}: idle, stopping at {at}", body)
        log.warning(
            "autostop_warned",
            instance_id=instance.instance_id,
            deadline=deadline.isoformat(),
            reasons=list(decision.reasons),
        )
        return f"warned; stop at {deadline.isoformat()}"

    def _stop(self, instance: GpuInstance, now: datetime, local_disk: Point | None) -> str:
        if self._attempted_at is not None and now - self._attempted_at < self.retry_every:
            return self._blocked or "waiting to retry the stop"
        self._attempted_at = now
        fresh = self._fresh(instance, now)
        if fresh is None:  # never stop on stale facts: the tags may protect it by now
            return self._not_stopping(instance, "cannot re-read the instance from the cloud API")
        block = instance_block(fresh, self.config, now, local_disk=local_disk, agent=True)
        if block is not None:
            return self._not_stopping(fresh, block.detail)
        hibernate = self.config.enforce.hibernate and fresh.hibernation_configured
        action = "hibernate" if hibernate else "stop"
        if self.config.dry_run:
            return self._not_stopping(fresh, f"dry run: would {action} it now")
        try:
            result = self.target.stop(fresh, hibernate=hibernate)
        except ProviderError as exc:
            result = StopResult(fresh.key, ok=False, action=action, message=str(exc))
        if not result.ok:
            log.error("autostop_failed", instance_id=fresh.instance_id, error=result.message)
            self.alerter.send(f"{_label(fresh)}: stop FAILED", result.message)
            return f"{action} failed: {result.message}"
        self.stopped = True
        log.warning("instance_stopped", instance_id=fresh.instance_id, action=result.action)
        self.alerter.send(
            f"{_label(fresh)}: stopping now",
            f"{_label(fresh)} stayed idle through the grace period; {result.action} requested.",
        )
        return f"{result.action} requested"

    def _not_stopping(self, instance: GpuInstance, why: str) -> str:
        if why != self._blocked:  # say it once per reason, not once per poll
            self._blocked = why
            log.warning("autostop_blocked", instance_id=instance.instance_id, reason=why)
            self.alerter.send(f"{_label(instance)}: idle, not stopping", why)
        return f"not stopping: {why}"


def _label(instance: GpuInstance) -> str:
    name = f" ({instance.name})" if instance.name else ""
    return f"{instance.instance_id}{name}"
