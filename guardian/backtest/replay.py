"""Replay GPU history through the real policy and the real warn-then-stop ladder, and score it.

A simulated clock steps at ``poll_interval`` (one grid for the whole trace, as one daemon polls
every instance at once). At each step ``guardian.policy.rules.decide`` sees exactly what the daemon
would: the instance's samples over ``cost.lookback`` up to that moment, never a later one; its
verdict drives ``guardian.policy.ladder.next_step``. A stop ends the instance's series.

Scoring, per instance (a sample "works" when its busiest GPU is at or above ``busy_above``):

- ``idle_tail_hours``: from the last working sample to the end of the series (the whole series
  if it never worked; zero where ground truth says the job ran throughout);
- ``reclaimed_hours``: from the stop to the end of the series, for a stop not followed by work;
- ``interrupted``: 1 for a stop followed by a working sample, or any stop where ground truth
  says the job was still running: work enforcement would have killed;
- ``saved_usd``: reclaimed hours × the instance's hourly price (null where unknown);
- ``reclaimed_fraction``: reclaimed hours ÷ idle tail hours (null where there is no tail).

Enforcement's fleet-wide gates (``limits.*``) are not simulated: they cap how many stops happen
per cycle, not which instances are judged idle, and a trace's instances need not share a fleet.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from guardian.backtest.trace import TraceSeries
from guardian.config import Config
from guardian.model import GpuInstance, GpuUtilisation, InstanceMetric, Point, PriceAssessment
from guardian.policy import Episode, Step, decide, next_step

__all__ = [
    "BacktestResult",
    "InstanceOutcome",
    "PriceFor",
    "Totals",
    "backtest_json",
    "replay",
    "replay_series",
]

PriceFor = Callable[[GpuInstance], PriceAssessment]

_NO_PRICE = PriceAssessment(None, None, None, None, "no instance type or price for the trace")


@dataclass(frozen=True)
class InstanceOutcome:
    """What enforcement would have done to one instance, and what that was worth."""

    instance_id: str
    instance_type: str
    gpu_count: int
    hourly_price: float | None
    samples: int
    started_at: datetime  # the first sample
    hours: float
    polls: int
    warnings: int
    warnings_withdrawn: int
    stopped_at: datetime | None
    stop_reasons: tuple[str, ...]
    idle_tail_hours: float
    reclaimed_hours: float
    interrupted: int
    never_worked: bool
    job_running: bool | None = None

    @property
    def saved_usd(self) -> float | None:
        if self.hourly_price is None:
            return None
        return self.reclaimed_hours * self.hourly_price

    @property
    def reclaimed_fraction(self) -> float | None:
        return self.reclaimed_hours / self.idle_tail_hours if self.idle_tail_hours > 0 else None


@dataclass(frozen=True)
class Totals:
    instances: int
    polls: int
    warnings: int
    warnings_withdrawn: int
    stops: int
    interrupted: int
    never_worked: int
    never_worked_stopped: int
    idle_tail_hours: float
    reclaimed_hours: float
    saved_usd: float | None  # over the priced instances; null when none is priced

    @property
    def reclaimed_fraction(self) -> float | None:
        return self.reclaimed_hours / self.idle_tail_hours if self.idle_tail_hours > 0 else None


@dataclass(frozen=True)
class BacktestResult:
    outcomes: tuple[InstanceOutcome, ...]
    totals: Totals
    busy_above: float
    poll_interval: timedelta


def _hours(delta: timedelta) -> float:
    return max(0.0, delta.total_seconds() / 3600)


def _window(
    extra: Sequence[tuple[InstanceMetric, tuple[Point, ...], list[float]]],
    start_s: float,
    end_s: float,
) -> dict[InstanceMetric, tuple[Point, ...]]:
    """The per-instance series as the provider would return them at ``end_s``."""
    found: dict[InstanceMetric, tuple[Point, ...]] = {}
    for metric, points, times in extra:
        window = points[bisect_left(times, start_s) : bisect_right(times, end_s)]
        if window:
            found[metric] = window
    return found


def replay_series(
    series: TraceSeries,
    config: Config,
    price: PriceAssessment,
    *,
    origin: datetime,
    busy_above: float,
) -> InstanceOutcome:
    """Replay one instance's series on the poll grid that starts at ``origin``."""
    samples, instance = series.samples, series.instance
    poll = config.poll_interval
    lookback_s = config.cost.lookback.total_seconds()
    grace = config.idle.grace
    times = [s.at.timestamp() for s in samples]
    extra = [
        (metric, points, [at.timestamp() for at, _ in points])
        for metric, points in series.instance_series.items()
    ]
    first, last = samples[0].at, samples[-1].at
    step_s = poll.total_seconds()
    index = max(0, math.ceil((first - origin).total_seconds() / step_s))
    episode: Episode | None = None
    polls = warnings = withdrawn = 0
    stopped_at: datetime | None = None
    stop_reasons: tuple[str, ...] = ()
    while True:
        now = origin + poll * index
        if now > last:
            break
        index += 1
        now_s = now.timestamp()
        # The daemon's view at `now`: the lookback up to now, nothing from the future.
        window = samples[bisect_left(times, now_s - lookback_s) : bisect_right(times, now_s)]
        utilisation = GpuUtilisation(
            window,
            series.period_s,
            instance.gpu_count,
            instance_series=_window(extra, now_s - lookback_s, now_s),
        )
        decision = decide(instance, utilisation, price, config, now)
        polls += 1
        step, episode = next_step(instance.key, decision.verdict, episode, now, grace)
        if step is Step.WARN:
            warnings += 1
        elif step is Step.RESUMED:
            withdrawn += 1
        elif step is Step.STOP:
            stopped_at, stop_reasons = now, decision.reasons
            break

    period = timedelta(seconds=series.period_s)
    end = last + period
    working = [s.at for s in samples if s.gpu_util_pct >= busy_above]
    if series.job_running:
        tail_start = end  # ground truth: the job ran throughout, there was no idle tail
    elif working:
        tail_start = working[-1] + period
    else:
        tail_start = first
    interrupted = 0
    reclaimed = timedelta(0)
    if stopped_at is not None:
        worked_after = bool(working) and working[-1] > stopped_at
        if series.job_running or worked_after:
            interrupted = 1
        else:
            reclaimed = end - stopped_at
    return InstanceOutcome(
        instance_id=instance.instance_id,
        instance_type=instance.instance_type,
        gpu_count=instance.gpu_count,
        hourly_price=price.hourly_price,
        samples=len(samples),
        started_at=first,
        hours=_hours(end - first),
        polls=polls,
        warnings=warnings,
        warnings_withdrawn=withdrawn,
        stopped_at=stopped_at,
        stop_reasons=stop_reasons,
        idle_tail_hours=_hours(end - tail_start),
        reclaimed_hours=_hours(reclaimed),
        interrupted=interrupted,
        never_worked=not working,
        job_running=series.job_running,
    )


