"""The pure parts of the AWS metrics reader: windows, batch sizes, packing, reduction."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from guardian.model import GpuInstance
from guardian.providers.aws.discovery import gpu_type_from
from guardian.providers.aws.limits import AwsLimits
from guardian.providers.aws.metrics import (
    Dims,
    MetricNames,
    Points,
    Query,
    aligned_window,
    plan_batches,
    queries_per_call,
    reduce_instance,
)
from tests.clock import NOW

NAMES = MetricNames("CWAgent", "nvidia_smi_utilization_gpu", "nvidia_smi_memory_used", 60)
T0 = NOW


def columns(*pairs: tuple[datetime, float]) -> Points:
    """Points as CloudWatch answers them: timestamps and values in parallel lists."""
    return [at for at, _ in pairs], [value for _, value in pairs]


def instance(instance_id: str, gpus: int = 2) -> GpuInstance:
    return GpuInstance(
        provider="aws",
        account="123456789012",
        region="us-east-1",
        zone="us-east-1a",
        instance_id=instance_id,
        instance_type="g5.12xlarge",
        launch_time=T0 - timedelta(days=1),
        gpu_count=gpus,
    )


def series(instance_id: str, gpus: int) -> list[Dims]:
    return [
        (("InstanceId", instance_id), ("index", str(i)), ("name", "NVIDIA A10G"))
        for i in range(gpus)
    ]


def test_window_is_aligned_to_the_period() -> None:
    start, end = aligned_window(
        T0 + timedelta(seconds=17), T0 + timedelta(minutes=5, seconds=1), 60
    )
    assert start == T0
    assert end == T0 + timedelta(minutes=6)
    assert aligned_window(T0, T0, 300) == (T0, T0 + timedelta(minutes=5))
    # A datapoint stamped exactly at the end is inside the window.
    assert aligned_window(T0, T0 + timedelta(minutes=5), 60)[1] == T0 + timedelta(minutes=6)


def test_queries_per_call_never_exceeds_500_or_one_page_of_datapoints() -> None:
    limits = AwsLimits()
    assert queries_per_call(T0, T0 + timedelta(hours=1), 60, limits) == 500
    day = queries_per_call(T0, T0 + timedelta(hours=24), 60, limits)
    assert day == 100_800 // 1441  # 69: a whole day of minutes for each fits one page
    assert queries_per_call(T0, T0 + timedelta(days=14), 60, limits) == 4
    assert queries_per_call(T0, T0 + timedelta(days=200), 60, limits) == 1


def test_batches_hold_at_most_the_limit_and_keep_an_instance_together() -> None:
    instances = [instance(f"i-{n:03d}", gpus=2) for n in range(300)]
    util = {i.instance_id: series(i.instance_id, 2) for i in instances}
    mem = dict(util)
    batches = plan_batches(instances, util, mem, NAMES, 500)
    assert [len(b) for b in batches] == [500, 500, 200]
    for batch in batches:
        keys = {q.instance_key for q in batch}
        assert all(sum(q.instance_key == k for q in batch) == 4 for k in keys)
    ids = [q.id for batch in batches for q in batch]
    assert len(ids) == len(set(ids)) == 1200
    assert all(q.id[0].islower() and q.id.isalnum() for q in batches[0])


def test_an_instance_that_would_straddle_starts_a_new_batch() -> None:
    instances = [instance("i-a", gpus=3), instance("i-b", gpus=3)]
    util = {i.instance_id: series(i.instance_id, 3) for i in instances}
    batches = plan_batches(instances, util, util, NAMES, 10)
    assert [len(b) for b in batches] == [6, 6]
    # Bigger than a whole batch: split, never over the limit.
    batches = plan_batches([instances[0]], util, util, NAMES, 4)
    assert [len(b) for b in batches] == [4, 2]


def test_instances_without_utilisation_series_get_no_queries() -> None:
    instances = [instance("i-a"), instance("i-b")]
    util = {"i-a": series("i-a", 2)}
    mem = {"i-a": series("i-a", 2), "i-b": series("i-b", 2)}
    batches = plan_batches(instances, util, mem, NAMES, 500)
    assert {q.instance_key for b in batches for q in b} == {instances[0].key}


def _query(qid: str, kind: Any, gpu: str, inst: GpuInstance) -> Query:
    metric = NAMES.gpu_util if kind == "util" else NAMES.gpu_mem_used
    return Query(qid, inst.key, kind, gpu, metric, (("InstanceId", inst.instance_id),))


def test_reduce_takes_the_max_over_gpus_and_marks_gaps_incomplete() -> None:
    inst = instance("i-a", gpus=2)
    queries = [
        _query("q0", "util", "0", inst),
        _query("q1", "util", "1", inst),
        _query("q2", "mem", "0", inst),
        _query("q3", "mem", "1", inst),
    ]
    t1, t2 = T0, T0 + timedelta(minutes=1)
    points = {
        "q0": columns((t1, 3.0), (t2, 0.0)),
        "q1": columns((t1, 70.0)),  # GPU 1 missed the second minute
        "q2": columns((t1, 100.0), (t2, 100.0)),
        "q3": columns((t1, 9000.0)),
    }
    result = reduce_instance(inst, queries, points, {}, NAMES)
    assert result.error is None
    assert result.gpus_reporting == 2
    first, second = result.samples
    assert (first.at, first.gpu_util_pct, first.mem_used_mib, first.complete) == (
        t1,
        70.0,
        9000.0,
        True,
    )
    assert (second.gpu_util_pct, second.complete) == (0.0, False)


def test_two_series_of_one_gpu_merge_and_count_once() -> None:
    inst = instance("i-a", gpus=1)
    queries = [_query("q0", "util", "0", inst), _query("q1", "util", "0", inst)]
    points = {"q0": columns((T0, 10.0)), "q1": columns((T0, 40.0))}
    (sample,) = reduce_instance(inst, queries, points, {}, NAMES).samples
    assert (sample.gpu_util_pct, sample.complete) == (40.0, True)


def test_a_failed_utilisation_or_memory_query_is_a_failed_fetch() -> None:
    # A memory series that could not be read is not an absent one: read as absent, a job-ended
    # instance warned on "memory released" turns busy for a cycle and its warning is withdrawn
    # (seen under injected faults, bench/faults.py). Absent memory stays merely unknown.
    inst = instance("i-a", gpus=1)
    queries = [_query("q0", "util", "0", inst), _query("q1", "mem", "0", inst)]
    points = {"q0": columns((T0, 1.0)), "q1": columns()}
    absent = reduce_instance(inst, queries, points, {}, NAMES)
    assert absent.error is None
    assert absent.samples[0].mem_used_mib is None
    for query_id in ("q0", "q1"):
        failed = reduce_instance(
            inst, queries, points, {query_id: "CloudWatch returned Forbidden"}, NAMES
        )
        assert (failed.error, failed.fetch_failed) == ("CloudWatch returned Forbidden", True)
        assert failed.samples == ()


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        (
            {
                "InstanceType": "g5.12xlarge",
                "GpuInfo": {
                    "Gpus": [
                        {
                            "Name": "A10G",
                            "Manufacturer": "NVIDIA",
                            "Count": 4,
                            "MemoryInfo": {"SizeInMiB": 22888},
                        }
                    ]
                },
                "InstanceStorageInfo": {"TotalSizeInGB": 3800},
                "HibernationSupported": False,
            },
            (4, "NVIDIA A10G", 22888, True, False),
        ),
        (  # a fractional GPU: Count 0, one logical GPU
            {
                "InstanceType": "g6f.large",
                "GpuInfo": {
                    "Gpus": [
                        {"Name": "L4", "Manufacturer": "NVIDIA", "Count": 0, "LogicalGpuCount": 1}
                    ]
                },
                "HibernationSupported": True,
            },
            (1, "NVIDIA L4", None, False, True),
        ),
    ],
)
def test_gpu_type_from_instance_type_info(info: Any, expected: tuple[object, ...]) -> None:
    gpu = gpu_type_from(info)
    assert gpu is not None
    assert (
        gpu.gpu_count,
        gpu.gpu_model,
        gpu.gpu_memory_mib,
        gpu.has_instance_store,
        gpu.hibernation_supported,
    ) == expected


def test_types_without_gpus_are_not_gpu_types() -> None:
    assert gpu_type_from({"InstanceType": "m5.large"}) is None
    no_gpus: Any = {"InstanceType": "x", "GpuInfo": {"Gpus": []}}
    assert gpu_type_from(no_gpus) is None


def test_a_coarser_host_series_weighs_less_in_the_datapoint_budget() -> None:
    """A day at 60 s is 1,441 datapoints a query; AWS/EC2 CPU at 300 s is 289. Packing counts
    each query's own, so host CPU costs a fifth of a GPU series, and no call is over a page."""
    from guardian.model import InstanceMetric
    from guardian.providers.aws.metrics import InstanceSeriesSpec, datapoints

    window = 24 * 3600
    limits = AwsLimits()
    instances = [instance(f"i-{n:03d}", gpus=1) for n in range(200)]
    util = {i.instance_id: series(i.instance_id, 1) for i in instances}

    def plan(period: int | None) -> list[list[Query]]:
        cpu = InstanceSeriesSpec(
            InstanceMetric.HOST_CPU_PCT, "AWS/EC2", "CPUUtilization", listed=False, period_s=period
        )
        names = MetricNames(NAMES.namespace, NAMES.gpu_util, NAMES.gpu_mem_used, 60, (cpu,))
        return plan_batches(
            instances,
            util,
            util,
            names,
            limits.metric_queries,
            max_datapoints=limits.datapoints_per_call,
            window_s=window,
        )

    def points(batch: list[Query]) -> int:
        return sum(datapoints(window, q.period_s or 60) for q in batch)

    gpus_only = plan_batches(
        instances,
        util,
        util,
        NAMES,
        limits.metric_queries,
        max_datapoints=limits.datapoints_per_call,
        window_s=window,
    )
    # The same packing as before the weights: 69 one-minute queries a call over a day.
    assert max(len(b) for b in gpus_only) == 68  # 34 instances of two queries
    assert len(gpus_only) == 6
    at_60, at_300 = plan(None), plan(300)
    assert [len(gpus_only), len(at_60), len(at_300)] == [6, 9, 7]
    for batch in (*at_60, *at_300):
        assert points(batch) <= limits.datapoints_per_call
        # An instance's queries stay in one call.
        keys = {q.instance_key for q in batch}
        assert all(sum(q.instance_key == k for q in batch) == 3 for k in keys)
    cpu_query = next(q for q in at_300[0] if q.kind == "instance")
    assert cpu_query.period_s == 300
    assert cpu_query.dims == (("InstanceId", instances[0].instance_id),)
