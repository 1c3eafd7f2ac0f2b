"""The node agent's core: poll the GPUs, keep a bounded window, decide with the daemon's policy.

One poll = one NVML ``Snapshot`` → one ``GpuSample`` in a bounded ``SampleWindow`` → the same
``policy.decide`` the daemon calls (plus what only the machine itself can see: the compute
processes holding each GPU) → the sinks (Prometheus, CloudWatch, Cloud Monitoring) and, when
enabled, ``Autostop``. The state of the last poll goes to a small JSON status file in the run
directory, which ``guardian agent status`` reads.

Time comes from a ``Clock``; tests pass the fake's ``ManualClock`` so that an hour-long
scenario runs in milliseconds. Wiring (metadata, providers, signals) is
``guardian.commands.agent.build_agent``; this module takes its parts ready-made.
"""

from __future__ import annotations

import dataclasses
import math
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog

from guardian.agent.gpu import Snapshot
from guardian.agent.poll import PollResult
from guardian.agent.status import AgentFacts, status_document
from guardian.config import Config
from guardian.durations import format_duration
from guardian.errors import ConfigError
from guardian.model import (
    Decision,
    GpuInstance,
    GpuSample,
    GpuUtilisation,
    InstanceMetric,
    Point,
    PriceAssessment,
)
from guardian.policy import decide, protection

if TYPE_CHECKING:
    from guardian.agent.autostop import Autostop
    from guardian.agent.gpu.nvml import Nvml
    from guardian.agent.local_disks import LocalDiskProbe, LocalDisks
    from guardian.agent.notebook import NotebookWatch
    from guardian.agent.status import RunDir

__all__ = [
    "MAX_WINDOW_SAMPLES",
    "STATUS_EVERY_S",
    "Agent",
    "Clock",
    "SampleWindow",
    "Sink",
    "SystemClock",
    "agent_horizon",
    "boot_time",
    "local_instance",
    "policy_config",
]

log = structlog.get_logger(__name__)

# At most this many samples are kept, whatever the interval: as many as the daemon hands the
# policy for one instance (24 h of 60 s periods), so each decide() costs the agent no more than
# it costs the daemon. Finer polls are merged into coarser samples instead of growing the window:
# the default 10 s over 2 h keeps every poll (720); 1 s merges 5 polls a sample.
MAX_WINDOW_SAMPLES = 1440
STATUS_EVERY_S = 5.0  # the status file's refresh at short intervals (`agent status` reads it)
LOCAL_DISKS_EVERY_S = 60.0  # local disks change slowly; the metric is sent once a period
# The agent has no price catalog: it judges idleness; `underused` is the daemon's job.
NO_PRICE = PriceAssessment(
    hourly_price=None,
    price_source=None,
    cpu_equivalent=None,
    premium=None,
    reason="priced by the daemon, not the node agent",
)


