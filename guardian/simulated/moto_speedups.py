"""Make an in-process moto server answer like AWS where it matters: fast, but not instantly.

moto keeps every CloudWatch datum in one list. Its ListMetrics lists a multi-dimension series
once per datum and deduplicates with a pairwise scan (quadratic: 48,000 datums take minutes),
and its GetMetricData and GetMetricStatistics scan every datum for every query and every period.
CloudWatch does neither, so a simulated fleet of thousands with hours of per-minute GPU metrics
is unreadable in stock moto, while against AWS the same reads take seconds. And moto answers in
microseconds where AWS takes tens of milliseconds, which flatters any design that makes many
calls.

``enable()`` fixes both, process-wide, for the in-process ``ThreadedMotoServer``:

- It replaces four methods of moto's ``CloudWatchBackend`` with versions over a per-series index
  ((namespace, metric, dimension set) → times and statistics in compact arrays, sorted by time).
  Requests still go over HTTP through moto's own parsing and serialisation; only the storage
  changes. Kept as moto and AWS have them: the namespace, metric and dimension filters of
  ListMetrics (a filter dimension without a value matches any value) and its pages of 500 with
  NextToken; GetMetricData ``MetricStat`` queries with Maximum, Minimum, Average, Sum and
  SampleCount over periods counted from StartTime, ``ScanBy``, ``ReturnData``, ``Label`` and
  ``Unit``; GetMetricStatistics with the same statistics. As on AWS and unlike stock moto:
  ListMetrics lists each series once, and GetMetricData and GetMetricStatistics match the
  *exact* dimension set (stock moto matches any superset in GetMetricStatistics, and any series
  of the metric in a query without dimensions). Not supported: metric math and Metrics Insights
  expressions (a ValidationError says so), percentiles, and ListMetrics' ``RecentlyActive``
  (moto ignores it too).
- It serves EC2 DescribeInstanceTypes in pages of ``MaxResults`` (at most 100) with a
  NextToken, as AWS does; stock moto ignores MaxResults and answers all ~1,400 types at once,
  about 6 MB of XML that no client of AWS ever has to parse in one piece.
- It delays every AWS API request by ``latency_s`` on the server, in the request's own werkzeug
  thread, before moto handles it. Server side on purpose: the delay sits where AWS's does —
  between a request leaving and its answer arriving, holding a pooled connection — so calls made
  concurrently overlap as they do against AWS, and it applies to every client in every process
  (a ``guardian`` subprocess too) without their cooperation. ``/moto-api/`` calls are not
  delayed.

``put_in_process()`` and ``backdate_in_process()`` seed metrics and launch times straight into
the in-process backends (seeding only: what guardian reads still comes over the wire).
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "backdate_in_process",
    "disable",
    "enable",
    "install",
    "installed",
    "latency_s",
    "offer_only",
    "put_in_process",
    "uninstall",
]

DEFAULT_ACCOUNT = "123456789012"  # moto's account for the simulator's fake credentials
LIST_PAGE = 500  # ListMetrics' page size on AWS (and in moto)
TYPES_PAGE = 100  # DescribeInstanceTypes' largest page on AWS (moto ignores MaxResults)
_STATE_ATTR = "_guardian_metric_index"
_STATS = ("Maximum", "Minimum", "Average", "Sum", "SampleCount")
_lock = threading.Lock()
_originals: dict[str, Any] = {}  # CloudWatchBackend method name → moto's own
_dispatch_original: list[Any] = []  # DomainDispatcherApplication.__call__, once wrapped
_latency = [0.0]  # seconds; a list so the request threads read the current value

SeriesKey = tuple[str, str, tuple[tuple[str, str], ...]]  # namespace, name, sorted dims


def _epoch(moment: datetime) -> float:
    """Seconds since the epoch; moto's request parser hands out naive UTC datetimes."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass
