"""Per-instance series (host CPU, the agent's local-disk and notebook signals) read beside the
GPUs' series: in the same GetMetricData calls on AWS (moto), one more query per project and
metric on GCP (the Monitoring fake). Optional: a missing or failed one leaves only itself out.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from guardian.config import Config
from guardian.model import InstanceMetric
from guardian.providers.aws.discovery import GpuTypeCatalog
from guardian.providers.aws.metrics import InstanceSeriesSpec
from guardian.providers.aws.provider import AwsProvider
from guardian.providers.gcp.metrics import GcpInstanceSeriesSpec
from guardian.simulated.aws import constant, launch_gpu_instances, put_datums, put_gpu_metrics
from tests.conftest import AwsWire, MotoServer
from tests.fakes.gcp_monitoring import FakeTimeSeries, GpuTrace, ops_agent_series
from tests.integration.test_gcp_provider import NOW, Fakes, _minutes, fakes  # noqa: F401

DISK = InstanceSeriesSpec(InstanceMetric.LOCAL_DISK_USED_MIB, "CWAgent", "guardian_local_disk_used")
CPU = InstanceSeriesSpec(InstanceMetric.HOST_CPU_PCT, "AWS/EC2", "CPUUtilization", listed=False)


def _minute() -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0)


def _instance_datums(
    instance_id: str, metric: str, values: list[float], now: datetime, **extra: str
) -> list[dict[str, Any]]:
    dims = [{"Name": "InstanceId", "Value": instance_id}]
    dims += [{"Name": k, "Value": v} for k, v in extra.items()]
    start = now - timedelta(minutes=len(values) - 1)
    return [
        {
            "MetricName": metric,
            "Dimensions": dims,
            "Timestamp": start + timedelta(minutes=i),
            "Value": value,
        }
        for i, value in enumerate(values)
    ]


def test_aws_reads_listed_and_direct_instance_series_in_the_gpu_calls(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    ec2, cloudwatch = moto_server.client("ec2"), moto_server.client("cloudwatch")
    now = _minute()
    with_disk, without_disk = launch_gpu_instances(ec2, "g5.xlarge", count=2)
    for instance_id in (with_disk, without_disk):
        put_gpu_metrics(cloudwatch, instance_id, 1, constant(0, 300, 10), now)
    put_datums(cloudwatch, _instance_datums(with_disk, DISK.metric, [10.0, 20.0, 5.0], now))
    put_datums(
        cloudwatch, _instance_datums(with_disk, CPU.metric, [30.0, 70.0], now), namespace="AWS/EC2"
    )
    provider = AwsProvider(
        Config.model_validate({"aws": {"regions": ["us-east-1"]}}),
        session=aws_wire.session,
        catalog=aws_gpu_catalog,
        instance_series=(DISK, CPU),
    )
    instances = provider.discover().instances
    result = dict(provider.utilisation(instances, now - timedelta(minutes=30), now))

    by_id = {i.instance_id: result[i.key] for i in instances}
    disk = by_id[with_disk].instance_series[InstanceMetric.LOCAL_DISK_USED_MIB]
    assert [value for _, value in disk] == [10.0, 20.0, 5.0]
    assert by_id[with_disk].newest(InstanceMetric.LOCAL_DISK_USED_MIB) == (now, 5.0)
    assert [v for _, v in by_id[with_disk].instance_series[InstanceMetric.HOST_CPU_PCT]] == [
        30.0,
        70.0,
    ]
    # No local-disk series: no entry (not 0), and the GPUs are measured all the same.
    assert by_id[without_disk].error is None
    assert InstanceMetric.LOCAL_DISK_USED_MIB not in by_id[without_disk].instance_series
    assert by_id[without_disk].newest(InstanceMetric.LOCAL_DISK_USED_MIB) is None

    # One GetMetricData call carries all of it; the listed series was listed once per region,
    # the direct one (AWS/EC2) never: it is queried by exactly {InstanceId} for each instance.
    (call,) = aws_wire.sent("cloudwatch:GetMetricData")
    sent = {
        (
            q["MetricStat"]["Metric"]["Namespace"],
            q["MetricStat"]["Metric"]["MetricName"],
            tuple((d["Name"], d["Value"]) for d in q["MetricStat"]["Metric"]["Dimensions"]),
        )
        for q in call.params["MetricDataQueries"]
    }
    assert ("CWAgent", DISK.metric, (("InstanceId", with_disk),)) in sent
    assert ("CWAgent", DISK.metric, (("InstanceId", without_disk),)) not in sent
    for instance_id in (with_disk, without_disk):
        assert ("AWS/EC2", CPU.metric, (("InstanceId", instance_id),)) in sent
    listed = {
        (c.params["Namespace"], c.params["MetricName"])
        for c in aws_wire.sent("cloudwatch:ListMetrics")
    }
    assert ("CWAgent", DISK.metric) in listed
    assert ("AWS/EC2", CPU.metric) not in listed


def test_gcp_reads_each_instance_series_with_one_query_per_project(fakes: Fakes) -> None:  # noqa: F811
    from tests.fakes.gcp_compute import FakeVm

    fakes.cs.add("proj-a", [FakeVm("nb", "us-central1-a", "g2-standard-8")])
    fakes.cs.add("proj-a", [FakeVm("other", "us-central1-a", "g2-standard-8")])
    for name in ("nb", "other"):
        vm = fakes.cs.vm("proj-a", name)
        fakes.ms.series.extend(ops_agent_series("proj-a", vm, [GpuTrace(_minutes([0, 0, 0]))]))
    vm = fakes.cs.vm("proj-a", "nb")
    idle_type = "custom.googleapis.com/guardian/notebook/idle_seconds"
    fakes.ms.series.append(
        FakeTimeSeries(
            "proj-a",
            idle_type,
            {"instance_id": str(vm.instance_id), "zone": vm.zone, "project_id": "proj-a"},
            {},
            _minutes([60.0, 120.0, 180.0]),
        )
    )
    spec = GcpInstanceSeriesSpec(InstanceMetric.NOTEBOOK_IDLE_S, idle_type)
    cpu = GcpInstanceSeriesSpec(
        InstanceMetric.HOST_CPU_PCT, "compute.googleapis.com/instance/cpu/utilization", 100.0
    )
    fakes.ms.fail_metrics[cpu.metric_type] = ("PERMISSION_DENIED", "no monitoring.viewer")
    provider = fakes.provider(["proj-a"], provider_kwargs={"instance_series": (spec, cpu)})
    found = provider.discover()

    series = dict(provider.utilisation(found.instances, NOW - timedelta(hours=1), NOW))

    keys = {i.name: i.key for i in found.instances}
    nb, other = series[keys["nb"]], series[keys["other"]]
    assert nb.error is None
    assert nb.newest(InstanceMetric.NOTEBOOK_IDLE_S) == (NOW, 180.0)
    assert other.error is None
    assert other.instance_series == {}
    # A failed per-instance query costs only itself: the GPUs stay measured.
    assert InstanceMetric.HOST_CPU_PCT not in nb.instance_series
    filters = sorted(q.filter for q in fakes.ms.first_pages())
    assert filters.count(f'metric.type = "{idle_type}" AND resource.type = "gce_instance"') == 1
    assert len(filters) == 4  # util, mem, notebook idle, cpu: one each for the project
