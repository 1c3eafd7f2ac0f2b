"""A generated serving fleet shaped like the Alibaba Stable-Diffusion trace, for tests.

The real trace (``alibaba-sd-serving-2026.csv.gz``) may not be copied into the repository
(research use only), and a clone has only what the repository holds; ``bench/backtest.py``
replays the real one where it is present beside the checkout. This fleet keeps what makes it
the hard case for false stops: every pod holds its model's ~24 GiB of GPU memory all day,
requests come in bursts of a few minutes, and the gaps between them are mostly short but
long-tailed (median about 2 minutes, 1 in 200 between one and a half and four hours). A third of
the pods lose their traffic for the last hours of the day (the idle tail a stop may reclaim), and
a few never serve at all.

Deterministic: the same seed gives the same fleet on every machine.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from guardian.backtest.trace import TraceSeries, series_from_points
from guardian.model import GpuInstance

__all__ = ["serving_series"]

STEP = timedelta(seconds=57)  # the Alibaba trace's sampling step
MODEL_MIB = 24_000.0


def _gap_minutes(rng: random.Random) -> float:
    """An idle gap between bursts: mostly minutes, sometimes an hour, rarely five."""
    draw = rng.random()
    if draw < 0.72:
        return rng.expovariate(1 / 2.5)
    if draw < 0.94:
        return rng.uniform(5, 20)
    if draw < 0.995:
        return rng.uniform(20, 70)
    return rng.uniform(90, 230)


def _pod_utilisation(rng: random.Random, steps: int, tail_steps: int) -> list[float]:
    """Per step: bursts of 20-90 % between long-tailed idle gaps, then ``tail_steps`` idle."""
    values: list[float] = []
    busy_until = steps - tail_steps
    while len(values) < busy_until:
        values += [rng.uniform(20, 90) for _ in range(rng.randint(1, 8))]
        gap = round(_gap_minutes(rng) * 60 / STEP.total_seconds())
        values += [rng.uniform(0, 3) for _ in range(gap)]
    values = values[:busy_until]
    return values + [rng.uniform(0, 3) for _ in range(steps - len(values))]


def serving_series(
    pods: int = 36, *, seed: int = 11, hours: float = 23.0, never_serving: int = 6
) -> list[TraceSeries]:
    """``pods`` serving pods plus ``never_serving`` that only hold memory, one GPU each.

    The never-serving pods live from 40 minutes to six hours: the long-lived ones are what a
    stop must catch; the short ones end before window + grace and cannot be.
    """
    rng = random.Random(f"serving/{seed}")
    start = datetime(1970, 1, 2, tzinfo=UTC)  # any instant: the replay has its own clock
    day = round(hours * 3600 / STEP.total_seconds())
    series = []
    for number in range(pods + never_serving):
        began = rng.randint(0, day // 8)
        if number < pods:
            tail = round(rng.uniform(2, 8) * 3600 / STEP.total_seconds()) if number % 3 == 0 else 0
            util = _pod_utilisation(rng, day - began, tail)
        else:
            life = round(rng.choice((40, 70, 150, 240, 300, 360)) * 60 / STEP.total_seconds())
            util = [rng.uniform(0, 2) for _ in range(life)]
        times = [start + (began + step) * STEP for step in range(len(util))]
        instance = GpuInstance(
            provider="aws",
            account="serving",
            region="us-east-1",
            zone="",
            instance_id=f"pod{number:03d}",
            instance_type="",
            launch_time=times[0],
            gpu_count=1,
        )
        mem = {at: MODEL_MIB + rng.uniform(-50, 50) for at in times}
        series.append(
            series_from_points(instance, {"0": dict(zip(times, util, strict=True))}, {"0": mem})
        )
    return series