def replay(
    series: Sequence[TraceSeries],
    config: Config,
    *,
    busy_above: float = 10.0,
    price_for: PriceFor | None = None,
) -> BacktestResult:
    """Replay every series on one poll grid and total the scores."""
    replayable = [s for s in series if s.samples]
    outcomes: list[InstanceOutcome] = []
    if replayable:
        origin = min(s.samples[0].at for s in replayable)
        for item in replayable:
            price = price_for(item.instance) if price_for is not None else _NO_PRICE
            outcomes.append(
                replay_series(item, config, price, origin=origin, busy_above=busy_above)
            )
    return BacktestResult(
        outcomes=tuple(outcomes),
        totals=_totals(outcomes),
        busy_above=busy_above,
        poll_interval=config.poll_interval,
    )


def _totals(outcomes: Sequence[InstanceOutcome]) -> Totals:
    saved = [o.saved_usd for o in outcomes if o.saved_usd is not None]
    return Totals(
        instances=len(outcomes),
        polls=sum(o.polls for o in outcomes),
        warnings=sum(o.warnings for o in outcomes),
        warnings_withdrawn=sum(o.warnings_withdrawn for o in outcomes),
        stops=sum(o.stopped_at is not None for o in outcomes),
        interrupted=sum(o.interrupted for o in outcomes),
        never_worked=sum(o.never_worked for o in outcomes),
        never_worked_stopped=sum(o.never_worked and o.stopped_at is not None for o in outcomes),
        idle_tail_hours=sum(o.idle_tail_hours for o in outcomes),
        reclaimed_hours=sum(o.reclaimed_hours for o in outcomes),
        saved_usd=sum(saved) if saved else None,
    )


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def backtest_json(result: BacktestResult) -> dict[str, Any]:
    """The ``--format json`` document's ``totals`` and ``instances``: the names are a contract."""
    totals = result.totals
    return {
        "totals": {
            "instances": totals.instances,
            "stops": totals.stops,
            "warnings": totals.warnings,
            "warnings_withdrawn": totals.warnings_withdrawn,
            "interrupted": totals.interrupted,
            "never_worked": totals.never_worked,
            "never_worked_stopped": totals.never_worked_stopped,
            "idle_tail_hours": _round(totals.idle_tail_hours),
            "reclaimed_hours": _round(totals.reclaimed_hours),
            "saved_usd": _round(totals.saved_usd, 2),
            "reclaimed_fraction": _round(totals.reclaimed_fraction),
        },
        "instances": [
            {
                "instance_id": o.instance_id,
                "instance_type": o.instance_type or None,
                "gpu_count": o.gpu_count,
                "samples": o.samples,
                "started_at": o.started_at.isoformat(),
                "hours": _round(o.hours),
                "hourly_price": o.hourly_price,
                "warnings": o.warnings,
                "stopped_at": o.stopped_at.isoformat() if o.stopped_at else None,
                "stop_reasons": list(o.stop_reasons),
                "idle_tail_hours": _round(o.idle_tail_hours),
                "reclaimed_hours": _round(o.reclaimed_hours),
                "interrupted": o.interrupted,
                "saved_usd": _round(o.saved_usd, 2),
                "reclaimed_fraction": _round(o.reclaimed_fraction),
                "never_worked": o.never_worked,
                "job_running": o.job_running,
            }
            for o in result.outcomes
        ],
    }
