"""An enforcing daemon over a moto fleet that looks like a real one: an Auto Scaling group, an
EKS node, stop protection, instance store with and without the agent's local-disk metric, and
plain instances. moto tags group members ``aws:autoscaling:groupName``, implements Standby
(EnterStandby with the desired capacity decremented) and enforces ``DisableApiStop``
(StopInstances answers OperationNotPermitted). What guardian sends is counted on the wire.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from guardian.config import Config
from guardian.daemon.service import Daemon
from guardian.providers import Provider
from guardian.providers.aws.discovery import GpuTypeCatalog
from guardian.providers.factory import build_provider
from guardian.simulated.aws import (
    backdate_launch,
    constant,
    launch_autoscaling_group,
    launch_gpu_instances,
    local_disk_datums,
    put_datums,
    put_gpu_metrics,
)
from tests.conftest import AwsWire, MotoServer
from tests.iam import BASE, STANDBY, allowed, group_arn, instance_arn, load

ZONE = "us-east-1a"
GRACE = timedelta(minutes=2)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


def idle(moto_server: MotoServer, ids: list[str], now: datetime) -> None:
    """An hour of every GPU at 0 % with memory released: the job has ended."""
    cloudwatch = moto_server.client("cloudwatch")
    for instance_id in ids:
        put_gpu_metrics(cloudwatch, instance_id, 1, constant(0.0, 0.0, 60), now)
    backdate_launch(moto_server.client("ec2"), ids, now - timedelta(hours=3))


def daemon(
    tmp_path: Path, wire: AwsWire, catalog: GpuTypeCatalog, clock: Clock, **enforce: Any
) -> Daemon:
    config = Config.model_validate(
        {
            "mode": "enforce",
            "state_dir": str(tmp_path / "state"),
            "metrics": {"listen": ""},
            # stock moto scans every datapoint per query and period: keep the window short
            "cost": {"lookback": "1h"},
            "idle": {"grace": "2m", "window_released": "10m"},
            "notify": {"urls": ["json://127.0.0.1:9/hook"]},  # queued; nothing listens there
            "limits": {"max_idle_fraction": 1.0},  # every instance here is idle on purpose
            "enforce": enforce,
        }
    )

    def providers(cfg: Config) -> list[Provider]:
        return [build_provider(cfg, "aws", session=wire.session, catalog=catalog)]

    return Daemon(config, providers=providers, clock=clock)


def run(d: Daemon, clock: Clock, *offsets: timedelta) -> None:
    start = clock.now
    for offset in offsets:
        clock.now = start + offset
        assert d.run_cycle() is not None


def states(moto_server: MotoServer, ids: list[str]) -> dict[str, str]:
    reservations = moto_server.client("ec2").describe_instances(InstanceIds=ids)["Reservations"]
    return {i["InstanceId"]: i["State"]["Name"] for r in reservations for i in r["Instances"]}


def sent_to(wire: AwsWire, operation: str) -> Counter[str]:
    """Calls of an instance-scoped operation, per instance id."""
    counts: Counter[str] = Counter()
    for call in wire.sent(operation):
        ids = call.params.get("InstanceIds") or [call.params.get("InstanceId")]
        counts.update(str(i) for i in ids)
    return counts


def assert_policy_allows_what_was_sent(
    moto_server: MotoServer, wire: AwsWire, policy_file: Path
) -> None:
    """Every call guardian sent is one the documented IAM policy allows (STS needs none)."""
    policy = load(policy_file)
    ec2 = moto_server.client("ec2")
    for call in wire.calls:
        if call.operation.startswith("sts:"):
            continue
        if call.operation == "ec2:StopInstances":
            for instance_id in call.params["InstanceIds"]:
                raw = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]
                tags = {t["Key"]: t["Value"] for t in raw["Instances"][0].get("Tags", [])}
                assert allowed(policy, call.operation, instance_arn(instance_id), tags), call
        elif call.operation == "autoscaling:EnterStandby":
            group = group_arn(call.params["AutoScalingGroupName"])
            assert allowed(policy, call.operation, group), call
        else:
            assert allowed(policy, call.operation), call


def alerts(d: Daemon, kind: str) -> list[str]:
    with d.store.reader() as tx:
        rows = tx.notifications_since(datetime(2000, 1, 1, tzinfo=UTC))
    return [repr(r.message) for r in rows if r.kind == kind]


def test_enforce_stops_only_what_no_one_else_owns(
    tmp_path: Path, moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    clock = Clock()
    ec2, autoscaling = moto_server.client("ec2"), moto_server.client("autoscaling")
    # g5g has no instance store (moto's catalog, like AWS's); g5 has 250 GB of NVMe.
    pool = launch_autoscaling_group(
        ec2, autoscaling, "gpu-pool", "g5g.xlarge", min_size=2, desired=2, max_size=4, zone=ZONE
    )
    [eks] = launch_gpu_instances(
        ec2, "g5g.xlarge", zone=ZONE, tags={"eks:cluster-name": "prod", "eks:nodegroup-name": "ng"}
    )
    [locked] = launch_gpu_instances(ec2, "g5g.xlarge", zone=ZONE, disable_api_stop=True)
    [locked_later] = launch_gpu_instances(ec2, "g5g.xlarge", zone=ZONE)
    [plain] = launch_gpu_instances(ec2, "g5g.xlarge", zone=ZONE)
    empty_disk, full_disk, unreported = launch_gpu_instances(ec2, "g5.xlarge", count=3, zone=ZONE)
    everyone = [*pool, eks, locked, locked_later, plain, empty_disk, full_disk, unreported]
    idle(moto_server, everyone, clock.now)
    cloudwatch = moto_server.client("cloudwatch")
    put_datums(cloudwatch, local_disk_datums(empty_disk, [0.0] * 5, clock.now))
    put_datums(cloudwatch, local_disk_datums(full_disk, [40 * 1024.0] * 5, clock.now))

    d = daemon(tmp_path, aws_wire, aws_gpu_catalog, clock)
    try:
        run(d, clock, timedelta(0))
        # Stop protection switched on after the warning: the stop itself is refused.
        ec2.modify_instance_attribute(InstanceId=locked_later, DisableApiStop={"Value": True})
        run(d, clock, GRACE, GRACE + timedelta(minutes=1))
    finally:
        d.close()

    assert states(moto_server, everyone) == {
        **dict.fromkeys(everyone, "running"),
        plain: "stopped",
        empty_disk: "stopped",
    }
    # DisableApiStop read once per instance about to be warned with a stop, never per cycle.
    assert sent_to(aws_wire, "ec2:DescribeInstanceAttribute") == Counter(
        {locked: 1, locked_later: 1, plain: 1, empty_disk: 1}
    )
    # The protected one never gets a StopInstances; the one protected later gets exactly one.
    assert sent_to(aws_wire, "ec2:StopInstances") == Counter(
        {plain: 1, empty_disk: 1, locked_later: 1}
    )
    assert aws_wire.sent("autoscaling:EnterStandby") == []
    # One alert per group, naming the controller and the knob; the group's numbers read once.
    owned = alerts(d, "owned")
    assert len(owned) == 3
    (group,) = [m for m in owned if "gpu-pool" in m]
    assert "min 2 / desired 2 keeps these idle; set min and desired to 0" in group
    (node_group,) = [m for m in owned if "EKS node group" in m]
    assert "cluster prod" in node_group
    (protected,) = [m for m in owned if "stop protection" in m]
    assert locked in protected
    assert len(aws_wire.sent("autoscaling:DescribeAutoScalingGroups")) == 1
    # The refused stop: one alert, recorded once, not retried.
    assert len(alerts(d, "stop_failed")) == 1
    # Local disks: alert-only when in use or not reported, and the warning says which.
    warnings = alerts(d, "warning")
    assert any(full_disk in w and "40.0 GiB in use" in w for w in warnings)
    assert any(unreported in w and "not reported" in w for w in warnings)
    group_now = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["gpu-pool"])
    (asg,) = group_now["AutoScalingGroups"]
    assert asg["DesiredCapacity"] == 2
    assert {m["LifecycleState"] for m in asg["Instances"]} == {"InService"}
    assert_policy_allows_what_was_sent(moto_server, aws_wire, BASE)


def test_standby_mode_stops_a_plain_group_s_members_down_to_its_minimum(
    tmp_path: Path, moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    clock = Clock()
    ec2, autoscaling = moto_server.client("ec2"), moto_server.client("autoscaling")
    pool = launch_autoscaling_group(
        ec2, autoscaling, "gpu-pool", "g5g.xlarge", min_size=1, desired=3, max_size=4, zone=ZONE
    )
    idle(moto_server, pool, clock.now)

    d = daemon(tmp_path, aws_wire, aws_gpu_catalog, clock, autoscaling_groups="standby")
    try:
        run(d, clock, timedelta(0), GRACE, GRACE + timedelta(minutes=1))
    finally:
        d.close()

    group_now = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["gpu-pool"])
    (asg,) = group_now["AutoScalingGroups"]
    assert asg["DesiredCapacity"] == 1  # decremented twice, never below the minimum
    lifecycle = {m["InstanceId"]: m["LifecycleState"] for m in asg["Instances"]}
    standby = sorted(i for i, state in lifecycle.items() if state == "Standby")
    assert len(standby) == 2
    [kept] = [i for i, state in lifecycle.items() if state == "InService"]
    assert states(moto_server, pool) == {**dict.fromkeys(standby, "stopped"), kept: "running"}
    entered = [call.params for call in aws_wire.sent("autoscaling:EnterStandby")]
    assert sorted(p["InstanceIds"][0] for p in entered) == standby
    assert all(p["ShouldDecrementDesiredCapacity"] is True for p in entered)
    assert aws_wire.sent("ec2:TerminateInstances") == []
    (stopped, _) = alerts(d, "stopped")
    assert "aws autoscaling exit-standby" in stopped
    assert "aws ec2 start-instances" in stopped
    (owned,) = alerts(d, "owned")
    assert kept in owned
    assert_policy_allows_what_was_sent(moto_server, aws_wire, STANDBY)
    # The base file refuses it.
    assert not allowed(load(BASE), "autoscaling:EnterStandby", group_arn("gpu-pool"))
