"""AwsProvider.stop against moto: stop or hibernate exactly when it should, never terminate."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from guardian.config import Config
from guardian.model import GpuInstance
from guardian.providers.aws.discovery import GpuTypeCatalog
from guardian.providers.aws.provider import AwsProvider
from guardian.simulated.aws import launch_autoscaling_group, launch_gpu_instances
from tests.conftest import AwsWire, MotoServer


def discovered(
    moto_server: MotoServer, wire: AwsWire, catalog: GpuTypeCatalog, **launch: object
) -> tuple[AwsProvider, GpuInstance]:
    (instance_id,) = launch_gpu_instances(moto_server.client("ec2"), "g5.xlarge", **launch)  # type: ignore[arg-type]
    provider = AwsProvider(Config(), session=wire.session, catalog=catalog)
    (instance,) = [i for i in provider.discover().instances if i.instance_id == instance_id]
    return provider, instance


def state(moto_server: MotoServer, instance_id: str) -> str:
    reservations = moto_server.client("ec2").describe_instances(InstanceIds=[instance_id])
    return str(reservations["Reservations"][0]["Instances"][0]["State"]["Name"])


def test_stop_stops_and_never_terminates(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    provider, instance = discovered(moto_server, aws_wire, aws_gpu_catalog)
    result = provider.stop(instance)
    assert (result.instance_key, result.ok, result.action) == (instance.key, True, "stop")
    assert state(moto_server, instance.instance_id) == "stopped"
    (call,) = aws_wire.sent("ec2:StopInstances")
    assert call.params == {"InstanceIds": [instance.instance_id], "Hibernate": False}
    assert not any("Terminate" in c.operation for c in aws_wire.calls)
    assert "ec2:TerminateInstances" not in provider.api_calls


@pytest.mark.parametrize(
    ("configured", "asked", "sent", "action"),
    [
        (True, True, True, "hibernate"),
        (False, True, False, "stop"),  # not configured: a plain stop, and the message says so
        (True, False, False, "stop"),
    ],
)
def test_hibernate_only_when_asked_and_configured(  # noqa: PLR0917 - pytest parameters
    moto_server: MotoServer,
    aws_wire: AwsWire,
    aws_gpu_catalog: GpuTypeCatalog,
    configured: bool,
    asked: bool,
    sent: bool,
    action: str,
) -> None:
    provider, instance = discovered(moto_server, aws_wire, aws_gpu_catalog, hibernation=configured)
    assert instance.hibernation_configured is configured
    result = provider.stop(instance, hibernate=asked)
    assert (result.ok, result.action) == (True, action)
    (call,) = aws_wire.sent("ec2:StopInstances")
    assert call.params["Hibernate"] is sent
    assert ("not configured" in result.message) is (asked and not configured)


def test_a_one_time_spot_instance_is_never_sent_a_stop(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    provider, instance = discovered(moto_server, aws_wire, aws_gpu_catalog, spot="one-time")
    result = provider.stop(instance)
    assert result.ok is False
    assert "one-time spot" in result.message
    assert aws_wire.sent("ec2:StopInstances") == []
    assert state(moto_server, instance.instance_id) == "running"


def test_a_persistent_spot_instance_can_be_stopped(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    provider, instance = discovered(moto_server, aws_wire, aws_gpu_catalog, spot="persistent")
    assert provider.stop(instance).ok is True
    assert state(moto_server, instance.instance_id) == "stopped"


def test_a_failed_stop_is_a_result_not_an_exception(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    provider, instance = discovered(moto_server, aws_wire, aws_gpu_catalog)
    gone = replace(instance, instance_id="i-0000000000000dead")
    result = provider.stop(gone)
    assert result.ok is False
    assert result.message.startswith("ec2:StopInstances: InvalidInstanceID.NotFound")
    aws_wire.fail("ec2:StopInstances", "UnauthorizedOperation", status=403)
    denied = provider.stop(instance)
    assert denied.ok is False
    assert "UnauthorizedOperation" in denied.message
    assert state(moto_server, instance.instance_id) == "running"


def test_stop_works_on_a_fresh_provider_without_discovery(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    # A restarted daemon acts on a stored finding before its first discovery.
    _, instance = discovered(moto_server, aws_wire, aws_gpu_catalog)
    fresh = AwsProvider(Config(), session=aws_wire.session, catalog=aws_gpu_catalog)
    assert fresh.stop(instance).ok is True
    unknown = replace(instance, account="999999999999")
    result = fresh.stop(unknown)
    assert result.ok is False
    assert "999999999999" in result.message


def test_no_provider_module_can_terminate() -> None:
    """The only destructive call is stop: no AWS module of ours even names a terminating API."""
    forbidden = re.compile(r"terminate_instances|TerminateInstances|delete_\w+\(|Delete[A-Z]\w+")
    sources = Path(__file__).resolve().parents[2] / "guardian" / "providers" / "aws"
    modules = sorted(sources.glob("*.py"))
    assert len(modules) >= 8  # the package, not an empty glob
    for path in modules:
        assert not forbidden.search(path.read_text(encoding="utf-8")), path.name


def test_a_controller_s_instance_is_never_sent_a_stop(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    """A second lock behind enforcement's gates: the provider refuses, for good, without a call."""
    ec2, autoscaling = moto_server.client("ec2"), moto_server.client("autoscaling")
    [member] = launch_autoscaling_group(
        ec2, autoscaling, "gpu-pool", "g5g.xlarge", min_size=1, desired=1, max_size=2,
        zone="us-east-1a",
    )  # fmt: skip
    provider = AwsProvider(Config(), session=aws_wire.session, catalog=aws_gpu_catalog)
    (instance,) = [i for i in provider.discover().instances if i.instance_id == member]
    result = provider.stop(instance)
    assert (result.ok, result.permanent) == (False, True)
    assert "managed by Auto Scaling group gpu-pool" in result.message
    assert aws_wire.sent("ec2:StopInstances") == []
    # Standby below the minimum is refused by guardian itself (moto would allow it).
    standby = provider.standby_and_stop(instance)
    assert standby.ok is False
    assert "below its minimum" in standby.message
    assert aws_wire.sent("autoscaling:EnterStandby") == []
    assert state(moto_server, member) == "running"
