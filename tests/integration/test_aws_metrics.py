"""AwsProvider.utilisation against moto's CloudWatch: what it reads, and exactly what it sends.

moto matches any subset of dimensions in ListMetrics, takes any number of queries and lists a
series once per datapoint, so every test here asserts on the parameters actually sent.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from guardian.config import Config
from guardian.model import GpuInstance
from guardian.providers.aws.discovery import GpuTypeCatalog
from guardian.providers.aws.limits import AwsLimits
from guardian.providers.aws.provider import AwsProvider
from guardian.simulated.aws import (
    Reading,
    constant,
    gpu_datums,
    launch_gpu_instances,
    put_datums,
    put_gpu_metrics,
)
from tests.conftest import AwsWire, MotoServer

UTIL = "nvidia_smi_utilization_gpu"
MEM = "nvidia_smi_memory_used"


def provider_for(
    wire: AwsWire,
    catalog: GpuTypeCatalog,
    *,
    limits: AwsLimits | None = None,
    metrics: dict[str, Any] | None = None,
) -> AwsProvider:
    aws: dict[str, Any] = {"regions": ["us-east-1", "eu-west-1"]}
    if metrics:
        aws["metrics"] = metrics
    return AwsProvider(
        Config.model_validate({"aws": aws}), session=wire.session, catalog=catalog, limits=limits
    )


def now_minute() -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0)


def dims_sent(wire: AwsWire) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    sent = []
    for call in wire.sent("cloudwatch:GetMetricData"):
        for query in call.params["MetricDataQueries"]:
            metric = query["MetricStat"]["Metric"]
            dims = tuple((d["Name"], d["Value"]) for d in metric["Dimensions"])
            sent.append((metric["MetricName"], dims))
    return sent


def test_reads_each_gpu_series_by_its_exact_dimensions_and_reduces_them(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    ec2, cloudwatch = moto_server.client("ec2"), moto_server.client("cloudwatch")
    now = now_minute()
    (multi,) = launch_gpu_instances(ec2, "g5.12xlarge", launched_at=now - timedelta(hours=5))
    (single,) = launch_gpu_instances(ec2, "g5.xlarge")
    (stranger,) = launch_gpu_instances(ec2, "g5.xlarge")  # has metrics, but is not audited
    (elsewhere,) = launch_gpu_instances(ec2, "g5.xlarge")  # its metrics are in another namespace
    # Four GPUs, the agent appending InstanceType too; GPU 2 works, the others idle, and GPU 3
    # misses the newest minute.
    traces = {
        0: constant(0, 300, 60),
        1: constant(1, 300, 60),
        2: constant(0, 300, 30) + constant(80, 15000, 30),
        3: [*constant(2, 300, 59), Reading(None)],
    }
    put_gpu_metrics(
        cloudwatch, multi, 4, traces, now, extra_dimensions={"InstanceType": "g5.12xlarge"}
    )
    put_gpu_metrics(cloudwatch, single, 1, constant(50, 8000, 60), now)
    put_gpu_metrics(cloudwatch, stranger, 1, constant(50, 8000, 5), now)
    put_datums(cloudwatch, gpu_datums(elsewhere, 1, constant(99, 1, 5), now), namespace="Other")

    provider = provider_for(aws_wire, aws_gpu_catalog)
    instances = [i for i in provider.discover().instances if i.instance_id != stranger]
    result = dict(
        provider.utilisation(instances, now - timedelta(hours=1), now + timedelta(seconds=30))
    )

    by_id = {i.instance_id: result[i.key] for i in instances}
    m = by_id[multi]
    assert m.error is None
    assert (m.gpus_reporting, m.period_s) == (4, 60)
    assert len(m.samples) == 60
    assert [s.gpu_util_pct for s in m.samples[:30]] == [2.0] * 30
    assert [s.gpu_util_pct for s in m.samples[30:]] == [80.0] * 30
    assert m.samples[29].mem_used_mib == 300.0
    assert m.samples[30].mem_used_mib == 15000.0
    assert all(s.complete for s in m.samples[:-1])
    assert m.samples[-1].complete is False  # GPU 3 did not report: the minute proves nothing
    assert m.samples[-1].at == now
    s = by_id[single]
    assert [x.gpu_util_pct for x in s.samples] == [50.0] * 60
    assert s.gpus_reporting == 1
    assert (by_id[elsewhere].error or "").startswith("no nvidia_smi_utilization_gpu series")

    # Exactly the seeded sets, each once, in the agent's order; nothing for the stranger.
    host_dims = {d["Name"]: d["Value"] for d in gpu_datums(multi, 4, traces, now)[0]["Dimensions"]}
    expected: set[tuple[str, Any]] = set()
    for metric in (UTIL, MEM):
        for index in range(4):
            expected.add(
                (
                    metric,
                    (
                        ("InstanceId", multi),
                        ("host", host_dims["host"]),
                        ("index", str(index)),
                        ("name", "NVIDIA A10G"),
                        ("InstanceType", "g5.12xlarge"),
                    ),
                )
            )
        single_dims = gpu_datums(single, 1, constant(1, 1, 1), now)[0]["Dimensions"]
        expected.add((metric, tuple((d["Name"], d["Value"]) for d in single_dims)))
    sent = dims_sent(aws_wire)
    assert len(sent) == len(set(sent)) == 10
    assert set(sent) == expected
    (call,) = aws_wire.sent("cloudwatch:GetMetricData")
    for query in call.params["MetricDataQueries"]:
        assert query["MetricStat"]["Stat"] == "Maximum"
        assert query["MetricStat"]["Period"] == 60
        assert query["MetricStat"]["Metric"]["Namespace"] == "CWAgent"
    assert call.params["ScanBy"] == "TimestampAscending"
    assert call.params["StartTime"] == now - timedelta(hours=1)
    assert call.params["EndTime"] == now + timedelta(minutes=1)  # aligned to the period
    # One listing per metric and region with instances (pages aside), never one per instance.
    listings = aws_wire.sent("cloudwatch:ListMetrics")
    assert {(c.region, c.params["MetricName"]) for c in listings} == {
        ("us-east-1", UTIL),
        ("us-east-1", MEM),
    }
    for c in listings:
        assert c.params["Namespace"] == "CWAgent"
        assert c.params["RecentlyActive"] == "PT3H"
        assert "Dimensions" not in c.params


def test_300_instances_of_2_gpus_take_3_calls_of_at_most_500_queries(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    ec2, cloudwatch = moto_server.client("ec2"), moto_server.client("cloudwatch")
    now = now_minute()
    ids = launch_gpu_instances(ec2, "g7.12xlarge", count=300)  # 2 GPUs each
    # One datum per series, before the window: listed, but cheap for moto to scan.
    datums = []
    for instance_id in ids:
        datums += gpu_datums(instance_id, 2, [Reading(1, 1)], now - timedelta(hours=2))
    put_datums(cloudwatch, datums)

    provider = provider_for(aws_wire, aws_gpu_catalog)
    instances = provider.discover().instances
    assert len(instances) == 300
    assert {i.gpu_count for i in instances} == {2}
    entries = provider.utilisation(instances, now - timedelta(minutes=30), now)
    assert not aws_wire.sent("cloudwatch:ListMetrics")  # lazy: nothing is fetched until asked
    pairs = list(entries)
    result = dict(pairs)
    assert len(pairs) == len(result) == 300  # every instance exactly once

    calls = aws_wire.sent("cloudwatch:GetMetricData")
    sizes = [len(c.params["MetricDataQueries"]) for c in calls]
    assert sizes == [500, 500, 200]
    assert len(set(dims_sent(aws_wire))) == 1200
    for call in calls:  # an instance's four queries are never split across calls
        per_instance: dict[str, int] = {}
        for query in call.params["MetricDataQueries"]:
            dims = {d["Name"]: d["Value"] for d in query["MetricStat"]["Metric"]["Dimensions"]}
            per_instance[dims["InstanceId"]] = per_instance.get(dims["InstanceId"], 0) + 1
        assert set(per_instance.values()) == {4}
    assert all(result[i.key].error is None for i in instances)
    assert all(result[i.key].samples == () for i in instances)  # no data in the window


def test_an_instance_without_the_agent_gets_a_clear_error(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    (bare,) = launch_gpu_instances(moto_server.client("ec2"), "g5.xlarge")
    provider = provider_for(aws_wire, aws_gpu_catalog)
    (instance,) = provider.discover().instances
    result = dict(provider.utilisation([instance], now_minute() - timedelta(hours=1), now_minute()))
    assert result[instance.key].error == (
        f"no nvidia_smi_utilization_gpu series in CWAgent for {bare} reporting in the last 3 h: "
        "install the CloudWatch agent with the nvidia_gpu plugin (append_dimensions InstanceId)"
    )
    assert aws_wire.sent("cloudwatch:GetMetricData") == []  # nothing to ask for


def test_a_failed_batch_costs_only_its_instances_and_never_raises(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    ec2, cloudwatch = moto_server.client("ec2"), moto_server.client("cloudwatch")
    now = now_minute()
    ids = launch_gpu_instances(ec2, "g5.xlarge", count=3)
    for instance_id in ids:
        put_gpu_metrics(cloudwatch, instance_id, 1, constant(40, 100, 3), now)
    # Two queries per call: one instance per call. The first call is throttled.
    provider = provider_for(aws_wire, aws_gpu_catalog, limits=AwsLimits(metric_queries=2))
    instances = provider.discover().instances
    aws_wire.fail("cloudwatch:GetMetricData", "Throttling", status=400, times=1)
    result = dict(provider.utilisation(instances, now - timedelta(minutes=10), now))
    errors = [result[i.key].error for i in instances]
    assert sum(e is not None for e in errors) == 1
    (error,) = [e for e in errors if e]
    assert error.startswith("cloudwatch:GetMetricData: Throttling")
    fine = [result[i.key] for i in instances if result[i.key].error is None]
    assert all([s.gpu_util_pct for s in u.samples] == [40.0] * 3 for u in fine)
    assert len(aws_wire.sent("cloudwatch:GetMetricData")) == 3


def test_a_denied_listing_fails_its_region_only(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    now = now_minute()
    (east,) = launch_gpu_instances(moto_server.client("ec2"), "g5.xlarge")
    (west,) = launch_gpu_instances(moto_server.client("ec2", "eu-west-1"), "g5.xlarge")
    put_gpu_metrics(moto_server.client("cloudwatch"), east, 1, constant(5, 5, 3), now)
    put_gpu_metrics(moto_server.client("cloudwatch", "eu-west-1"), west, 1, constant(5, 5, 3), now)
    aws_wire.fail("cloudwatch:ListMetrics", "AccessDenied", status=403, region="eu-west-1")
    provider = provider_for(aws_wire, aws_gpu_catalog)
    instances = {i.instance_id: i for i in provider.discover().instances}
    result = dict(provider.utilisation(list(instances.values()), now - timedelta(minutes=10), now))
    assert result[instances[east].key].error is None
    assert len(result[instances[east].key].samples) == 3
    west_error = result[instances[west].key].error
    assert west_error is not None
    assert west_error.startswith("cloudwatch:ListMetrics: AccessDenied")


def test_configured_namespace_metric_names_and_period_are_used(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    now = now_minute().replace(minute=(now_minute().minute // 5) * 5)
    (instance_id,) = launch_gpu_instances(moto_server.client("ec2"), "g5.xlarge")
    datums = gpu_datums(
        instance_id,
        1,
        constant(7, 70, 3),
        now,
        period_s=300,
        util_metric="gpu_util",
        mem_metric="gpu_mem",
    )
    put_datums(moto_server.client("cloudwatch"), datums, namespace="Custom/GPU")
    metrics = {"namespace": "Custom/GPU", "gpu_util": "gpu_util", "gpu_mem_used": "gpu_mem"}
    provider = provider_for(aws_wire, aws_gpu_catalog, metrics={**metrics, "period": 300})
    instances = provider.discover().instances
    result = dict(provider.utilisation(instances, now - timedelta(minutes=30), now))
    utilisation = result[instances[0].key]
    assert utilisation.period_s == 300
    assert [(s.gpu_util_pct, s.mem_used_mib) for s in utilisation.samples] == [(7.0, 70.0)] * 3
    (call,) = aws_wire.sent("cloudwatch:GetMetricData")
    stats = [q["MetricStat"] for q in call.params["MetricDataQueries"]]
    assert {s["Metric"]["Namespace"] for s in stats} == {"Custom/GPU"}
    assert {s["Metric"]["MetricName"] for s in stats} == {"gpu_util", "gpu_mem"}
    assert {s["Period"] for s in stats} == {300}


def test_every_instance_gets_an_entry_even_from_an_unknown_account(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    provider = provider_for(aws_wire, aws_gpu_catalog)
    ghost = GpuInstance(
        provider="aws",
        account="999999999999",
        region="us-east-1",
        zone="us-east-1a",
        instance_id="i-0123456789abcdef0",
        instance_type="g5.xlarge",
        launch_time=datetime.now(UTC) - timedelta(days=1),
        gpu_count=1,
    )
    result = dict(
        provider.utilisation([ghost], datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC))
    )
    assert "999999999999" in (result[ghost.key].error or "")


def test_each_region_gets_its_own_metrics(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    """Regions are read in parallel and merged: query ids must not collide across them."""
    now = now_minute()
    values = {"us-east-1": 91.0, "eu-west-1": 7.0}
    for region, util in values.items():
        ec2 = moto_server.client("ec2", region)
        (instance_id,) = launch_gpu_instances(ec2, "g5.xlarge")
        put_gpu_metrics(
            moto_server.client("cloudwatch", region), instance_id, 1, constant(util, 500, 30), now
        )
    provider = provider_for(aws_wire, aws_gpu_catalog)
    instances = provider.discover().instances
    assert {i.region for i in instances} == set(values)
    result = dict(provider.utilisation(instances, now - timedelta(hours=1), now))
    for instance in instances:
        samples = result[instance.key].samples
        assert samples, result[instance.key].error
        assert {s.gpu_util_pct for s in samples} == {values[instance.region]}
    ids = [
        q["Id"]
        for c in aws_wire.sent("cloudwatch:GetMetricData")
        for q in c.params["MetricDataQueries"]
    ]
    assert len(ids) == len(set(ids)) == 4
