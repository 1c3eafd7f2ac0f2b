"""``guardian.simulated.moto_speedups``: the indexed CloudWatch answers as stock moto does (where
stock moto is right), lists each series once in pages of 500, and adds a server-side latency;
and the fleet benchmark that relies on it still runs end to end.

Every comparison goes over the wire with boto3, against the session's moto server: once stock,
once with the speedups enabled, the same data seeded the same way.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from guardian.config import Config
from guardian.model import GpuInstance
from guardian.providers.aws.discovery import GpuTypeCatalog
from guardian.providers.aws.provider import AwsProvider
from guardian.simulated import moto_speedups
from guardian.simulated.aws import Reading, constant, gpu_datums, put_datums, reset_moto_server
from tests.conftest import MotoServer

ROOT = Path(__file__).resolve().parents[2]
UTIL = "nvidia_smi_utilization_gpu"
MEM = "nvidia_smi_memory_used"
STATS = ["Maximum", "Minimum", "Average", "Sum", "SampleCount"]


@pytest.fixture(autouse=True)
def _stock_moto_then_as_found() -> Iterator[None]:
    """Each test starts from stock moto; whatever state another test file of this process
    left (a demo test enables the speedups for good) is put back afterwards."""
    was_installed, latency = moto_speedups.installed(), moto_speedups.latency_s()
    moto_speedups.disable()
    yield
    moto_speedups.disable()
    if was_installed:
        moto_speedups.enable(latency_s=latency)


@pytest.fixture
def speedups(moto_server: MotoServer) -> Iterator[MotoServer]:
    moto_speedups.enable()
    try:
        yield moto_server
    finally:
        moto_speedups.disable()
        moto_server.reset()  # the index went with the methods; drop its data too


def _minute() -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)


def _fleet(now: datetime) -> list[tuple[GpuInstance, list[dict[str, Any]]]]:
    """Fixed ids (no EC2 needed), so stock and indexed runs hold the very same series."""
    launched = now - timedelta(days=1)

    def instance(instance_id: str, gpus: int) -> GpuInstance:
        return GpuInstance(
            provider="aws",
            account="123456789012",
            region="us-east-1",
            zone="us-east-1a",
            instance_id=instance_id,
            instance_type="g5.12xlarge" if gpus > 1 else "g5.xlarge",
            launch_time=launched,
            gpu_count=gpus,
        )

    ramp = [Reading(float(n % 7) * 10, 100.0 * n) for n in range(40)]
    gappy = [Reading(None if n % 5 == 0 else 50.5, None if n % 3 else 2048.0) for n in range(40)]
    return [
        (
            instance("i-0aaa", 4),
            gpu_datums("i-0aaa", 4, {0: ramp, 1: gappy, 2: ramp, 3: ramp}, now),
        ),
        (instance("i-0bbb", 1), gpu_datums("i-0bbb", 1, constant(2, 300, 40), now)),
        # Its newest minute 9 minutes back, and sent out of order.
        (instance("i-0ccc", 1), gpu_datums("i-0ccc", 1, ramp, now - timedelta(minutes=9))[::-1]),
    ]


def _seed(moto_server: MotoServer, now: datetime) -> list[GpuInstance]:
    cloudwatch = moto_server.client("cloudwatch")
    instances = []
    for instance, datums in _fleet(now):
        put_datums(cloudwatch, datums)
        instances.append(instance)
    # Several datums in one minute, and the other kinds of PutMetricData member.
    dims = [{"Name": "InstanceId", "Value": "i-0bbb"}]
    cloudwatch.put_metric_data(
        Namespace="Other",
        MetricData=[
            {
                "MetricName": "m",
                "Dimensions": dims,
                "Timestamp": now,
                "Values": [1.0, 5.0],
                "Counts": [2, 1],
            },
            {
                "MetricName": "m",
                "Dimensions": dims,
                "Timestamp": now - timedelta(minutes=3),
                "StatisticValues": {"SampleCount": 4, "Sum": 10, "Minimum": 1, "Maximum": 4},
            },
            {
                "MetricName": "m",
                "Dimensions": dims,
                "Timestamp": now - timedelta(minutes=3),  # the same minute twice
                "Value": 2.5,
            },
        ],
    )
    return instances


def _read_everything(
    moto_server: MotoServer, instances: list[GpuInstance], now: datetime
) -> dict[str, Any]:
    cloudwatch = moto_server.client("cloudwatch")
    pages = list(cloudwatch.get_paginator("list_metrics").paginate())
    entries = [
        (m["Namespace"], m["MetricName"], tuple((d["Name"], d["Value"]) for d in m["Dimensions"]))
        for page in pages
        for m in page["Metrics"]
    ]
    any_index = cloudwatch.list_metrics(
        Namespace="CWAgent", MetricName=UTIL, Dimensions=[{"Name": "index"}]
    )
    gpu_one = cloudwatch.list_metrics(Dimensions=[{"Name": "index", "Value": "1"}])
    start, end = now - timedelta(minutes=45), now + timedelta(minutes=1)
    series = sorted(set(entries))
    queries = [
        {
            "Id": f"q{n}",
            "MetricStat": {
                "Metric": {
                    "Namespace": ns,
                    "MetricName": name,
                    "Dimensions": [{"Name": k, "Value": v} for k, v in dims],
                },
                "Period": period,
                "Stat": stat,
            },
        }
        for n, (ns, name, dims, stat, period) in enumerate(
            (ns, name, dims, stat, period)
            for ns, name, dims in series
            for stat in STATS
            for period in (60, 300)
        )
    ]
    data = {}
    for scan in ("TimestampAscending", "TimestampDescending"):
        response = cloudwatch.get_metric_data(
            MetricDataQueries=queries, StartTime=start, EndTime=end, ScanBy=scan
        )
        data[scan] = {
            r["Id"]: (r["Label"], r["Timestamps"], r["Values"])
            for r in response["MetricDataResults"]
        }
    # Per minute only: for longer periods stock moto counts periods from each series' first
    # datum, AWS (and the index) from StartTime; see the test below.
    statistics = {
        (ns, name, dims, 60): cloudwatch.get_metric_statistics(
            Namespace=ns,
            MetricName=name,
            Dimensions=[{"Name": k, "Value": v} for k, v in dims],
            StartTime=start,
            EndTime=end,
            Period=60,
            Statistics=STATS,
        )["Datapoints"]
        for ns, name, dims in series
    }
    provider = AwsProvider(Config(), catalog=GpuTypeCatalog())
    try:
        utilisation = dict(provider.utilisation(instances, now - timedelta(minutes=45), now))
    finally:
        provider.close()
    return {
        "entries": entries,
        "series": series,
        "any_index": {
            tuple((d["Name"], d["Value"]) for d in m["Dimensions"]) for m in any_index["Metrics"]
        },
        "gpu_one": {
            (m["MetricName"], tuple(d["Value"] for d in m["Dimensions"]))
            for m in gpu_one["Metrics"]
        },
        "data": data,
        "statistics": statistics,
        "utilisation": utilisation,
    }


def test_the_indexed_store_answers_exactly_as_stock_moto_on_a_small_fleet(
    moto_server: MotoServer,
) -> None:
    now = _minute()
    stock = _read_everything(moto_server, _seed(moto_server, now), now)
    moto_server.reset()
    moto_speedups.enable()
    try:
        fast = _read_everything(moto_server, _seed(moto_server, now), now)
    finally:
        moto_speedups.disable()
        moto_server.reset()

    assert len(stock["entries"]) > len(stock["series"])  # stock moto repeats series per datum
    assert len(fast["entries"]) == len(fast["series"]) == 13  # each once: 6 GPUs x 2 + Other/m
    assert fast["series"] == stock["series"]
    for key in ("any_index", "gpu_one", "data", "statistics", "utilisation"):
        assert fast[key] == stock[key], key
    # The comparison is not vacuous: real values, every statistic, the gaps and the late series.
    values = fast["data"]["TimestampAscending"]
    assert sum(len(v) for _, _, v in values.values()) > 1000
    assert fast["utilisation"]["aws:123456789012:i-0aaa"].gpus_reporting == 4
    late = fast["utilisation"]["aws:123456789012:i-0ccc"].samples
    assert late[-1].at == now - timedelta(minutes=9)
    other = next(v for k, v in fast["statistics"].items() if k[0] == "Other" and k[3] == 60)
    assert {p["SampleCount"] for p in other} == {3.0, 5.0}  # Counts and StatisticValues kept


def test_data_stored_before_enabling_moves_into_the_index(moto_server: MotoServer) -> None:
    now = _minute()
    instances = _seed(moto_server, now)
    stock = _read_everything(moto_server, instances, now)
    moto_speedups.enable()  # same server, same datums: read through the index now
    try:
        fast = _read_everything(moto_server, instances, now)
    finally:
        moto_speedups.disable()
        moto_server.reset()
    assert fast["series"] == stock["series"]
    assert fast["data"] == stock["data"]
    assert fast["utilisation"] == stock["utilisation"]


def test_list_metrics_lists_each_series_once_in_pages_of_500(speedups: MotoServer) -> None:
    now = _minute()
    datums = [
        datum
        for n in range(1201)
        for datum in gpu_datums(f"i-{n:05d}", 1, constant(5, None, 3), now)
    ]
    assert moto_speedups.put_in_process("us-east-1", datums, "CWAgent") == 3 * 1201
    cloudwatch = speedups.client("cloudwatch")
    first = cloudwatch.list_metrics(Namespace="CWAgent", MetricName=UTIL)
    second = cloudwatch.list_metrics(
        Namespace="CWAgent", MetricName=UTIL, NextToken=first["NextToken"]
    )
    third = cloudwatch.list_metrics(
        Namespace="CWAgent", MetricName=UTIL, NextToken=second["NextToken"]
    )
    assert [len(p["Metrics"]) for p in (first, second, third)] == [500, 500, 201]
    assert "NextToken" not in third
    ids = [m["Dimensions"][0]["Value"] for p in (first, second, third) for m in p["Metrics"]]
    assert sorted(ids) == [f"i-{n:05d}" for n in range(1201)]
    with pytest.raises(ClientError, match="NextToken"):  # a token is good once, as on AWS
        cloudwatch.list_metrics(Namespace="CWAgent", NextToken=first["NextToken"])


def test_instance_types_come_in_pages_of_at_most_100_as_on_aws(speedups: MotoServer) -> None:
    ec2 = speedups.client("ec2")
    pages = list(ec2.get_paginator("describe_instance_types").paginate())
    sizes = [len(page["InstanceTypes"]) for page in pages]
    assert len(sizes) > 10  # AWS: about 14
    assert max(sizes) == 100
    assert all("NextToken" in page for page in pages[:-1])
    assert "NextToken" not in pages[-1]
    names = [t["InstanceType"] for page in pages for t in page["InstanceTypes"]]
    moto_speedups.disable()  # stock moto: everything in one answer, MaxResults ignored
    stock = ec2.describe_instance_types(MaxResults=5)["InstanceTypes"]
    assert sorted(names) == sorted(t["InstanceType"] for t in stock)
    assert len(names) == len(set(names))
    moto_speedups.enable()
    small = ec2.describe_instance_types(MaxResults=37)
    assert len(small["InstanceTypes"]) == 37
    named = ec2.describe_instance_types(InstanceTypes=["g5.xlarge", "p4d.24xlarge"])
    assert sorted(t["InstanceType"] for t in named["InstanceTypes"]) == [
        "g5.xlarge",
        "p4d.24xlarge",
    ]
    assert "NextToken" not in named


def test_queries_match_the_exact_dimension_set_as_on_aws(speedups: MotoServer) -> None:
    now = _minute()
    cloudwatch = speedups.client("cloudwatch")
    put_datums(cloudwatch, gpu_datums("i-0aaa", 1, constant(40, 100, 5), now))
    subset = [{"Name": "InstanceId", "Value": "i-0aaa"}]
    window = {"StartTime": now - timedelta(minutes=10), "EndTime": now + timedelta(minutes=1)}
    statistics = cloudwatch.get_metric_statistics(
        Namespace="CWAgent",
        MetricName=UTIL,
        Dimensions=subset,
        Period=60,
        Statistics=["Maximum"],
        **window,
    )
    assert statistics["Datapoints"] == []  # stock moto matches any superset here; AWS does not
    query = {
        "Id": "q",
        "MetricStat": {
            "Metric": {"Namespace": "CWAgent", "MetricName": UTIL},
            "Period": 60,
            "Stat": "Maximum",
        },
    }
    (result,) = cloudwatch.get_metric_data(MetricDataQueries=[query], **window)["MetricDataResults"]
    assert result["Values"] == []  # no dimensions: only a series without dimensions matches


def test_statistics_periods_are_counted_from_start_time_as_on_aws(speedups: MotoServer) -> None:
    now = _minute()
    cloudwatch = speedups.client("cloudwatch")
    readings = [Reading(float(n), None) for n in range(7)]  # 0..6, newest at `now`
    datums = gpu_datums("i-0aaa", 1, readings, now)
    put_datums(cloudwatch, datums)
    start = now - timedelta(minutes=10)
    answer = cloudwatch.get_metric_statistics(
        Namespace="CWAgent",
        MetricName=UTIL,
        Dimensions=datums[0]["Dimensions"],
        StartTime=start,
        EndTime=now + timedelta(minutes=1),
        Period=300,
        Statistics=["Maximum", "SampleCount"],
    )
    points = sorted(answer["Datapoints"], key=lambda p: p["Timestamp"])
    # The readings sit at start+4 .. start+10 minutes: periods from StartTime hold 0 | 1-5 | 6
    # (stock moto counts from the first datum instead: 0-4 | 5-6).
    assert [p["Timestamp"] for p in points] == [start + timedelta(minutes=m) for m in (0, 5, 10)]
    assert [(p["Maximum"], p["SampleCount"]) for p in points] == [
        (0.0, 1.0),
        (5.0, 5.0),
        (6.0, 1.0),
    ]
    assert {p["Unit"] for p in points} == {"Percent"}


def test_metric_math_is_refused_rather_than_answered_wrong(speedups: MotoServer) -> None:
    cloudwatch = speedups.client("cloudwatch")
    now = _minute()
    with pytest.raises(ClientError, match="MetricStat queries only"):
        cloudwatch.get_metric_data(
            MetricDataQueries=[{"Id": "e", "Expression": "SUM(METRICS())"}],
            StartTime=now - timedelta(minutes=5),
            EndTime=now,
        )


def test_reading_a_large_store_costs_only_the_queried_series(speedups: MotoServer) -> None:
    # 1,000 series of two hours: 120,000 datums. Stock moto scans all of them per query and
    # per period (500 x 121 x 120,000 comparisons for this one call); the index reads 500.
    now = _minute()
    for start in range(0, 1000, 250):
        datums = [
            d
            for n in range(start, start + 250)
            for d in gpu_datums(f"i-{n:05d}", 1, constant(3, None, 120), now)
        ]
        moto_speedups.put_in_process("us-east-1", datums, "CWAgent")
    listed = speedups.client("cloudwatch").list_metrics(Namespace="CWAgent", MetricName=UTIL)[
        "Metrics"
    ]
    queries = [
        {
            "Id": f"q{n}",
            "MetricStat": {
                "Metric": {
                    "Namespace": "CWAgent",
                    "MetricName": UTIL,
                    "Dimensions": m["Dimensions"],
                },
                "Period": 60,
                "Stat": "Maximum",
            },
        }
        for n, m in enumerate(listed)
    ]
    started = time.perf_counter()
    results = speedups.client("cloudwatch").get_metric_data(
        MetricDataQueries=queries,
        StartTime=now - timedelta(hours=2),
        EndTime=now + timedelta(minutes=1),
    )["MetricDataResults"]
    elapsed = time.perf_counter() - started
    assert len(results) == 500
    assert {len(r["Values"]) for r in results} == {120}
    assert elapsed < 10  # about 0.3 s here; stock moto would take hours


def test_latency_is_added_on_the_server_and_concurrent_calls_overlap(speedups: MotoServer) -> None:
    cloudwatch = speedups.client("cloudwatch")
    cloudwatch.list_metrics()  # connect first: the timings below are round trips only
    moto_speedups.enable(latency_s=0.25)
    assert moto_speedups.latency_s() == 0.25
    started = time.perf_counter()
    cloudwatch.list_metrics()
    one = time.perf_counter() - started
    assert one >= 0.25

    ec2 = speedups.client("ec2")  # every service, from any client: it is the server that waits
    started = time.perf_counter()
    ec2.describe_regions()
    assert time.perf_counter() - started >= 0.25

    durations: list[float] = []

    def call() -> None:
        began = time.perf_counter()
        cloudwatch.list_metrics()
        durations.append(time.perf_counter() - began)

    threads = [threading.Thread(target=call) for _ in range(8)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    together = time.perf_counter() - started
    assert len(durations) == 8
    assert min(durations) >= 0.25
    assert together < 4 * 0.25  # 8 calls side by side, not 2 s one after the other

    started = time.perf_counter()
    reset_moto_server(speedups.endpoint_url)  # moto's own API is not AWS: no delay
    assert time.perf_counter() - started < 0.25

    moto_speedups.enable()  # the demo's call: the index stays, the latency goes
    started = time.perf_counter()
    cloudwatch.list_metrics()
    assert time.perf_counter() - started < 0.25
    assert moto_speedups.installed()


def test_enable_is_idempotent_and_disable_restores_moto() -> None:
    from moto.cloudwatch.models import CloudWatchBackend
    from moto.ec2.responses.instances import InstanceResponse
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    stock = (
        CloudWatchBackend.list_metrics,
        CloudWatchBackend.get_metric_data,
        DomainDispatcherApplication.__call__,
        InstanceResponse.describe_instance_types,
    )
    try:
        moto_speedups.enable()
        patched = (
            CloudWatchBackend.list_metrics,
            CloudWatchBackend.get_metric_data,
            DomainDispatcherApplication.__call__,
            InstanceResponse.describe_instance_types,
        )
        moto_speedups.enable()
        moto_speedups.enable(latency_s=0.01)
        assert (
            CloudWatchBackend.list_metrics,
            CloudWatchBackend.get_metric_data,
            DomainDispatcherApplication.__call__,
            InstanceResponse.describe_instance_types,
        ) == patched
        assert all(p is not s for p, s in zip(patched, stock, strict=True))
        with pytest.raises(ValueError, match="latency"):
            moto_speedups.enable(latency_s=-1)
    finally:
        moto_speedups.disable()
    assert (
        CloudWatchBackend.list_metrics,
        CloudWatchBackend.get_metric_data,
        DomainDispatcherApplication.__call__,
        InstanceResponse.describe_instance_types,
    ) == stock
    assert not moto_speedups.installed()
    assert moto_speedups.latency_s() == 0.0
    moto_speedups.disable()  # twice is fine


def test_seeding_in_process_needs_the_index() -> None:
    with pytest.raises(RuntimeError, match="enable"):
        moto_speedups.put_in_process("us-east-1", [], "CWAgent")


def _run_bench(module: str, args: list[str], figures_path: Path) -> tuple[str, dict[str, Any]]:
    """``python -m bench.MODULE ARGS --json FIGURES`` in a subprocess (the benches patch moto
    process-wide, so never in the test process): its stdout and figures; fails on exit != 0."""
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args, "--json", str(figures_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures: dict[str, Any] = json.loads(figures_path.read_text())
    return done.stdout, figures


def test_the_fleet_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    """bench/fleet.py at N=12 in one region: both methods, every check (one region: each
    method lists the instance types of each region, the smoke test's largest cost)."""
    stdout, figures = _run_bench(
        "fleet",
        ["-n", "12", "-r", "1", "--latency-ms", "5", "--no-second-audit"],
        tmp_path / "fleet.json",
    )
    assert all(check["passed"] for check in figures["checks"].values())
    assert figures["checks"]["verdicts identical to the per-instance method"]["detail"].startswith(
        "12/12"
    )
    assert len(figures["verdicts"]) >= 4  # a mix, not one verdict
    guardian, alternative = figures["guardian"]["calls"], figures["per_instance"]["calls"]
    assert alternative["cloudwatch:GetMetricStatistics"] == figures["series"]
    assert guardian["cloudwatch:GetMetricData"] == 1  # one per region
    assert "cloudwatch:GetMetricStatistics" not in guardian
    assert "PASS  EC2 calls" in stdout


def test_the_daemon_soak_runs_end_to_end(tmp_path: Path) -> None:
    """bench/soak.py, short: 18 simulated minutes are enough for warnings, stops and alerts."""
    _, figures = _run_bench(
        "soak",
        ["--cycles", "18", "--warmup", "3", "--instances", "12", "--regions", "1"],
        tmp_path / "soak.json",
    )
    assert [row["cycle"] for row in figures["rows"]] == list(range(1, 19))
    assert all(check["passed"] for check in figures["checks"].values())
    assert figures["warned"] >= 1
    assert figures["stopped"] >= 1  # warned, waited out the grace period, stopped in moto
    assert figures["alerts_received"] >= figures["warned"]
    assert figures["rows"][-1]["instances"] < 12  # stopped instances leave discovery