class _Series:
    """One series: its listing entry (a moto datum object), its unit, and its points sorted by
    time as parallel arrays (40 bytes a point: a day of minutes for 10,000 GPUs fits in RAM)."""

    listed: Any
    unit: str | None = None
    times: array[float] = field(default_factory=lambda: array("d"))
    mins: array[float] = field(default_factory=lambda: array("d"))
    maxs: array[float] = field(default_factory=lambda: array("d"))
    sums: array[float] = field(default_factory=lambda: array("d"))
    counts: array[float] = field(default_factory=lambda: array("d"))

    def add(self, at: float, low: float, high: float, total: float, count: float) -> None:
        index = len(self.times)
        if index and at < self.times[-1]:
            index = bisect.bisect_right(self.times, at)
        for column, value in (
            (self.times, at),
            (self.mins, low),
            (self.maxs, high),
            (self.sums, total),
            (self.counts, count),
        ):
            column.insert(index, value)

    def buckets(
        self, start: datetime, end: datetime, period_s: int, stats: Sequence[str]
    ) -> list[tuple[datetime, dict[str, float]]]:
        """The statistics per period from ``start`` (inclusive) to ``end`` (exclusive), oldest
        first, leaving out periods without data."""
        first, last = _epoch(start), _epoch(end)
        low = bisect.bisect_left(self.times, first)
        high = bisect.bisect_left(self.times, last)
        result: list[tuple[datetime, dict[str, float]]] = []
        position = low
        while position < high:
            bucket = int((self.times[position] - first) // period_s)
            stop = bisect.bisect_left(self.times, first + (bucket + 1) * period_s, position, high)
            total, count = sum(self.sums[position:stop]), sum(self.counts[position:stop])
            values = {
                "Maximum": max(self.maxs[position:stop]),
                "Minimum": min(self.mins[position:stop]),
                "Sum": total,
                "SampleCount": count,
                "Average": total / count if count else 0.0,
            }
            at = start + timedelta(seconds=bucket * period_s)
            result.append((at, {stat: values[stat] for stat in stats}))
            position = stop
        return result


@dataclass
class _Index:
    lock: threading.Lock = field(default_factory=threading.Lock)
    series: dict[SeriesKey, _Series] = field(default_factory=dict)


@dataclass(frozen=True)
class _Datapoint:
    """A GetMetricStatistics datapoint, with the attribute names moto's serialiser picks."""

    timestamp: datetime
    unit: str | None
    maximum: float | None = None
    minimum: float | None = None
    average: float | None = None
    sum: float | None = None
    sample_count: float | None = None


def _index(backend: Any) -> _Index:
    """The backend's index, created on first use from whatever moto already stored. moto's
    reset re-creates the backend object, which drops the index with it."""
    state: _Index | None = backend.__dict__.get(_STATE_ATTR)
    if state is not None:
        return state
    with _lock:
        state = backend.__dict__.get(_STATE_ATTR)
        if state is None:
            state = _Index()
            for datum in backend.metric_data:
                dims = [{"Name": d.name, "Value": d.value} for d in datum.dimensions]
                value = getattr(datum, "value", None)
                stat = (
                    (value, value, value, 1.0)
                    if value is not None
                    else (datum.min, datum.max, datum.sum, datum.sample_count)
                )
                series = _series(state, datum.namespace, datum.name, dims, datum.unit)
                series.add(_epoch(datum.timestamp), *stat)
            backend.metric_data = []  # the index now holds them
            backend.__dict__[_STATE_ATTR] = state
    return state


def _series(
    state: _Index,
    namespace: str,
    name: str,
    dims: Sequence[Mapping[str, str]],
    unit: str | None,
) -> _Series:
    from moto.cloudwatch.models import MetricDatum

    key: SeriesKey = (namespace, name, tuple(sorted((d["Name"], d["Value"]) for d in dims)))
    series = state.series.get(key)
    if series is None:
        # Listed with moto's own datum class, so moto serialises it as it always does.
        listed = MetricDatum(namespace, name, 0.0, [dict(d) for d in dims], None)
        series = state.series[key] = _Series(listed)
    if unit:
        series.unit = unit
    return series


def _stats_of(member: Mapping[str, Any]) -> list[tuple[float, float, float, float]]:
    """A PutMetricData member as (min, max, sum, count) entries, counted as moto counts them:
    Value, Values with Counts (a count truncated to a whole number), or StatisticValues."""
    if member.get("Values"):
        counts = member.get("Counts") or [1.0] * len(member["Values"])
        entries = []
        for value, count in zip(member["Values"], counts, strict=False):
            whole = float(int(float(count)))
            if whole > 0:
                entries.append((float(value), float(value), float(value) * whole, whole))
        return entries
    if member.get("StatisticValues"):
        s = member["StatisticValues"]
        return [
            (float(s["Minimum"]), float(s["Maximum"]), float(s["Sum"]), float(s["SampleCount"]))
        ]
    value = float(member.get("Value", 0))
    return [(value, value, value, 1.0)]


def _put_metric_data(self: Any, namespace: str, metric_data: list[dict[str, Any]]) -> None:
    for position, member in enumerate(metric_data):
        self._validate_parameters_put_metric_data(member, position + 1)
    state = _index(self)
    now = time.time()
    with state.lock:
        for member in metric_data:
            series = _series(
                state,
                namespace,
                member["MetricName"],
                member.get("Dimensions") or [],
                member.get("Unit"),
            )
            stamp = member.get("Timestamp")
            at = _epoch(stamp) if stamp else now
            for stat in _stats_of(member):
                series.add(at, *stat)


def _list_metrics(
    self: Any,
    next_token: str | None,
    namespace: str | None,
    metric_name: str | None,
    dimensions: list[dict[str, str]] | None,
) -> tuple[str | None, list[Any]]:
    if next_token:  # moto keeps the remaining pages itself; its own code hands them out
        return _originals["list_metrics"](self, next_token, namespace, metric_name, dimensions)  # type: ignore[no-any-return]
    state = _index(self)
    wanted = [(d["Name"], d.get("Value")) for d in dimensions or []]
    matches = []
    with state.lock:
        for (ns, name, dims), series in state.series.items():
            if (namespace and ns != namespace) or (metric_name and name != metric_name):
                continue
            present = dict(dims)
            if all(n in present and (v is None or present[n] == v) for n, v in wanted):
                matches.append(series.listed)
    # moto's built-in metrics of other services (computed on the fly), filtered as moto does.
    filters = [{"Name": n, "Value": v} for n, v in wanted]
    matches += [d for d in self.aws_metric_data if d.filter(namespace, metric_name, filters)]
    return self._get_paginated(matches)  # type: ignore[no-any-return]


def _exact_series(
    state: _Index, namespace: str, name: str, dims: Iterable[Mapping[str, str]]
) -> _Series | None:
    key = tuple(sorted((d["Name"], d["Value"]) for d in dims))
    return state.series.get((namespace, name, key))


def _get_metric_data(
    self: Any,
    queries: list[dict[str, Any]],
    start_time: datetime,
    end_time: datetime,
    scan_by: str = "TimestampAscending",
) -> list[dict[str, Any]]:
    from moto.cloudwatch.exceptions import ValidationError

    start, end = start_time.replace(microsecond=0), end_time.replace(microsecond=0)
    if start > end:
        raise ValidationError("The parameter EndTime must be greater than StartTime.")
    if start == end:
        raise ValidationError("The parameter StartTime must not equal parameter EndTime.")
    if any("MetricStat" not in q for q in queries):
        raise ValidationError("this simulated CloudWatch answers MetricStat queries only")
    state = _index(self)
    results = []
    for query in queries:
        metric_stat = query["MetricStat"]
        metric, stat = metric_stat["Metric"], metric_stat["Stat"]
        if stat not in _STATS:
            raise ValidationError(f"this simulated CloudWatch does not compute {stat}")
        unit = metric_stat.get("Unit")
        with state.lock:
            series = _exact_series(
                state, metric["Namespace"], metric["MetricName"], metric.get("Dimensions") or []
            )
            found = (
                series.buckets(start, end, int(metric_stat["Period"]), (stat,))
                if series is not None and (not unit or series.unit == unit)
                else []
            )
        if scan_by == "TimestampDescending":
            found.reverse()
        if query.get("ReturnData", True):
            results.append(
                {
                    "id": query["Id"],
                    "label": query.get("Label") or f"{metric['MetricName']} {stat}",
                    "values": [values[stat] for _, values in found],
                    "timestamps": [at for at, _ in found],
                    "status_code": "Complete",
                }
            )
    return results


def _get_metric_statistics(  # noqa: PLR0917 (moto calls it positionally, with its own signature)
    self: Any,
    namespace: str,
    metric_name: str,
    start_time: datetime,
    end_time: datetime,
    period: int,
    stats: list[str],
    dimensions: list[dict[str, str]],
    unit: str | None = None,
) -> list[_Datapoint]:
    from moto.cloudwatch.exceptions import InvalidParameterValue

    start, end = start_time.replace(microsecond=0), end_time.replace(microsecond=0)
    if start >= end:
        raise InvalidParameterValue(
            "The parameter StartTime must be less than the parameter EndTime."
        )
    wanted = [stat for stat in _STATS if stat in stats]
    state = _index(self)
    with state.lock:
        series = _exact_series(state, namespace, metric_name, dimensions or [])
        if series is None or (unit and series.unit != unit):
            return []
        found, series_unit = series.buckets(start, end, period, wanted), series.unit
    return [
        _Datapoint(
            timestamp=at,
            unit=series_unit,
            maximum=values.get("Maximum"),
            minimum=values.get("Minimum"),
            average=values.get("Average"),
            sum=values.get("Sum"),
            sample_count=values.get("SampleCount"),
        )
        for at, values in found
    ]


_REPLACEMENTS = {
    "put_metric_data": _put_metric_data,
    "list_metrics": _list_metrics,
    "get_metric_data": _get_metric_data,
    "get_metric_statistics": _get_metric_statistics,
}


def _describe_instance_types(self: Any) -> Any:
    """moto's DescribeInstanceTypes in pages of ``MaxResults`` (at most 100, as AWS serves
    them) with a NextToken, instead of every type in one ~6 MB answer."""
    from moto.core.responses import ActionResult

    found = self.ec2_backend.describe_instance_types(
        self._get_param("InstanceTypes", []), self._filters_from_querystring()
    )
    size = min(int(self._get_param("MaxResults") or TYPES_PAGE), TYPES_PAGE)
    offset = int(self._get_param("NextToken") or 0)
    result: dict[str, Any] = {"InstanceTypes": found[offset : offset + size]}
    if offset + size < len(found):
        result["NextToken"] = str(offset + size)
    return ActionResult(result)


def _delayed_dispatch(self: Any, environ: dict[str, Any], start_response: Any) -> Any:
    delay = _latency[0]
    if delay > 0 and not str(environ.get("PATH_INFO", "")).startswith("/moto-api"):
        time.sleep(delay)  # releases the GIL: concurrent requests wait side by side
    return _dispatch_original[0](self, environ, start_response)


def enable(*, latency_s: float = 0.0) -> None:
    """Index moto's CloudWatch in this process and delay every AWS request by ``latency_s``
    seconds on the server (0 = none). Idempotent; a later call only changes the latency.
    Metrics already stored are moved into the index when their backend is next used."""
    if latency_s < 0 or not math.isfinite(latency_s):
        raise ValueError("latency_s must be a finite number of seconds, at least 0")
    install()
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    with _lock:
        if not _dispatch_original:
            _dispatch_original.append(DomainDispatcherApplication.__call__)
            DomainDispatcherApplication.__call__ = _delayed_dispatch  # type: ignore[method-assign]
        _latency[0] = latency_s


def disable() -> None:
    """Give moto its own methods back and drop the latency. Indexed data is dropped with the
    index, so reset the server afterwards."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    uninstall()
    with _lock:
        if _dispatch_original:
            DomainDispatcherApplication.__call__ = _dispatch_original.pop()  # type: ignore[method-assign]
        _latency[0] = 0.0


def latency_s() -> float:
    """The simulated round-trip latency now in force, in seconds."""
    return _latency[0]


def install() -> None:
    """Index moto's CloudWatch in this process without touching the latency (idempotent)."""
    from moto.cloudwatch.models import CloudWatchBackend
    from moto.ec2.responses.instances import InstanceResponse

    with _lock:
        if _originals:
            return
        for name, replacement in _REPLACEMENTS.items():
            if not callable(getattr(CloudWatchBackend, name, None)):
                raise RuntimeError(f"this moto has no CloudWatchBackend.{name} to index")
            _originals[name] = getattr(CloudWatchBackend, name)
            setattr(CloudWatchBackend, name, replacement)
        _originals["ec2:describe_instance_types"] = InstanceResponse.describe_instance_types
        InstanceResponse.describe_instance_types = _describe_instance_types  # type: ignore[method-assign]


def uninstall() -> None:
    """Give moto its own CloudWatch methods back (the latency stays as set)."""
    from moto.cloudwatch.models import CloudWatchBackend
    from moto.ec2.responses.instances import InstanceResponse

    with _lock:
        for name, original in _originals.items():
            if name == "ec2:describe_instance_types":
                InstanceResponse.describe_instance_types = original  # type: ignore[method-assign]
            else:
                setattr(CloudWatchBackend, name, original)
        _originals.clear()


def installed() -> bool:
    return bool(_originals)


def _backend(region: str, account_id: str) -> Any:
    if not installed():
        raise RuntimeError("seeding in process needs the indexed store: call enable() first")
    from moto.cloudwatch.models import cloudwatch_backends

    return cloudwatch_backends[account_id][region]


def put_in_process(
    region: str,
    datums: Iterable[Mapping[str, Any]],
    namespace: str,
    account_id: str = DEFAULT_ACCOUNT,
) -> int:
    """Store PutMetricData members directly in the in-process server's indexed backend,
    without HTTP; returns how many were stored."""
    members = [dict(d) for d in datums]
    _put_metric_data(_backend(region, account_id), namespace, members)
    return len(members)


def backdate_in_process(
    region: str,
    instance_ids: Iterable[str],
    launched_at: datetime,
    account_id: str = DEFAULT_ACCOUNT,
) -> None:
    """Set the LaunchTime of instances in the in-process server directly (no HTTP call per
    instance, which matters for thousands)."""
    from moto.ec2.models import ec2_backends

    backend = ec2_backends[account_id][region]
    stamp = launched_at.astimezone(UTC).replace(microsecond=0, tzinfo=None)  # moto's naive UTC
    for instance_id in instance_ids:
        backend.get_instance(instance_id).launch_time = stamp


def offer_only(types: set[str]) -> None:
    """The simulated cloud offers only these instance types: moto's DescribeInstanceTypes and
    its offerings shrink to them, so a client learns the GPU types in a few calls instead of 14
    pages of 100. Process-wide and for good (moto's module-level tables): for a server process
    of its own."""
    from moto.ec2.models import instance_types

    for name in [n for n in instance_types.INSTANCE_TYPES if n not in types]:
        del instance_types.INSTANCE_TYPES[name]
    backend = instance_types.InstanceTypeBackend
    backend.instance_types = [t for t in backend.instance_types if t["InstanceType"] in types]
    for regions in instance_types.INSTANCE_TYPE_OFFERINGS.values():
        for region, offers in regions.items():
            regions[region] = [o for o in offers if o.get("InstanceType") in types]
