"""GPU time series from Cloud Monitoring: one paged ``ListTimeSeries`` per project and metric.

The query is the same for every VM of a project — filtered on the metric type and
``resource.type = "gce_instance"``, aligned with ``ALIGN_MAX`` over ``gcp.metrics.period`` — and
returns one series per VM and GPU (labels ``gpu_number`` / ``uuid``). We keep the per-GPU series
and reduce them ourselves (``guardian.series.reduce_gpu_series``): a cross-series reducer on
Google's side would hide which GPUs reported, and an instance whose GPU is silent must not look
idle.

Per-instance series (``GcpInstanceSeriesSpec``: host CPU, the agent's local-disk and notebook
signals) are one more query per project and metric, read the same way — narrowed by the spec's
metric labels (the Ops Agent's memory is one series per ``state``) and aligned at the spec's
own period where it has one; they are optional, so a failed one leaves only that series out.

Units: the Ops Agent reports utilisation in percent, the DCGM receiver as a fraction (unit
``1``); memory arrives in bytes and is converted to MiB.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import structlog

from guardian.model import GpuInstance, GpuUtilisation, InstanceMetric, Point
from guardian.providers.gcp.errors import map_google_error
from guardian.series import reduce_gpu_series, summarise_gpus

__all__ = [
    "NOTEBOOK_IDLE_METRIC_TYPE",
    "GcpInstanceSeriesSpec",
    "MetricKind",
    "ProjectSeries",
    "build_request",
    "fetch_project_series",
    "metric_filter",
    "utilisation_for",
]

MetricKind = Literal["util", "mem", "instance"]
Points = list[tuple[datetime, float]]
# instance id → GPU key → points
SeriesByInstance = dict[str, dict[str, Points]]

log = structlog.get_logger(__name__)

_MIB = 1024 * 1024
_MEMORY_UNITS = {"By": 1 / _MIB, "KiBy": 1 / 1024, "MiBy": 1.0, "GiBy": 1024.0, "": 1 / _MIB}


# The agent's notebook signal (guardian.agent.notebook), on the gce_instance resource.
NOTEBOOK_IDLE_METRIC_TYPE = "custom.googleapis.com/guardian/notebook/idle_seconds"


@dataclass(frozen=True)
class GcpInstanceSeriesSpec:
    """One per-instance series in Cloud Monitoring (``resource.type = "gce_instance"``)."""

    key: InstanceMetric
    metric_type: str
    scale: float = 1.0  # Monitoring's unit → guardian's
    labels: tuple[tuple[str, str], ...] = ()  # metric.labels.NAME = "VALUE" clauses
    period_s: int | None = None  # alignment period; None: gcp.metrics.period


def memory_state_label(metric_type: str) -> str:
    """The label that splits GPU memory into used/free/reserved, by the metric's schema."""
    # The Ops Agent's nvml receiver names it memory_state; the DCGM receiver names it state.
    return "state" if "dcgm" in metric_type else "memory_state"


def metric_filter(
    metric_type: str, kind: MetricKind, labels: Sequence[tuple[str, str]] = ()
) -> str:
    """The Monitoring filter for one metric of every GCE instance in a project."""
    parts = [f'metric.type = "{metric_type}"', 'resource.type = "gce_instance"']
    if kind == "mem":
        parts.append(f'metric.labels.{memory_state_label(metric_type)} = "used"')
    parts += [f'metric.labels.{name} = "{value}"' for name, value in labels]
    return " AND ".join(parts)


def build_request(
    project: str,
    metric_type: str,
    kind: MetricKind,
    *,
    start: datetime,
    end: datetime,
    period_s: int,
    labels: Sequence[tuple[str, str]] = (),
) -> Any:
    from google.cloud import monitoring_v3

    return monitoring_v3.ListTimeSeriesRequest(
        name=f"projects/{project}",
        filter=metric_filter(metric_type, kind, labels),
        interval=monitoring_v3.TimeInterval(start_time=start, end_time=end),
        aggregation=monitoring_v3.Aggregation(
            alignment_period=timedelta(seconds=period_s),
            per_series_aligner=monitoring_v3.Aggregation.Aligner.ALIGN_MAX,
        ),
        view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
    )


