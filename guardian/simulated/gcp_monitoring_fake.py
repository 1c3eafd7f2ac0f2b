"""A gRPC fake of Cloud Monitoring's ``MetricService.ListTimeSeries``.

It speaks the real protocol to the real ``google-cloud-monitoring`` client and implements what
guardian relies on, strictly enough that a wrong query fails:

- the filter: ``field = "value"`` clauses joined by ``AND`` over ``metric.type`` (exactly one),
  ``resource.type`` and ``metric.labels.*`` / ``resource.labels.*``; anything else is
  INVALID_ARGUMENT;
- the interval (``start_time`` exclusive, ``end_time`` inclusive) and per-series alignment
  (``ALIGN_MAX``/``MIN``/``MEAN``/``SUM``/``COUNT`` over ``alignment_period``, aligned to the
  interval's end, as Monitoring does); cross-series reducers are UNIMPLEMENTED on purpose —
  guardian reduces GPUs itself;
- paging (``page_size``, ``next_page_token``) and newest-first points;
- faults per project or metric type.

Every request is recorded in ``FakeMonitoringState.queries``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from guardian.simulated.gcp_grpc import FakeGrpcServer, unary

__all__ = [
    "FakeMonitoringServer",
    "FakeMonitoringState",
    "FakeTimeSeries",
    "PointSource",
    "RecordedQuery",
]

Points = Sequence[tuple[datetime, float]]
# Fixed points, or a function of the requested (start, end] that makes them (the demo's live
# traces, which stay current however long it runs).
PointSource = Points | Callable[[datetime, datetime], Points]


@dataclass
class FakeTimeSeries:
    project: str
    metric_type: str
    resource_labels: dict[str, str]  # instance_id, zone, project_id
    metric_labels: dict[str, str]  # gpu_number, uuid, model, memory_state
    points: PointSource
    value_type: Literal["DOUBLE", "INT64"] = "DOUBLE"
    unit: str = ""
    resource_type: str = "gce_instance"

    def points_between(self, start: datetime, end: datetime) -> list[tuple[datetime, float]]:
        source = self.points(start, end) if callable(self.points) else self.points
        return [(at, value) for at, value in source if start < at <= end]


@dataclass(frozen=True)
class RecordedQuery:
    project: str
    filter: str
    start: datetime
    end: datetime
    alignment_period_s: int
    aligner: str
    reducer: str
    group_by: tuple[str, ...]
    view: str
    page_size: int
    page_token: str


@dataclass
class FakeMonitoringState:
    series: list[FakeTimeSeries] = field(default_factory=list)
    page_size: int = 100  # series per page, the server's own cap
    fail_projects: dict[str, tuple[str, str]] = field(default_factory=dict)  # → (StatusCode, msg)
    fail_metrics: dict[str, tuple[str, str]] = field(default_factory=dict)
    queries: list[RecordedQuery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def first_pages(self) -> list[RecordedQuery]:
        """One entry per ListTimeSeries call as the caller made it (page tokens excluded)."""
        return [q for q in self.queries if not q.page_token]


_CLAUSE = re.compile(r'^\s*([a-z_.]+(?:\."?[\w-]+"?)?)\s*=\s*"([^"]*)"\s*$')


class _Abort(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_filter(text: str) -> dict[str, str]:
    """``a = "x" AND b = "y"`` → {a: x, b: y}; INVALID_ARGUMENT for anything else."""
    clauses: dict[str, str] = {}
    for part in re.split(r"\s+AND\s+", text.strip()):
        match = _CLAUSE.match(part)
        if not match:
            raise _Abort("INVALID_ARGUMENT", f"Could not parse filter clause: {part!r}")
        key, value = match.groups()
        key = key.replace('"', "").replace(".label.", ".labels.")
        if not (
            key in ("metric.type", "resource.type")
            or key.startswith(("metric.labels.", "resource.labels."))
        ):
            raise _Abort("INVALID_ARGUMENT", f"Unsupported filter field: {key}")
        clauses[key] = value
    if "metric.type" not in clauses:
        raise _Abort("INVALID_ARGUMENT", "A filter must name exactly one metric.type")
    return clauses


def _selected(series: FakeTimeSeries, clauses: Mapping[str, str]) -> bool:
    for key, value in clauses.items():
        if key == "metric.type":
            actual: str | None = series.metric_type
        elif key == "resource.type":
            actual = series.resource_type
        elif key.startswith("metric.labels."):
            actual = series.metric_labels.get(key.removeprefix("metric.labels."))
        else:
            actual = series.resource_labels.get(key.removeprefix("resource.labels."))
        if actual != value:
            return False
    return True


_ALIGNERS: dict[str, Callable[[list[float]], float]] = {
    "ALIGN_MAX": max,
    "ALIGN_MIN": min,
    "ALIGN_MEAN": lambda values: sum(values) / len(values),
    "ALIGN_SUM": sum,
    "ALIGN_COUNT": lambda values: float(len(values)),
}


def _align(
    points: list[tuple[datetime, float]], end: datetime, period: timedelta, aligner: str
) -> list[tuple[datetime, float]]:
    if aligner == "ALIGN_NONE":
        return points
    buckets: dict[int, list[float]] = {}
    for at, value in points:
        # Bucket k holds (end - (k+1)·period, end - k·period] and is stamped at its end.
        buckets.setdefault((end - at) // period, []).append(value)
    reduce = _ALIGNERS[aligner]
    return [(end - k * period, reduce(values)) for k, values in buckets.items()]


class _MetricService:
    def __init__(self, state: FakeMonitoringState) -> None:
        self.state = state

    def list_time_series(self, request: Any, context: Any) -> Any:
        import grpc

        try:
            return self._list(request)
        except _Abort as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), exc.message)  # raises
            raise

    def _list(self, request: Any) -> Any:
        from google.cloud import monitoring_v3

        state = self.state
        project = request.name.removeprefix("projects/")
        aggregation = request.aggregation
        aligner = monitoring_v3.Aggregation.Aligner(aggregation.per_series_aligner).name
        reducer = monitoring_v3.Aggregation.Reducer(aggregation.cross_series_reducer).name
        period = aggregation.alignment_period
        start, end = request.interval.start_time, request.interval.end_time
        with state.lock:
            state.queries.append(
                RecordedQuery(
                    project=project,
                    filter=request.filter,
                    start=start,
                    end=end,
                    alignment_period_s=int(period.total_seconds()),
                    aligner=aligner,
                    reducer=reducer,
                    group_by=tuple(aggregation.group_by_fields),
                    view=request.view.name,
                    page_size=request.page_size,
                    page_token=request.page_token,
                )
            )
            failure = state.fail_projects.get(project)
            if failure is None:
                clauses = parse_filter(request.filter)
                failure = state.fail_metrics.get(clauses["metric.type"])
            if failure is not None:
                raise _Abort(*failure)
            if reducer != "REDUCE_NONE":
                raise _Abort("UNIMPLEMENTED", "the fake implements no cross-series reducer")
            if aligner not in _ALIGNERS and aligner != "ALIGN_NONE":
                raise _Abort("UNIMPLEMENTED", f"the fake does not implement {aligner}")
            if aligner != "ALIGN_NONE" and period.total_seconds() < 1:
                raise _Abort("INVALID_ARGUMENT", "alignment_period is required with an aligner")
            if not start or not end or start >= end:
                raise _Abort("INVALID_ARGUMENT", "the interval needs start_time < end_time")
            matching = [s for s in state.series if s.project == project and _selected(s, clauses)]
        size = min(state.page_size, request.page_size or state.page_size)
        offset = int(request.page_token or 0)
        page = matching[offset : offset + size]
        response = monitoring_v3.ListTimeSeriesResponse(
            time_series=[
                self._series(
                    s, start=start, end=end, period=period, aligner=aligner, request=request
                )
                for s in page
            ]
        )
        if offset + size < len(matching):
            response.next_page_token = str(offset + size)
        return response

    @staticmethod
    def _series(
        series: FakeTimeSeries,
        *,
        start: datetime,
        end: datetime,
        period: timedelta,
        aligner: str,
        request: Any,
    ) -> Any:
        from google.api import metric_pb2, monitored_resource_pb2
        from google.cloud import monitoring_v3

        points = _align(series.points_between(start, end), end, period, aligner)
        points.sort(reverse=True)  # Monitoring returns the newest point first
        headers_only = request.view == monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.HEADERS
        result = monitoring_v3.TimeSeries(
            metric=metric_pb2.Metric(type=series.metric_type, labels=series.metric_labels),
            resource=monitored_resource_pb2.MonitoredResource(
                type=series.resource_type, labels=series.resource_labels
            ),
            metric_kind=metric_pb2.MetricDescriptor.MetricKind.Value("GAUGE"),
            value_type=metric_pb2.MetricDescriptor.ValueType.Value(series.value_type),
            unit=series.unit,
        )
        if not headers_only:
            for at, value in points:
                typed = (
                    monitoring_v3.TypedValue(int64_value=round(value))
                    if series.value_type == "INT64"
                    else monitoring_v3.TypedValue(double_value=value)
                )
                result.points.append(
                    monitoring_v3.Point(
                        interval=monitoring_v3.TimeInterval(end_time=at), value=typed
                    )
                )
        return result


class FakeMonitoringServer(FakeGrpcServer):
    """The MetricService fake on a free local port."""

    def __init__(
        self, state: FakeMonitoringState | None = None, interceptors: Sequence[Any] = ()
    ) -> None:
        from google.cloud import monitoring_v3

        self.state = state or FakeMonitoringState()
        service = _MetricService(self.state)
        super().__init__(
            "google.monitoring.v3.MetricService",
            {
                "ListTimeSeries": unary(
                    service.list_time_series,
                    monitoring_v3.ListTimeSeriesRequest,
                    monitoring_v3.ListTimeSeriesResponse,
                )
            },
            interceptors=interceptors,
        )
