"""Pure helpers over GPU time series: reduce per-GPU series to per-instance samples, summarise
each GPU (p95 utilisation, peak memory), sparklines."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta

from guardian.model import GpuSample, GpuSummary

__all__ = ["percentile", "reduce_gpu_series", "sparkline_values", "summarise_gpus"]

Points = Sequence[tuple[datetime, float]]


def reduce_gpu_series(
    util_by_gpu: Mapping[str, Points],
    mem_by_gpu: Mapping[str, Points] | None = None,
    expected_gpus: int | None = None,
) -> tuple[GpuSample, ...]:
    """Per-timestamp max over an instance's GPUs, oldest first.

    A timestamp at which fewer GPUs reported than the instance has (``expected_gpus``, else the
    number of series seen) is marked incomplete: its max may miss the one GPU that was working.
    Memory is the max over GPUs, known only when every reporting GPU also reported memory.
    """
    expected = max(expected_gpus or 0, len(util_by_gpu))
    util_at: dict[datetime, list[float]] = {}
    for points in util_by_gpu.values():
        for at, value in points:
            if _is_reading(value):
                util_at.setdefault(at, []).append(value)
    mem_at: dict[datetime, list[float]] = {}
    for points in (mem_by_gpu or {}).values():
        for at, value in points:
            if _is_reading(value):
                mem_at.setdefault(at, []).append(value)
    samples = []
    for at in sorted(util_at):
        values = util_at[at]
        mems = mem_at.get(at, [])
        samples.append(
            GpuSample(
                at=at,
                gpu_util_pct=max(values),
                mem_used_mib=max(mems) if mems and len(mems) >= len(values) else None,
                complete=len(values) >= expected,
            )
        )
    return tuple(samples)


def _is_reading(value: float) -> bool:
    """A NaN, an infinity or a negative number from an API is a GPU that did not report: kept,
    NaN would make ``max`` depend on the order (``max([0, nan])`` is 0, a working GPU hidden)
    and a negative utilisation would look idler than idle."""
    return isinstance(value, int | float) and math.isfinite(value) and value >= 0


def percentile(values: Iterable[float], pct: float) -> float | None:
    """The nearest-rank percentile of the finite values (a value that occurred, never an
    interpolation between two); None when there are none."""
    ordered = sorted(v for v in values if math.isfinite(v))
    if not ordered:
        return None
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _gpu_order(label: str) -> tuple[int, int | str]:
    return (0, int(label)) if label.isdigit() else (1, label)


def summarise_gpus(
    util_by_gpu: Mapping[str, Points],
    mem_by_gpu: Mapping[str, Points] | None = None,
    *,
    util_pct: float = 95.0,
) -> tuple[GpuSummary, ...]:
    """Each GPU's p95 utilisation and peak memory over its whole series, in GPU order.

    Computed beside ``reduce_gpu_series`` from the same per-GPU points, so that right-sizing
    knows which GPUs worked without anyone keeping the per-GPU series.
    """
    memory = mem_by_gpu or {}
    summaries = []
    for gpu in sorted(util_by_gpu, key=_gpu_order):
        utils = [value for _, value in util_by_gpu[gpu]]
        mems = [value for _, value in memory.get(gpu, ()) if math.isfinite(value)]
        summaries.append(
            GpuSummary(
                gpu=gpu,
                util_p95_pct=percentile(utils, util_pct),
                mem_peak_mib=max(mems) if mems else None,
                samples=sum(1 for value in utils if math.isfinite(value)),
            )
        )
    return tuple(summaries)


def sparkline_values(
    samples: Sequence[GpuSample], now: datetime, period_s: int, minutes: int = 60
) -> tuple[float | None, ...]:
    """The last ``minutes`` of utilisation in at most 30 buckets (max per bucket); None = gap."""
    bucket_s = max(period_s, minutes * 60 // 30)  # 30 characters: one per two minutes
    buckets = max(1, minutes * 60 // bucket_s)
    start = now - timedelta(seconds=buckets * bucket_s)
    values: list[float | None] = [None] * buckets
    for sample in samples:
        if sample.at < start or sample.at > now:
            continue
        index = min(buckets - 1, int((sample.at - start).total_seconds() // bucket_s))
        current = values[index]
        values[index] = (
            sample.gpu_util_pct if current is None else max(current, sample.gpu_util_pct)
        )
    return tuple(values)