@dataclass
class ProjectSeries:
    """One metric of one project: the series per VM and GPU, and how many pages it took."""

    by_instance: SeriesByInstance = field(default_factory=dict)
    pages: int = 0
    # instance id → points that were no reading (NaN, infinite, negative, outside the asked
    # interval, not a number): they say why a VM whose series held nothing else is unmeasured.
    unusable: dict[str, int] = field(default_factory=dict)
    without_instance: int = 0  # series that name no instance_id: nobody's


def _scale(unit: str, metric_type: str, kind: MetricKind) -> float:
    if kind == "instance":
        return 1.0  # the spec's own scale applies
    if kind == "mem":
        return _MEMORY_UNITS.get(unit, 1 / _MIB)
    if unit == "1" or (not unit and "dcgm" in metric_type):
        return 100.0  # a fraction of time busy → percent
    return 1.0


def _gpu_key(labels: Mapping[str, str]) -> str:
    return labels.get("gpu_number") or labels.get("uuid") or "0"


def fetch_project_series(
    client: Any,
    project: str,
    metric_type: str,
    kind: MetricKind,
    *,
    start: datetime,
    end: datetime,
    period_s: int,
    retry: Any,
    timeout_s: float,
    labels: Sequence[tuple[str, str]] = (),
) -> ProjectSeries:
    """Every VM's per-GPU series of one metric in one project. Raises ProviderError."""
    request = build_request(
        project, metric_type, kind, start=start, end=end, period_s=period_s, labels=labels
    )
    result = ProjectSeries()
    # instance id → GPU key → time → value; a dict so a GPU seen under two series (the agent
    # restarted with a new label set) keeps the larger reading, as ALIGN_MAX would have.
    collected: dict[str, dict[str, dict[datetime, float]]] = {}
    times: dict[int, datetime] = {}
    window = (int(start.timestamp()), int(end.timestamp()))
    try:
        from google.cloud import monitoring_v3

        pager = client.list_time_series(request=request, retry=retry, timeout=timeout_s)
        for page in pager.pages:
            result.pages += 1
            # The raw protobuf, not proto-plus wrappers: a day of minutes for a few hundred
            # GPUs is about a million points, 20x faster to read this way.
            raw = monitoring_v3.ListTimeSeriesResponse.pb(page)
            for series in raw.time_series:
                _add_series(
                    collected, series, metric_type, kind, times, window=window, result=result
                )
    except Exception as exc:
        raise map_google_error(exc, f"monitoring.listTimeSeries {metric_type}") from exc
    # Monitoring returns the newest point first; we keep series oldest first. A GPU none of
    # whose points was a reading did not report: it is left out, not counted as reporting.
    result.by_instance = {
        instance_id: {gpu: sorted(points.items()) for gpu, points in gpus.items() if points}
        for instance_id, gpus in collected.items()
    }
    result.by_instance = {k: v for k, v in result.by_instance.items() if v}
    if result.without_instance or result.unusable:
        log.warning(
            "gcp_series_points_dropped",
            project=project,
            metric=metric_type,
            series_without_instance_id=result.without_instance,
            unusable_points=sum(result.unusable.values()),
        )
    return result


