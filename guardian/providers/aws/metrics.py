"""Read the CloudWatch agent's per-GPU metrics for many instances in few calls.

The agent's ``nvidia_gpu`` plugin publishes one series per GPU with the dimensions
``InstanceId``, ``index`` and ``name`` (plus whatever ``append_dimensions`` adds: ``InstanceType``,
``host``, ``arch``...). GetMetricData only matches a series by its *exact* dimension set, so the
sets are first learned with ListMetrics — one listing per region and metric, never one per
instance — and filtered here to the instances being audited. The queries (Stat ``Maximum``, one
per GPU and metric) are then packed into GetMetricData calls of at most 500 queries, and fewer
when the window is long, so that one response page stays under 100,800 datapoints: each query
counts the datapoints its own period gives over the window.

Per-instance series (``InstanceSeriesSpec``: host CPU, the agent's local-disk and notebook
signals) ride in the same calls: one query per instance and metric, packed with its GPU queries.
They are optional: a failed or empty one leaves the instance's entry out, never its GPUs. A
spec may read at a coarser period than the GPUs' (``AWS/EC2`` basic monitoring stores one
datapoint per 5 minutes): its queries then weigh a fifth in the datapoint budget.

A failure never raises: the instances it concerns get ``GpuUtilisation.error`` and are reported
``unmeasured``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal

from guardian.model import GpuInstance, GpuUtilisation, InstanceMetric, Point
from guardian.providers.aws.limits import AwsLimits
from guardian.series import reduce_gpu_series, summarise_gpus

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient

__all__ = [
    "NOTEBOOK_IDLE_METRIC",
    "RECENTLY_ACTIVE",
    "InstanceSeriesSpec",
    "MetricNames",
    "Query",
    "aligned_window",
    "datapoints",
    "fetch_batch",
    "list_instance_series",
    "plan_batches",
    "queries_per_call",
    "reduce_instance",
]

Kind = Literal["util", "mem", "instance"]
Dims = tuple[tuple[str, str], ...]  # (name, value) pairs in the order ListMetrics gave them
# One query's answer as CloudWatch's parsed response has it: timestamps and values in two
# parallel lists, oldest first. Not zipped into tuples: that would be another 56-byte object per
# datapoint, for every batch in flight.
Points = tuple[list[datetime], list[float]]

# ListMetrics only returns series with data in the last 3 hours (the API's only choice). An
# older series could only ever give `unmeasured` (max_staleness is minutes), and without this a
# busy account lists two weeks of terminated instances' series on every cycle.
RECENTLY_ACTIVE: Final = "PT3H"
_FAILED_STATUSES = frozenset({"Forbidden", "InternalError"})
_NO_POINTS: Points = ([], [])


# The agent's notebook signal (guardian.agent.notebook): Unit Seconds, dimensions exactly
# InstanceId, in aws.metrics.namespace beside the GPU metrics.
NOTEBOOK_IDLE_METRIC: Final = "guardian_notebook_idle"


@dataclass(frozen=True)
class InstanceSeriesSpec:
    """Where one per-instance series lives in CloudWatch, and how to read it."""

    key: InstanceMetric
    namespace: str
    metric: str
    # True: published by an agent, perhaps with extra dimensions (append_dimensions), so the
    # exact sets are learned with ListMetrics like the GPUs'. False: every instance has it with
    # exactly {InstanceId} (AWS/EC2), so it is queried without listing a whole region.
    listed: bool = True
    stat: str = "Maximum"
    scale: float = 1.0  # CloudWatch's unit → guardian's
    period_s: int | None = None  # None: the GPU metrics' period


@dataclass(frozen=True)
class MetricNames:
    namespace: str
    gpu_util: str
    gpu_mem_used: str
    period_s: int
    instance_series: tuple[InstanceSeriesSpec, ...] = ()


@dataclass(frozen=True)
class Query:
    """One GetMetricData query: one metric of one GPU of one instance, or (``kind`` instance)
    one per-instance series, whose ``gpu`` is then the ``InstanceMetric`` it fills."""

    id: str
    instance_key: str
    kind: Kind
    gpu: str
    metric: str
    dims: Dims
    namespace: str | None = None  # None: MetricNames.namespace
    stat: str = "Maximum"
    period_s: int | None = None  # None: MetricNames.period_s


def datapoints(window_s: int, period_s: int) -> int:
    """The most datapoints one query of ``period_s`` can return over ``window_s`` (a period
    cut by either end of the window still counts)."""
    return max(1, -(-window_s // period_s) + 1)


def aligned_window(start: datetime, end: datetime, period_s: int) -> tuple[datetime, datetime]:
    """Whole periods lined up with how CloudWatch stores the data: from the one holding
    ``start`` through the one holding ``end`` (EndTime is exclusive, so it is that period's end:
    a datapoint stamped exactly ``end`` is still read)."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    first = int((start.astimezone(UTC) - epoch).total_seconds()) // period_s * period_s
    last = int((end.astimezone(UTC) - epoch).total_seconds()) // period_s * period_s + period_s
    return epoch + timedelta(seconds=first), epoch + timedelta(seconds=max(last, first + period_s))