class Clock(Protocol):
    def now(self) -> datetime: ...
    def monotonic(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Wall time for samples, monotonic time for scheduling; ``wake`` ends a sleep early."""

    def __init__(self) -> None:
        import threading

        self._wake = threading.Event()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        self._wake.wait(max(0.0, seconds))

    def wake(self) -> None:
        self._wake.set()


class Sink(Protocol):
    """Where each poll's readings go. A sink never raises: it logs its own failures."""

    name: str

    def publish(self, result: PollResult) -> None: ...
    def close(self) -> None: ...


def agent_horizon(config: Config) -> timedelta:
    """How much history the agent keeps: twice the longest idle window, within the lookback.

    The idle rules need one window of samples; twice that gives the coverage rule and the
    mean utilisation a span longer than any one idle episode, without keeping a day of data.
    """
    longest = max(config.idle.window, config.idle.window_released)
    return min(config.cost.lookback, max(2 * longest, config.idle.max_staleness))


def policy_config(config: Config) -> Config:
    """The config the agent hands to ``decide``: the lookback narrowed to the kept horizon,
    so coverage is judged over the history the agent actually keeps."""
    cost = config.cost.model_copy(update={"lookback": agent_horizon(config)})
    return config.model_copy(update={"cost": cost})


class SampleWindow:
    """The recent per-poll samples, bounded in count whatever the interval and horizon.

    When the horizon holds more polls than ``MAX_WINDOW_SAMPLES``, ``per_sample`` consecutive
    polls are merged into one sample conservatively: the max utilisation, and incomplete if
    any poll was incomplete or missing — merging can hide idleness, never invent it. The
    notebook signal rides along at the same times: the smallest of the merged polls', and only
    if every one of them had it.
    """

    def __init__(self, horizon: timedelta, interval: timedelta) -> None:
        if interval < timedelta(seconds=1):
            raise ConfigError("agent.interval: must be at least 1s")
        polls = math.ceil(horizon / interval)
        self.per_sample = max(1, math.ceil(polls / MAX_WINDOW_SAMPLES))
        self.period = interval * self.per_sample
        self._samples: deque[GpuSample] = deque(maxlen=math.ceil(horizon / self.period) + 1)
        self._notebook: deque[Point] = deque(maxlen=self._samples.maxlen)
        self._bucket: list[GpuSample] = []
        self._notebook_bucket: list[float | None] = []
        self._polls_in_bucket = 0
        self.version = 0  # bumped whenever a sample is added: the policy's input changed

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def capacity(self) -> int:
        return self._samples.maxlen or 0

    def add(self, sample: GpuSample | None, notebook_idle_s: float | None = None) -> None:
        """Record one poll; None (nothing could be read) leaves a gap."""
        self._polls_in_bucket += 1
        if sample is not None:
            self._bucket.append(sample)
            self._notebook_bucket.append(notebook_idle_s)
        if self._polls_in_bucket < self.per_sample:
            return
        if self._bucket:
            missed = len(self._bucket) < self.per_sample
            merged = _merge(self._bucket, missed=missed)
            self._samples.append(merged)
            notebook = self._notebook_bucket
            if not missed and None not in notebook:
                self._notebook.append((merged.at, min(v for v in notebook if v is not None)))
            self.version += 1
        self._bucket = []
        self._notebook_bucket = []
        self._polls_in_bucket = 0

    def utilisation(self, error: str | None = None) -> GpuUtilisation:
        samples = tuple(self._samples)
        return GpuUtilisation(
            samples=samples,
            period_s=max(1, round(self.period.total_seconds())),
            gpus_reporting=1 if samples else 0,
            error=error,
            processes=samples[-1].processes if samples else None,
            instance_series=(
                {InstanceMetric.NOTEBOOK_IDLE_S: tuple(self._notebook)} if self._notebook else {}
            ),
        )


def _merge(bucket: Sequence[GpuSample], *, missed: bool) -> GpuSample:
    if len(bucket) == 1 and not missed:
        return bucket[0]
    mems = [s.mem_used_mib for s in bucket]
    procs = [s.processes for s in bucket]
    return GpuSample(
        at=bucket[-1].at,
        gpu_util_pct=max(s.gpu_util_pct for s in bucket),
        mem_used_mib=None if None in mems else max(m for m in mems if m is not None),
        complete=not missed and all(s.complete for s in bucket),
        processes=None if None in procs else max(p for p in procs if p is not None),
    )


def boot_time(proc_stat: Path = Path("/proc/stat")) -> datetime:
    """When this machine last booted (= the instance's last start), from /proc/stat."""
    try:
        for line in proc_stat.read_text(encoding="ascii").splitlines():
            if line.startswith("btime "):
                return datetime.fromtimestamp(int(line.split()[1]), UTC)
    except (OSError, ValueError):
        pass
    # No /proc (not Linux): the agent's own start is a safe lower bound on uptime.
    return datetime.now(UTC)


def local_instance(
    gpu_count: int, gpu_model: str | None, launch_time: datetime, hostname: str | None = None
) -> GpuInstance:
    """This machine when no cloud identity is known (no autostop, no publishing)."""
    return GpuInstance(
        provider="local",
        account="",
        region="",
        zone="",
        instance_id=hostname or socket.gethostname(),
        instance_type="",
        launch_time=launch_time,
        gpu_count=gpu_count,
        gpu_model=gpu_model,
    )


class Agent:
    """Poll, decide, publish, autostop. Build it with ready parts; ``run`` loops until stopped."""

    def __init__(
        self,
        config: Config,
        nvml: Nvml,
        instance: GpuInstance,
        *,
        clock: Clock,
        sinks: Sequence[Sink] = (),
        autostop: Autostop | None = None,
        run_dir: RunDir | None = None,
        backend: str = "nvml",
        notebooks: NotebookWatch | None = None,
        local_disks: LocalDiskProbe | None = None,
    ) -> None:
        self.config = config
        self.nvml = nvml
        self.instance = instance
        self.clock = clock
        self.sinks = tuple(sinks)
        self.autostop = autostop
        self.run_dir = run_dir
        self.backend = backend
        self.notebooks = notebooks
        self.interval = config.agent.interval
        self.window = SampleWindow(agent_horizon(config), self.interval)
        self._policy_config = policy_config(config)
        self.started_at = clock.now()
        self._last_verdict: str | None = None
        self._last_warnings: tuple[str, ...] = ()
        self.polls = 0
        self.last: PollResult | None = None
        self._status_at = -math.inf
        self._status_key: tuple[object, ...] = ()
        self._decided_key: tuple[object, ...] = ()
        self.local_disk_probe = local_disks
        self._local: LocalDisks | None = None
        self._local_at: datetime | None = None
        self._local_read_at = -math.inf

    def poll(self) -> PollResult:
        """One measurement and decision. NVML errors are data here, never exceptions."""
        now = self.clock.now()
        snapshot = self.nvml.sample(now)
        self._log_problems(snapshot)
        notebook = self.notebooks.poll(snapshot, now) if self.notebooks is not None else None
        self.window.add(snapshot.as_sample(), notebook.idle_s if notebook else None)
        keep_until = self.run_dir.keep_until(now) if self.run_dir else None
        if self.autostop is not None:
            self.instance = self.autostop.refresh(self.instance, now)
        decision = self._decide(snapshot, keep_until, now)
        self._read_local_disks(now)
        local_used = (
            (self._local_at, self._local.used_mib)
            if self._local is not None and self._local.used_mib is not None and self._local_at
            else None
        )
        state = (
            self.autostop.step(decision, self.instance, now, local_disk=local_used)
            if self.autostop
            else None
        )
        result = PollResult(
            snapshot,
            decision,
            state,
            keep_until,
            notebook=notebook,
            local_disks=self._local,
            local_disks_at=self._local_at,
        )
        for sink in self.sinks:
            try:
                sink.publish(result)
            except Exception:  # a publishing bug must not stop measuring or autostop
                log.exception("sink_crashed", sink=sink.name)
        if self.run_dir is not None:
            self._write_status(result)
        self.polls += 1
        self.last = result
        return result

    def _read_local_disks(self, now: datetime) -> None:
        """The local disks, read once a minute at most; a failed read is unknown, never 0."""
        if self.local_disk_probe is None:
            return
        if self.clock.monotonic() - self._local_read_at < LOCAL_DISKS_EVERY_S:
            return
        self._local_read_at = self.clock.monotonic()
        try:
            self._local = self.local_disk_probe.read()
        except Exception:  # a probe bug must not stop measuring the GPUs
            log.exception("local_disk_probe_failed")
            self._local = None
        self._local_at = now

    def facts(self) -> AgentFacts:
        """What the status file says about the agent itself."""
        return AgentFacts(
            started_at=self.started_at,
            interval=self.interval,
            backend=self.backend,
            window_samples=len(self.window),
            window_capacity=self.window.capacity,
            autostop=self.autostop is not None,
            dry_run=self.config.dry_run,
            instance=self.instance,
        )

    def _write_status(self, result: PollResult) -> None:
        # At 1 s polls the file is rewritten every few seconds, and at once when something a
        # person would look for changes: the verdict, the autostop step, a keep.
        assert self.run_dir is not None
        step = result.autostop.step if result.autostop else None
        key = (result.decision.verdict, step, result.keep_until)
        due = self.clock.monotonic() - self._status_at >= STATUS_EVERY_S
        if due or key != self._status_key:
            self.run_dir.write_status(status_document(self.facts(), result))
            self._status_at, self._status_key = self.clock.monotonic(), key

    def _decide(self, snapshot: Snapshot, keep_until: datetime | None, now: datetime) -> Decision:
        # When polls are merged (short intervals), the window changes every few polls only:
        # decide() then runs when an input changed, not on each poll. Its other input, the
        # time, matters for staleness and min_uptime, which this delays by under one period.
        reason = snapshot.unmeasured_reason()
        if reason is None and not len(self.window):
            # The policy's "is the GPU agent running?" would be asked of the agent itself.
            reason = (
                "this agent has just started: its first sample covers "
                f"{format_duration(self.window.period)} of polls"
            )
        key = (self.window.version, reason, keep_until, self.instance)
        if self.last is not None and key == self._decided_key:
            return self.last.decision
        self._decided_key = key
        instance = self.instance
        if keep_until is not None:
            # `guardian agent keep` protects exactly as a keep-until tag would, via the policy.
            tags = {**instance.tags, "guardian:keep-until": keep_until.isoformat()}
            instance = dataclasses.replace(instance, tags=tags)
        decision = decide(
            instance,
            self.window.utilisation(reason),
            NO_PRICE,
            self._policy_config,
            now,
        )
        if keep_until is not None and not protection(self.instance.tags, now).protected:
            until = keep_until.strftime("%Y-%m-%d %H:%M UTC")
            decision = dataclasses.replace(
                decision, reasons=(f"kept until {until} by `guardian agent keep`",)
            )
        if decision.verdict != self._last_verdict:
            log.info(
                "agent_verdict",
                verdict=str(decision.verdict),
                previous=self._last_verdict,
                reasons=list(decision.reasons),
                idle_minutes=decision.idle_minutes,
            )
            self._last_verdict = decision.verdict
        return decision

    def _log_problems(self, snapshot: Snapshot) -> None:
        # Warn when the set of problems changes, not on every poll of a lost GPU.
        warnings = tuple(sorted(str(p) for p in snapshot.warnings))
        if warnings != self._last_warnings:
            if warnings:
                log.warning("gpu_problem", problems=list(warnings))
            else:
                log.info("gpu_problem_cleared", previous=list(self._last_warnings))
            self._last_warnings = warnings

    def run(
        self,
        *,
        max_polls: int | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_poll: Callable[[], None] | None = None,
    ) -> None:
        """Poll every ``agent.interval`` on the monotonic clock, skipping missed ticks.

        ``should_stop`` is checked between polls (the CLI's signal flag); ``on_poll`` runs
        after each (the systemd watchdog ping).
        """
        interval_s = self.interval.total_seconds()
        next_at = self.clock.monotonic()
        while max_polls is None or self.polls < max_polls:
            if should_stop is not None and should_stop():
                break
            self.poll()
            if on_poll is not None:
                on_poll()
            next_at += interval_s
            delay = next_at - self.clock.monotonic()
            if delay < 0:  # a slow poll: skip the missed ticks rather than burst
                next_at = self.clock.monotonic()
                delay = 0.0
            if max_polls is not None and self.polls >= max_polls:
                break
            if should_stop is not None and should_stop():
                break
            self.clock.sleep(delay)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.nvml.close()
        if self.run_dir is not None:
            self.run_dir.remove_status()
