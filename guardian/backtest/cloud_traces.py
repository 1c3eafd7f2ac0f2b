"""The fleet's own GPU history, pulled through the providers, as series for the backtest.

Only the ``Provider`` protocol is used (discover, then utilisation over the window), so the same
code serves CloudWatch and Cloud Monitoring. The window is fetched one day at a time: that is the
range the daemon asks for every cycle, which every provider batches to its API's limits, and a
failed day leaves a hole in one instance's series instead of losing the whole pull.

Only instances running now are discovered: the history of machines already stopped or
terminated is not replayed (the clouds do not list them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from guardian.backtest.trace import TraceSeries
from guardian.model import GpuInstance, GpuSample, InstanceMetric, Point
from guardian.providers import Provider, UnitError

__all__ = ["CHUNK", "CloudHistory", "history_from_providers"]

CHUNK = timedelta(days=1)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class CloudHistory:
    series: tuple[TraceSeries, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (instance key, why it has no series)
    partial: tuple[tuple[str, str], ...] = ()  # (instance key, why some days are missing)
    errors: tuple[UnitError, ...] = ()  # units that could not be listed


def _chunks(start: datetime, end: datetime, size: timedelta) -> list[tuple[datetime, datetime]]:
    spans = []
    cursor = start
    while cursor < end:
        upper = min(cursor + size, end)
        spans.append((cursor, upper))
        cursor = upper
    return spans


def _provider_history(
    provider: Provider,
    instances: Sequence[GpuInstance],
    spans: Sequence[tuple[datetime, datetime]],
) -> tuple[list[TraceSeries], list[tuple[str, str]], list[tuple[str, str]]]:
    samples: dict[str, dict[datetime, GpuSample]] = {i.key: {} for i in instances}
    # The per-instance series (the notebook signal) too, so the replay sees what the daemon saw.
    extra: dict[str, dict[InstanceMetric, dict[datetime, float]]] = {i.key: {} for i in instances}
    periods: dict[str, int] = {}
    failures: dict[str, list[str]] = {i.key: [] for i in instances}
    for lower, upper in spans:
        fetched = dict(provider.utilisation(instances, lower, upper))
        for instance in instances:
            utilisation = fetched.get(instance.key)
            if utilisation is None or utilisation.error:
                why = utilisation.error if utilisation else "no entry from the provider"
                failures[instance.key].append(f"{lower:%Y-%m-%d}: {why}")
                continue
            periods.setdefault(instance.key, utilisation.period_s)
            for sample in utilisation.samples:  # chunk edges may repeat a timestamp
                samples[instance.key][sample.at] = sample
            for metric, points in utilisation.instance_series.items():
                extra[instance.key].setdefault(metric, {}).update(points)
    series: list[TraceSeries] = []
    skipped: list[tuple[str, str]] = []
    partial: list[tuple[str, str]] = []
    for instance in instances:
        found = samples[instance.key]
        if not found:
            why = failures[instance.key][-1] if failures[instance.key] else "no GPU samples"
            skipped.append((instance.key, why))
            continue
        if failures[instance.key]:
            partial.append((instance.key, "; ".join(failures[instance.key])))
        ordered = tuple(found[at] for at in sorted(found))
        others: dict[InstanceMetric, tuple[Point, ...]] = {
            metric: tuple(sorted(points.items())) for metric, points in extra[instance.key].items()
        }
        series.append(
            TraceSeries(instance, ordered, periods.get(instance.key, 60), instance_series=others)
        )
    return series, skipped, partial


def history_from_providers(
    providers: Sequence[Provider],
    start: datetime,
    end: datetime,
    *,
    chunk: timedelta = CHUNK,
    progress: Progress | None = None,
) -> CloudHistory:
    """Every discovered GPU instance's samples in ``[start, end]``, oldest first."""
    series: list[TraceSeries] = []
    skipped: list[tuple[str, str]] = []
    partial: list[tuple[str, str]] = []
    errors: list[UnitError] = []
    spans = _chunks(start, end, chunk)
    for provider in providers:
        if progress:
            progress(f"{provider.name}: discovering GPU instances")
        discovery = provider.discover()
        errors.extend(discovery.errors)
        if not discovery.instances:
            continue
        if progress:
            progress(
                f"{provider.name}: reading {len(spans)} day(s) of GPU metrics for "
                f"{len(discovery.instances)} instances"
            )
        found, missing, holes = _provider_history(provider, discovery.instances, spans)
        series.extend(found)
        skipped.extend(missing)
        partial.extend(holes)
    series.sort(key=lambda s: s.instance.key)
    return CloudHistory(tuple(series), tuple(skipped), tuple(partial), tuple(errors))
