"""What the AWS provider does to one instance: stop it, read its stop protection, re-read it,
and — for a plain Auto Scaling group's member — put it into Standby before stopping it.

Each function takes the clients it needs and makes the fewest calls: the node agent re-reads
its own instance with one DescribeInstances (and one DescribeInstanceTypes the first time),
never a region's discovery. Nothing here terminates or deletes: StopInstances and
EnterStandby (with the desired capacity decremented, so the group launches no replacement) are
the only calls that change anything.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from guardian.errors import ProviderError, Unavailable
from guardian.model import GpuInstance, ScalingGroup
from guardian.policy import controller_label
from guardian.providers import StopResult
from guardian.providers.aws.errors import error_code, map_aws_error

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import InstanceTypeDef

__all__ = [
    "PERMANENT_STOP_CODES",
    "describe_groups",
    "describe_running",
    "read_stop_protection",
    "refusal",
    "restart_commands",
    "standby_then_stop",
    "stop_instance",
]

# StopInstances answers these for an instance it will never stop: DisableApiStop is set, or
# the instance cannot be stopped at all (an instance-store root). Retrying cannot help.
PERMANENT_STOP_CODES = frozenset({"OperationNotPermitted", "UnsupportedOperation"})
_GROUP_NAMES_PER_CALL = 50  # DescribeAutoScalingGroups: at most 50 names... and 100 a page


def refusal(instance: GpuInstance) -> str | None:
    """Why the provider itself will never send this instance a StopInstances."""
    if instance.spot_one_time:
        return (
            "a one-time spot instance cannot be stopped, only terminated, "
            "and guardian never terminates"
        )
    if instance.managed_by is not None:
        owner = instance.managed_by
        return (
            f"managed by {controller_label(owner.kind)} {owner.name}, which would replace a "
            "stopped instance: not stopped"
        )
    return None


def stop_instance(ec2: EC2Client, instance: GpuInstance, *, hibernate: bool) -> StopResult:
    """StopInstances, with Hibernate only when asked and configured on the instance."""
    hibernating = hibernate and instance.hibernation_configured
    action = "hibernate" if hibernating else "stop"
    try:
        response = ec2.stop_instances(InstanceIds=[instance.instance_id], Hibernate=hibernating)
    except Exception as exc:
        error = map_aws_error(exc, operation="ec2:StopInstances")
        permanent = error_code(exc) in PERMANENT_STOP_CODES
        # Throttled or denied: nothing happened. Unavailable: the answer was lost, not
        # necessarily the stop.
        lost = isinstance(error, Unavailable)
        return StopResult(
            instance.key, False, action, str(error), permanent=permanent, unconfirmed=lost
        )
    states = {
        change.get("InstanceId"): change.get("CurrentState", {}).get("Name", "?")
        for change in response.get("StoppingInstances", [])
    }
    state = states.get(instance.instance_id)
    if state not in ("stopping", "stopped"):
        return StopResult(
            instance.key, False, action, f"StopInstances left it {state or 'unchanged'}"
        )
    message = f"instance is {state}"
    if hibernate and not hibernating:
        message += " (hibernation is not configured on it, so it was stopped instead)"
    return StopResult(instance.key, True, action, message)


def read_stop_protection(ec2: EC2Client, instance_id: str) -> bool:
    """``DisableApiStop``: one DescribeInstanceAttribute."""
    response = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="disableApiStop")
    return bool(response.get("DisableApiStop", {}).get("Value", False))


def describe_running(ec2: EC2Client, instance_id: str) -> InstanceTypeDef:
    """One instance by id (one DescribeInstances); ProviderError unless it is running."""
    response = ec2.describe_instances(InstanceIds=[instance_id])
    found = [i for r in response["Reservations"] for i in r.get("Instances", [])]
    if not found:
        raise ProviderError(f"instance {instance_id} not found", provider="aws")
    raw = found[0]
    state = raw.get("State", {}).get("Name")
    if state != "running":
        raise ProviderError(f"instance {instance_id} is {state}, not running", provider="aws")
    return raw


def _chunks(names: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(names), size):
        yield names[start : start + size]


def describe_groups(autoscaling: Any, names: Sequence[str]) -> dict[str, ScalingGroup]:
    """Capacity and Standby members of the named groups: DescribeAutoScalingGroups, batched."""
    found: dict[str, ScalingGroup] = {}
    paginator = autoscaling.get_paginator("describe_auto_scaling_groups")
    for chunk in _chunks(sorted(set(names)), _GROUP_NAMES_PER_CALL):
        for page in paginator.paginate(AutoScalingGroupNames=list(chunk)):
            for group in page.get("AutoScalingGroups", []):
                standby = frozenset(
                    member["InstanceId"]
                    for member in group.get("Instances", [])
                    if str(member.get("LifecycleState", "")).startswith(("Standby", "Entering"))
                )
                found[group["AutoScalingGroupName"]] = ScalingGroup(
                    name=group["AutoScalingGroupName"],
                    min_size=int(group["MinSize"]),
                    desired=int(group["DesiredCapacity"]),
                    max_size=int(group["MaxSize"]),
                    standby=standby,
                )
    return found


def restart_commands(instance: GpuInstance, group: str | None) -> list[str]:
    """The commands that bring a stopped (and Standby) instance back."""
    region, instance_id = instance.region, instance.instance_id
    commands = [f"aws ec2 start-instances --region {region} --instance-ids {instance_id}"]
    if group is not None:
        commands.append(
            f"aws autoscaling exit-standby --region {region} --auto-scaling-group-name {group} "
            f"--instance-ids {instance_id}"
        )
    return commands


def standby_then_stop(
    autoscaling: Any, ec2: EC2Client, instance: GpuInstance, *, hibernate: bool
) -> StopResult:
    """EnterStandby with ShouldDecrementDesiredCapacity (never below the group's minimum),
    then StopInstances. A member already in Standby is only stopped; an instance no longer in
    any group is a plain instance and is only stopped."""
    action = "standby+stop"
    instance_id = instance.instance_id
    try:
        members = autoscaling.describe_auto_scaling_instances(InstanceIds=[instance_id])
        member = next(iter(members.get("AutoScalingInstances", [])), None)
        group_name: str | None = str(member["AutoScalingGroupName"]) if member else None
        state = str(member.get("LifecycleState", "")) if member else ""
        if group_name is not None and state == "InService":
            group = describe_groups(autoscaling, [group_name]).get(group_name)
            if group is None or group.desired - 1 < group.min_size:
                capacity = f"min {group.min_size} / desired {group.desired}" if group else "?"
                return StopResult(
                    instance.key,
                    False,
                    action,
                    f"Auto Scaling group {group_name} ({capacity}): Standby would take it below "
                    "its minimum; not stopped",
                )
            autoscaling.enter_standby(
                InstanceIds=[instance_id],
                AutoScalingGroupName=group_name,
                ShouldDecrementDesiredCapacity=True,
            )
        elif group_name is not None and not state.startswith(("Standby", "Entering")):
            return StopResult(
                instance.key,
                False,
                action,
                f"it is {state} in Auto Scaling group {group_name}: left alone",
            )
    except Exception as exc:
        operation = "autoscaling:EnterStandby"
        if isinstance(exc, ClientError) and exc.operation_name:
            operation = f"autoscaling:{exc.operation_name}"
        return StopResult(instance.key, False, action, str(map_aws_error(exc, operation=operation)))
    result = stop_instance(ec2, instance, hibernate=hibernate)
    back = "; ".join(restart_commands(instance, group_name))
    where = f" in Standby in Auto Scaling group {group_name}" if group_name else ""
    message = f"{result.message}{where}; to bring it back: {back}"
    return StopResult(
        instance.key,
        result.ok,
        action,
        message,
        permanent=result.permanent,
        unconfirmed=result.unconfirmed,
    )
