"""The simulated AWS: seeding helpers send what the real agent and EC2 would hold."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from guardian.providers.aws.discovery import GpuTypeCatalog
from guardian.simulated import moto_speedups
from guardian.simulated.aws import (
    MAX_DATUMS_PER_CALL,
    Reading,
    SimInstance,
    backdate_launch,
    constant,
    launch_gpu_instances,
    put_gpu_metrics,
    seed_fleet,
)
from tests.clock import at
from tests.conftest import AwsWire, MotoServer

NOW = at(12, 34, 56)  # off the minute: the newest datum is on it
UTIL = "nvidia_smi_utilization_gpu"


def test_put_gpu_metrics_uses_the_agent_schema_in_calls_of_at_most_1000(
    moto_server: MotoServer, aws_wire: AwsWire
) -> None:
    cloudwatch = aws_wire.session.client("cloudwatch", region_name="us-east-1")
    readings = [*constant(10, 500, 199), Reading(None, 600)]  # the newest util is missing
    sent = put_gpu_metrics(cloudwatch, "i-0abc", 3, readings, NOW, gpu_name="NVIDIA L4")

    calls = aws_wire.sent("cloudwatch:PutMetricData")
    assert [len(c.params["MetricData"]) for c in calls] == [MAX_DATUMS_PER_CALL, 197]
    assert sent == 3 * (199 + 200)
    datums = [d for c in calls for d in c.params["MetricData"]]
    assert {c.params["Namespace"] for c in calls} == {"CWAgent"}
    util = [d for d in datums if d["MetricName"] == "nvidia_smi_utilization_gpu"]
    mem = [d for d in datums if d["MetricName"] == "nvidia_smi_memory_used"]
    assert (len(util), len(mem)) == (3 * 199, 3 * 200)
    assert {d["Unit"] for d in util} == {"Percent"}
    assert {d["Unit"] for d in mem} == {"Megabytes"}
    first = util[0]["Dimensions"]
    assert [d["Name"] for d in first] == ["InstanceId", "host", "index", "name"]
    assert (first[0]["Value"], first[2]["Value"], first[3]["Value"]) == ("i-0abc", "0", "NVIDIA L4")
    assert {d["Dimensions"][2]["Value"] for d in util} == {"0", "1", "2"}
    newest = at(12, 34)
    stamps = sorted({d["Timestamp"] for d in mem})
    assert stamps[-1] == newest
    assert stamps[0] == newest - timedelta(minutes=199)
    assert max(d["Timestamp"] for d in util) == newest - timedelta(minutes=1)


def test_per_gpu_traces(moto_server: MotoServer, aws_wire: AwsWire) -> None:
    cloudwatch = aws_wire.session.client("cloudwatch", region_name="us-east-1")
    traces = {0: constant(0, 0, 2), 3: constant(90, 1000, 2)}
    put_gpu_metrics(cloudwatch, "i-0abc", 4, traces, NOW)
    (call,) = aws_wire.sent("cloudwatch:PutMetricData")
    by_index = {
        (d["Dimensions"][2]["Value"], d["MetricName"]): d["Value"]
        for d in call.params["MetricData"]
    }
    assert by_index[("3", "nvidia_smi_utilization_gpu")] == 90.0
    assert by_index[("0", "nvidia_smi_memory_used")] == 0.0
    assert {k[0] for k in by_index} == {"0", "3"}


def test_instances_launch_as_asked_and_can_be_backdated(moto_server: MotoServer) -> None:
    ec2 = moto_server.client("ec2")
    long_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    ids = launch_gpu_instances(
        ec2, "g6.xlarge", count=2, tags={"owner": "ann"}, zone="us-east-1c", launched_at=long_ago
    )
    (spot,) = launch_gpu_instances(ec2, "g6.xlarge", spot="persistent", tags={"owner": "bo"})
    described = {
        i["InstanceId"]: i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
    }
    for instance_id in ids:
        instance = described[instance_id]
        assert instance["LaunchTime"] == long_ago
        assert instance["Placement"]["AvailabilityZone"] == "us-east-1c"
        assert instance["Tags"] == [{"Key": "owner", "Value": "ann"}]
    assert described[spot]["InstanceLifecycle"] == "spot"
    assert described[spot]["LaunchTime"] > long_ago
    requests = ec2.describe_spot_instance_requests()["SpotInstanceRequests"]
    assert [(r["InstanceId"], r["Type"]) for r in requests] == [(spot, "persistent")]
    backdate_launch(ec2, [spot], long_ago)
    again = ec2.describe_instances(InstanceIds=[spot])["Reservations"][0]["Instances"][0]
    assert again["LaunchTime"] == long_ago


def test_seed_fleet_packs_many_instances_into_full_calls(
    moto_server: MotoServer, aws_wire: AwsWire
) -> None:
    ec2 = aws_wire.session.client("ec2", region_name="us-east-1")
    cloudwatch = aws_wire.session.client("cloudwatch", region_name="us-east-1")
    fleet = [
        SimInstance("g5.xlarge", constant(0, 100, 150), count=4, tags={"team": "a"}),
        SimInstance("g7.12xlarge", constant(80, 9000, 50), hibernation=True),
        SimInstance("g4dn.xlarge", None, spot="one-time", age=timedelta(hours=2)),
    ]
    seeded = seed_fleet(ec2, cloudwatch, fleet, NOW)
    assert [spec.instance_type for _, spec in seeded] == ["g5.xlarge"] * 4 + [
        "g7.12xlarge",
        "g4dn.xlarge",
    ]
    calls = aws_wire.sent("cloudwatch:PutMetricData")
    # 4 x 1 GPU x 2 metrics x 150 + 1 x 2 GPUs x 2 x 50 = 1400 datums: two calls, not five.
    assert [len(c.params["MetricData"]) for c in calls] == [1000, 400]
    described = {
        i["InstanceId"]: i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
    }
    assert {described[i]["LaunchTime"] for i, _ in seeded[:4]} == {NOW - timedelta(days=1)}
    assert described[seeded[4][0]]["HibernationOptions"] == {"Configured": True}
    assert described[seeded[5][0]]["InstanceLifecycle"] == "spot"
    assert described[seeded[0][0]]["Tags"] == [{"Key": "team", "Value": "a"}]


def test_spot_hibernation_is_refused_rather_than_faked(moto_server: MotoServer) -> None:
    with pytest.raises(ValueError, match="on-demand"):
        launch_gpu_instances(
            moto_server.client("ec2"), "g5.xlarge", spot="persistent", hibernation=True
        )


# -- the indexed metric store -------------------------------------------------------------------


@pytest.fixture
def indexed(moto_server: MotoServer) -> Iterator[MotoServer]:
    moto_speedups.install()
    try:
        yield moto_server
    finally:
        moto_speedups.uninstall()
        moto_server.reset()  # drop the indexed data along with the index


def test_the_indexed_store_lists_each_series_once_and_reads_a_day_of_a_fleet(
    indexed: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    ec2, cloudwatch = indexed.client("ec2"), indexed.client("cloudwatch")
    now = datetime.now(UTC).replace(microsecond=0)
    fleet = [SimInstance("g5.12xlarge", constant(2, 100, 1440), count=10, age=timedelta(days=2))]
    seeded = seed_fleet(ec2, cloudwatch, fleet, now, in_process=True)  # 115,200 datums
    instance_id = seeded[0][0]
    listed = cloudwatch.list_metrics(Namespace="CWAgent", MetricName=UTIL)["Metrics"]
    assert len(listed) == 40  # one per series, not one per datum as stock moto lists them
    described = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"]
    assert described[0]["LaunchTime"] == now - timedelta(days=2)

    from guardian.config import Config
    from guardian.providers.aws.provider import AwsProvider

    provider = AwsProvider(Config(), session=aws_wire.session, catalog=aws_gpu_catalog)
    instances = provider.discover().instances
    result = dict(provider.utilisation(instances, now - timedelta(hours=24), now))
    assert {len(result[i.key].samples) for i in instances} == {1440}
    assert {result[i.key].gpus_reporting for i in instances} == {4}
    # 80 series of 1441 minutes: at most 69 queries a call (one page), whole instances: 64 + 16.
    sizes = [len(c.params["MetricDataQueries"]) for c in aws_wire.sent("cloudwatch:GetMetricData")]
    assert sorted(sizes) == [16, 64]
