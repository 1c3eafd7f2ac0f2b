"""docs/iam-policy.json and docs/iam-policy-standby.json say what docs/enforcement.md says: the
calls guardian makes are allowed, a stop of what a controller owns is denied outright (a second
lock behind guardian's own), and Standby exists only in the standby file, never for EKS."""

from __future__ import annotations

import pytest

from tests.iam import BASE, STANDBY, allowed, group_arn, instance_arn, load

# Every AWS call `guardian run` makes in mode: enforce (audit and notify make a subset).
DAEMON_CALLS = [
    "ec2:DescribeRegions",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeInstanceTypeOfferings",
    "ec2:DescribeInstances",
    "ec2:DescribeSpotInstanceRequests",
    "ec2:DescribeInstanceAttribute",
    "cloudwatch:ListMetrics",
    "cloudwatch:GetMetricData",
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeAutoScalingInstances",
]
OWNERS = {
    "aws:autoscaling:groupName": "gpu-pool",
    "eks:nodegroup-name": "gpu-ng",
    "eks:cluster-name": "prod",
    "karpenter.sh/nodepool": "gpu",
    "aws:ec2:fleet-id": "fleet-0abc",
    "aws:ec2spot:fleet-request-id": "sfr-0abc",
    "AWSBatchServiceTag": "batch-ce",
    "parallelcluster:cluster-name": "hpc",
    "aws:elasticmapreduce:job-flow-id": "j-0abc",
}


@pytest.mark.parametrize("path", [BASE, STANDBY], ids=["base", "standby"])
def test_every_call_guardian_makes_is_allowed(path: object) -> None:
    policy = load(path)  # type: ignore[arg-type]
    for action in DAEMON_CALLS:
        assert allowed(policy, action), action
    assert allowed(policy, "ec2:StopInstances", instance_arn("i-plain"))
    assert not allowed(policy, "ec2:TerminateInstances", instance_arn("i-plain"))
    assert not allowed(
        policy, "ec2:StopInstances", instance_arn("i-kept"), {"guardian:protect": "TRUE"}
    )


@pytest.mark.parametrize(("tag", "value"), sorted(OWNERS.items()))
def test_the_base_policy_never_stops_what_a_controller_owns(tag: str, value: str) -> None:
    assert not allowed(load(BASE), "ec2:StopInstances", instance_arn("i-owned"), {tag: value})


def test_standby_mode_stops_plain_group_members_only() -> None:
    policy = load(STANDBY)
    member = {"aws:autoscaling:groupName": "gpu-pool"}
    assert allowed(policy, "autoscaling:EnterStandby", group_arn("gpu-pool"))
    assert allowed(policy, "ec2:StopInstances", instance_arn("i-member"), member)
    # An EKS managed node group's instances are in an Auto Scaling group too: still denied.
    eks = {**member, "eks:cluster-name": "prod", "eks:nodegroup-name": "gpu-ng"}
    assert not allowed(policy, "ec2:StopInstances", instance_arn("i-node"), eks)
    assert not allowed(policy, "autoscaling:EnterStandby", group_arn("eks-ng"), eks)
    assert not allowed(policy, "autoscaling:TerminateInstanceInAutoScalingGroup", group_arn("g"))
    assert not allowed(load(BASE), "autoscaling:EnterStandby", group_arn("gpu-pool"))