def queries_per_call(start: datetime, end: datetime, period_s: int, limits: AwsLimits) -> int:
    """At most 500 queries, and few enough that one page holds every datapoint of the window."""
    periods = datapoints(int((end - start).total_seconds()), period_s)
    return max(1, min(limits.metric_queries, limits.datapoints_per_call // periods))


def list_instance_series(
    cloudwatch: CloudWatchClient, namespace: str, metric: str, instance_ids: Iterable[str]
) -> dict[str, list[Dims]]:
    """instance id → the exact dimension sets of its series of ``metric``, each once.

    moto lists a series once per datapoint; CloudWatch may list it again across pages.
    """
    wanted = set(instance_ids)
    found: dict[str, dict[Dims, None]] = {}
    paginator = cloudwatch.get_paginator("list_metrics")
    pages = paginator.paginate(
        Namespace=namespace, MetricName=metric, RecentlyActive=RECENTLY_ACTIVE
    )
    for page in pages:
        for entry in page.get("Metrics", []):
            dims: Dims = tuple(
                (d["Name"], d["Value"]) for d in entry.get("Dimensions", []) if "Value" in d
            )
            instance_id = next((value for name, value in dims if name == "InstanceId"), None)
            if instance_id in wanted:
                found.setdefault(instance_id, {})[dims] = None
    return {instance_id: list(series) for instance_id, series in found.items()}


def _gpu_label(dims: Dims) -> str:
    """The GPU a series belongs to: its ``index``, else its dimensions other than the id."""
    for name, value in dims:
        if name == "index":
            return value
    return ",".join(f"{n}={v}" for n, v in sorted(dims) if n != "InstanceId")


def plan_batches(
    instances: Sequence[GpuInstance],
    util_series: Mapping[str, Sequence[Dims]],
    mem_series: Mapping[str, Sequence[Dims]],
    names: MetricNames,
    max_queries: int,
    *,
    id_prefix: str = "q",
    instance_listings: Mapping[InstanceMetric, Mapping[str, Sequence[Dims]]] | None = None,
    max_datapoints: int | None = None,
    window_s: int = 0,
) -> list[list[Query]]:
    """Queries for every GPU series, packed into batches of at most ``max_queries``, and (with
    ``max_datapoints``) of at most that many datapoints over ``window_s``, each query weighing
    what its own period returns: a 5-minute query costs a fifth of a 1-minute one.

    Query ids are ``id_prefix`` + a counter: callers merging the results of several regions
    give each region its own prefix, so one region's answers never land on another's queries.

    An instance's queries stay in one batch where they fit, so a failed call costs the fewest
    instances. Instances without a utilisation series get no queries (the caller reports them).
    ``instance_listings`` holds the listed sets of the listed per-instance series.
    """
    listings = instance_listings or {}
    budget = max_datapoints or 0

    def weight(query: Query) -> int:
        return datapoints(window_s, query.period_s or names.period_s) if budget else 0

    batches: list[list[Query]] = []
    current: list[Query] = []
    points = 0  # datapoints of ``current``
    count = 0  # ids are unique across batches, so their results can be merged
    for instance in instances:
        util = util_series.get(instance.instance_id, [])
        if not util:
            continue
        mine = [
            Query("", instance.key, "util", _gpu_label(dims), names.gpu_util, dims) for dims in util
        ]
        mine += [
            Query("", instance.key, "mem", _gpu_label(dims), names.gpu_mem_used, dims)
            for dims in mem_series.get(instance.instance_id, [])
        ]
        mine += _instance_queries(instance, names, listings)
        mine_points = sum(map(weight, mine))
        if current and (
            len(current) + len(mine) > max_queries or (budget and points + mine_points > budget)
        ):
            batches.append(current)
            current, points = [], 0
        for query in mine:
            cost = weight(query)
            if current and (len(current) >= max_queries or (budget and points + cost > budget)):
                batches.append(current)
                current, points = [], 0
            current.append(replace(query, id=f"{id_prefix}{count}"))
            points += cost
            count += 1
    if current:
        batches.append(current)
    return batches


def _instance_queries(
    instance: GpuInstance,
    names: MetricNames,
    listings: Mapping[InstanceMetric, Mapping[str, Sequence[Dims]]],
) -> list[Query]:
    queries = []
    for spec in names.instance_series:
        if spec.listed:
            sets: Sequence[Dims] = listings.get(spec.key, {}).get(instance.instance_id, [])
        else:
            sets = [(("InstanceId", instance.instance_id),)]
        queries += [
            Query(
                "",
                instance.key,
                "instance",
                spec.key,
                spec.metric,
                dims,
                spec.namespace,
                spec.stat,
                spec.period_s,
            )
            for dims in sets
        ]
    return queries


def _query_body(query: Query, names: MetricNames) -> dict[str, Any]:
    return {
        "Id": query.id,
        "MetricStat": {
            "Metric": {
                "Namespace": query.namespace or names.namespace,
                "MetricName": query.metric,
                # Exactly the listed set, in the listed order.
                "Dimensions": [{"Name": n, "Value": v} for n, v in query.dims],
            },
            "Period": query.period_s or names.period_s,
            "Stat": query.stat,
        },
        "ReturnData": True,
    }


def fetch_batch(
    cloudwatch: CloudWatchClient,
    batch: Sequence[Query],
    names: MetricNames,
    start: datetime,
    end: datetime,
) -> tuple[dict[str, Points], dict[str, str]]:
    """(query id → points oldest first, query id → why it failed) for one batch, every page."""
    points: dict[str, Points] = {query.id: ([], []) for query in batch}
    failed: dict[str, str] = {}
    body = [_query_body(query, names) for query in batch]
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {
            "MetricDataQueries": body,
            "StartTime": start,
            "EndTime": end,
            "ScanBy": "TimestampAscending",
        }
        if token:
            kwargs["NextToken"] = token
        response = cloudwatch.get_metric_data(**kwargs)
        for result in response.get("MetricDataResults", []):
            query_id = result.get("Id", "")
            if query_id not in points:
                continue
            status = result.get("StatusCode", "Complete")
            if status in _FAILED_STATUSES:
                messages = "; ".join(m.get("Value", "") for m in result.get("Messages", []))
                failed[query_id] = f"CloudWatch returned {status}" + (
                    f": {messages}" if messages else ""
                )
            stamps, values = result.get("Timestamps", []), result.get("Values", [])
            if len(stamps) != len(values):  # a malformed answer: keep what pairs up
                stamps, values = stamps[: len(values)], values[: len(stamps)]
            if stamps and stamps[0].tzinfo is not UTC:  # our clients parse to UTC already
                stamps = [at.astimezone(UTC) for at in stamps]
            times, floats = points[query_id]
            times.extend(stamps)
            floats.extend(values)
        token = response.get("NextToken")
        if not token:
            return points, failed


def no_series_error(instance: GpuInstance, names: MetricNames) -> str:
    return (
        f"no {names.gpu_util} series in {names.namespace} for {instance.instance_id} "
        f"reporting in the last 3 h: install the CloudWatch agent with the nvidia_gpu plugin "
        f"(append_dimensions InstanceId)"
    )


def reduce_instance(
    instance: GpuInstance,
    queries: Sequence[Query],
    points: Mapping[str, Points],
    failed: Mapping[str, str],
    names: MetricNames,
) -> GpuUtilisation:
    """Per-GPU series → per-instance samples; an error if any utilisation or memory series
    failed (a failed read is not an absent series: see ``AwsProvider.utilisation``)."""
    util: dict[str, dict[datetime, float]] = {}
    mem: dict[str, dict[datetime, float]] = {}
    other: dict[str, dict[datetime, float]] = {}
    for query in queries:
        if query.kind in ("util", "mem") and query.id in failed:
            return GpuUtilisation(
                period_s=names.period_s, error=failed[query.id], fetch_failed=True
            )
        if query.id in failed:
            continue  # the per-instance series are optional: left out
        by_kind = {"util": util, "mem": mem, "instance": other}[query.kind]
        per_time = by_kind.setdefault(query.gpu, {})
        # Two series of one GPU (the agent's dimensions changed) merge; the max wins per time,
        # so the GPU still counts once at each timestamp.
        times, values = points.get(query.id, _NO_POINTS)
        for at, value in zip(times, values, strict=True):
            per_time[at] = max(value, per_time.get(at, value))
    util_points = {gpu: sorted(series.items()) for gpu, series in util.items()}
    mem_points = {gpu: sorted(series.items()) for gpu, series in mem.items()} or None
    return GpuUtilisation(
        samples=reduce_gpu_series(util_points, mem_points, expected_gpus=instance.gpu_count),
        period_s=names.period_s,
        gpus_reporting=len(util),
        instance_series=_instance_series(other, names),
        gpus=summarise_gpus(util_points, mem_points),
    )


def _instance_series(
    collected: Mapping[str, Mapping[datetime, float]], names: MetricNames
) -> dict[InstanceMetric, tuple[Point, ...]]:
    scales = {spec.key: spec.scale for spec in names.instance_series}
    return {
        InstanceMetric(key): tuple(
            (at, value * scales.get(InstanceMetric(key), 1.0))
            for at, value in sorted(series.items())
        )
        for key, series in collected.items()
        if series
    }