def _add_series(
    into: dict[str, dict[str, dict[datetime, float]]],
    series: Any,
    metric_type: str,
    kind: MetricKind,
    times: dict[int, datetime],
    *,
    window: tuple[int, int],  # the asked interval, in epoch seconds
    result: ProjectSeries,
) -> None:
    """One raw ``TimeSeries`` into ``into``; ``times`` shares datetimes across series.

    Only readings count: a NaN, an infinity or a negative number, a point after the end of the
    asked interval (a clock ahead, or a hostile answer: it would stand for "now" and could
    outvote the real last minutes), and a value that is not a number
    (bool, string, distribution) are counted in ``result.unusable``, never guessed at.
    """
    instance_id = series.resource.labels.get("instance_id")
    if not instance_id:
        result.without_instance += 1
        return
    scale = _scale(series.unit, metric_type, kind)
    points = into.setdefault(instance_id, {}).setdefault(_gpu_key(series.metric.labels), {})
    last = window[1]
    unusable = 0
    for point in series.points:
        typed = point.value
        which = typed.WhichOneof("value")
        stamp = point.interval.end_time
        if which == "double_value":
            value = typed.double_value * scale
        elif which == "int64_value":
            value = typed.int64_value * scale
        else:
            value = math.nan
        if not (math.isfinite(value) and value >= 0 and stamp.seconds <= last):
            unusable += 1
            continue
        # Aligned points fall on whole seconds; nanoseconds would only split one minute in two.
        at = times.get(stamp.seconds)
        if at is None:
            at = times[stamp.seconds] = datetime.fromtimestamp(stamp.seconds, UTC)
        previous = points.get(at)
        points[at] = value if previous is None else max(previous, value)
    if unusable:
        result.unusable[instance_id] = result.unusable.get(instance_id, 0) + unusable


def utilisation_for(
    instance: GpuInstance,
    util: ProjectSeries | Exception,
    mem: ProjectSeries | Exception | None,
    metric_type: str,
    period_s: int,
    *,
    instance_results: Mapping[GcpInstanceSeriesSpec, ProjectSeries | Exception] | None = None,
) -> GpuUtilisation:
    """One VM's GpuUtilisation from its project's query results (or their failure)."""
    if isinstance(util, Exception):
        return GpuUtilisation(
            period_s=period_s, error=f"Cloud Monitoring query failed: {util}", fetch_failed=True
        )
    if isinstance(mem, Exception):  # unread, not absent: it could withdraw a warning wrongly
        return GpuUtilisation(
            period_s=period_s,
            error=f"Cloud Monitoring memory query failed: {mem}",
            fetch_failed=True,
        )
    util_by_gpu = util.by_instance.get(instance.instance_id)
    unusable = util.unusable.get(instance.instance_id, 0)
    if not util_by_gpu and unusable:
        return GpuUtilisation(
            period_s=period_s,
            error=(
                f"none of the {unusable} points of its {metric_type} series was a reading "
                "(NaN, infinite, negative, in the future or not a number)"
            ),
        )
    if not util_by_gpu:
        return GpuUtilisation(
            period_s=period_s,
            error=(
                f"no {metric_type} series for this VM: the Ops Agent (with GPU metrics) is not "
                "installed or not reporting; install it, or run `guardian agent` on the VM"
            ),
        )
    mem_by_gpu: Mapping[str, Sequence[tuple[datetime, float]]] | None = None
    if isinstance(mem, ProjectSeries):
        mem_by_gpu = mem.by_instance.get(instance.instance_id)
    samples = reduce_gpu_series(util_by_gpu, mem_by_gpu, expected_gpus=instance.gpu_count)
    return GpuUtilisation(
        samples=samples,
        period_s=period_s,
        gpus_reporting=len(util_by_gpu),
        instance_series=_instance_series(instance, instance_results or {}),
        gpus=summarise_gpus(util_by_gpu, mem_by_gpu),
    )


def _instance_series(
    instance: GpuInstance,
    results: Mapping[GcpInstanceSeriesSpec, ProjectSeries | Exception],
) -> dict[InstanceMetric, tuple[Point, ...]]:
    """The VM's per-instance series; several series of one metric merge, the max per time."""
    found: dict[InstanceMetric, tuple[Point, ...]] = {}
    for spec, result in results.items():
        if isinstance(result, Exception):
            continue
        merged: dict[datetime, float] = {}
        for points in result.by_instance.get(instance.instance_id, {}).values():
            for at, value in points:
                merged[at] = max(value, merged.get(at, value))
        if merged:
            found[spec.key] = tuple((at, v * spec.scale) for at, v in sorted(merged.items()))
    return found
