"""Pure helpers over GPU time series: reduce per-GPU series to per-instance samples, sparklines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from guardian.model import GpuSample

__all__ = ["reduce_gpu_series", "sparkline_values"]

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
            util_at.setdefault(at, []).append(value)
    mem_at: dict[datetime, list[float]] = {}
    for points in (mem_by_gpu or {}).values():
        for at, value in points:
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
