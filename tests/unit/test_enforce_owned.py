"""Idle instances enforcement leaves to their owner — a controller, a reservation, stop
protection — reported once per group and episode; Standby for plain Auto Scaling groups; stops
the cloud refuses for good. The Enforcer over FakeProviders and a real store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from guardian.model import Controller, GpuInstance, ManagedBy, ScalingGroup
from guardian.providers import ScalingGroups, StopResult
from tests.fake_provider import NOW, make_instance
from tests.unit.test_enforce import GRACE, StoppingProvider, World, config

POOL = ManagedBy(Controller.AUTOSCALING_GROUP, "gpu-pool")


def messages(world: World, kind: str) -> list[str]:
    with world.store.reader() as tx:
        rows = tx.notifications_since(NOW - timedelta(days=1))
    return [repr(r.message) for r in rows if r.kind == kind and r.target.startswith("url")]


def test_a_controller_s_idle_members_get_one_alert_naming_the_knob(tmp_path: Path) -> None:
    members = [make_instance(f"i-{n}", managed_by=POOL) for n in range(2)]
    eks = make_instance("i-eks", managed_by=ManagedBy(Controller.EKS_NODEGROUP, "gpu-ng", "prod"))
    world = World(tmp_path, config(), [*members, eks])
    for minutes in (0, 15, 30, 60):
        summary = world.cycle(NOW + timedelta(minutes=minutes))
        assert summary.warned == 0
    assert world.provider.stopped == []
    assert world.kinds() == ["owned", "owned"]  # one per group, once per idle episode
    (pool,) = [m for m in messages(world, "owned") if "gpu-pool" in m]
    assert "Auto Scaling group" in pool
    assert "$2.01/h" in pool  # the group's idle burn: two g5.xlarge
    assert "set its minimum and desired capacity to 0" in pool
    (node_group,) = [m for m in messages(world, "owned") if "gpu-ng" in m]
    assert "cluster prod" in node_group
    # Recorded once per instance, with the reason, not once per cycle.
    blocks = [(a.ref.instance_id, a.outcome) for a in world.actions() if a.action == "block"]
    assert sorted(blocks) == [("i-0", "managed"), ("i-1", "managed"), ("i-eks", "managed")]
    # Busy, then idle again: a new episode, a new alert.
    for member in members:
        world.util[member.key] = 90.0
    world.cycle(NOW + timedelta(minutes=70))
    for member in members:
        world.util[member.key] = 0.0
    world.history = {}
    world.cycle(NOW + timedelta(minutes=300))
    assert world.kinds().count("owned") == 3


def test_reserved_capacity_is_reported_by_reservation(tmp_path: Path) -> None:
    reserved = [make_instance(f"i-{n}", reservation="cr-0a1b2c") for n in range(3)]
    world = World(tmp_path, config(), reserved)
    world.cycle(NOW)
    world.cycle(NOW + GRACE)
    assert world.provider.stopped == []
    (alert,) = messages(world, "owned")
    assert "cr-0a1b2c" in alert
    assert "release it or put work on it" in alert
    assert "3 instances" in alert


def test_stop_protection_is_read_once_per_warning_and_never_retried(tmp_path: Path) -> None:
    locked = make_instance("i-locked")
    plain = make_instance("i-plain")
    world = World(tmp_path, config(), [locked, plain])
    world.provider.stop_protected = {locked.key}
    for minutes in (0, 5, 15, 30, 45):
        world.cycle(NOW + timedelta(minutes=minutes))
    # One DescribeInstanceAttribute each, before its warning: never per instance per cycle.
    assert world.provider.protection_reads == [locked.key, plain.key]
    assert world.provider.stopped == [plain.key]
    (alert,) = messages(world, "owned")
    assert "stop protection" in alert
    assert "--no-disable-api-stop" in alert
    # Busy and idle again: asked again before the new episode's warning.
    world.util[locked.key] = 90.0
    world.cycle(NOW + timedelta(minutes=50))
    world.util[locked.key] = 0.0
    world.cycle(NOW + timedelta(minutes=300))
    assert world.provider.protection_reads == [locked.key, plain.key, locked.key]


def test_a_stop_refused_for_good_is_recorded_once_and_takes_no_stop_slot(tmp_path: Path) -> None:
    refused, other = make_instance("i-1-refused"), make_instance("i-2-other")
    world = World(tmp_path, config(limits={"max_stops_per_cycle": 1}), [refused, other])
    provider = world.provider
    original = StoppingProvider.stop

    def stop(instance: GpuInstance, *, hibernate: bool = False) -> StopResult:
        if instance.key == refused.key:
            return StopResult(instance.key, False, "stop", "OperationNotPermitted", permanent=True)
        return original(provider, instance, hibernate=hibernate)

    provider.stop = stop  # type: ignore[method-assign]
    world.cycle(NOW)
    summary = world.cycle(NOW + GRACE)
    # Refused first (equally wasteful: the keys order them), and the other still gets the slot.
    assert provider.stopped == [other.key]
    assert summary.blocked["refused"] == 1
    for minutes in (5, 10, 30):
        world.cycle(NOW + GRACE + timedelta(minutes=minutes))
    attempts = [a for a in world.actions("intent") if a.ref.instance_id == "i-1-refused"]
    assert len(attempts) == 1  # not retried
    assert world.kinds().count("stop_failed") == 1


@dataclass
class GroupsProvider(StoppingProvider):
    """A FakeProvider with Auto Scaling groups: capacity, Standby, then stop."""

    groups: dict[str, ScalingGroup] = field(default_factory=dict)
    group_reads: int = 0
    standby: list[str] = field(default_factory=list)

    def scaling_groups(
        self, account: str, region: str, names: Sequence[str]
    ) -> dict[str, ScalingGroup]:
        self.group_reads += 1
        return {name: self.groups[name] for name in names if name in self.groups}

    def standby_and_stop(self, instance: GpuInstance, *, hibernate: bool = False) -> StopResult:
        assert instance.managed_by is not None
        name = instance.managed_by.name
        group = self.groups[name]
        assert group.desired - 1 >= group.min_size, "Standby below the minimum"
        self.groups[name] = replace(
            group, desired=group.desired - 1, standby=group.standby | {instance.instance_id}
        )
        self.standby.append(instance.key)
        result = self.stop(instance, hibernate=hibernate)
        return replace(result, action="standby+stop")


def groups_world(tmp_path: Path, instances: list[GpuInstance], **cfg: Any) -> World:
    world = World(tmp_path, config(**cfg), instances)
    provider = GroupsProvider(list(instances))
    assert isinstance(provider, ScalingGroups)
    world.provider = provider
    world.configure(world.config)
    return world


def test_standby_mode_walks_a_plain_group_down_to_its_minimum(tmp_path: Path) -> None:
    members = [make_instance(f"i-{n}", managed_by=POOL) for n in range(3)]
    world = groups_world(tmp_path, members, enforce={"autoscaling_groups": "standby"})
    provider = world.provider
    assert isinstance(provider, GroupsProvider)
    provider.groups["gpu-pool"] = ScalingGroup("gpu-pool", min_size=1, desired=3, max_size=4)
    world.cycle(NOW)
    # Room for two above the minimum: two warnings; the third is left to the group at once.
    assert sorted(world.kinds()) == ["owned", "warning", "warning"]
    warning = messages(world, "warning")[0]
    assert "put it into Standby in Auto Scaling group" in warning
    world.cycle(NOW + GRACE)
    assert len(provider.standby) == 2
    assert provider.groups["gpu-pool"].desired == 1  # never below min 1
    (stopped, _) = messages(world, "stopped")
    assert "aws autoscaling exit-standby" in stopped
    assert "aws ec2 start-instances" in stopped
    # The third member was left to the group, with the knob and the numbers.
    (owned,) = messages(world, "owned")
    assert "min 1 / desired 3" in owned
    assert "i-2" in owned
    assert [a.outcome for a in world.actions("outcome")] == ["ok", "ok"]
    assert {a.action for a in world.actions("intent")} == {"standby+stop"}


def test_standby_is_for_plain_groups_only(tmp_path: Path) -> None:
    eks = make_instance("i-eks", managed_by=ManagedBy(Controller.EKS_NODEGROUP, "ng", "prod"))
    karpenter = make_instance("i-k", managed_by=ManagedBy(Controller.KARPENTER, "gpu", "prod"))
    world = groups_world(tmp_path, [eks, karpenter], enforce={"autoscaling_groups": "standby"})
    world.cycle(NOW)
    world.cycle(NOW + GRACE)
    assert world.provider.stopped == []
    assert world.kinds() == ["owned", "owned"]


def test_alert_mode_reads_group_capacity_once_per_alert(tmp_path: Path) -> None:
    members = [make_instance(f"i-{n}", managed_by=POOL) for n in range(2)]
    world = groups_world(tmp_path, members)
    provider = world.provider
    assert isinstance(provider, GroupsProvider)
    provider.groups["gpu-pool"] = ScalingGroup("gpu-pool", min_size=2, desired=2, max_size=4)
    for minutes in (0, 5, 10, 20):
        world.cycle(NOW + timedelta(minutes=minutes))
    assert provider.group_reads == 1  # for the alert, not every cycle
    (owned,) = messages(world, "owned")
    assert "min 2 / desired 2 keeps these idle; set min and desired to 0" in owned


def test_a_group_name_from_a_tag_cannot_ping_or_inject(tmp_path: Path) -> None:
    from guardian.daemon.messages import Message, render

    hostile = ManagedBy(Controller.AUTOSCALING_GROUP, "<!here> @channel [x](http://evil)")
    world = World(tmp_path, config(), [make_instance("i-0", managed_by=hostile)])
    world.cycle(NOW)
    with world.store.reader() as tx:
        (row,) = [r for r in tx.notifications_since(NOW) if r.kind == "owned"][:1]
    message = Message.from_json(row.message)
    for style in ("slack", "markdown", "html", "text"):
        title, body = render(message, style)  # type: ignore[arg-type]
        for text in (title, body):
            assert "<!here>" not in text
            assert "@channel" not in text
        if style == "markdown":  # titles are plain text everywhere; bodies carry markup
            assert "](http://evil)" not in body


def test_group_keys_stay_bounded_and_distinct() -> None:
    from guardian.daemon.owned import group_key

    long_a = make_instance("i-a", managed_by=ManagedBy(Controller.AUTOSCALING_GROUP, "a" * 255))
    long_b = make_instance("i-b", managed_by=ManagedBy(Controller.AUTOSCALING_GROUP, "a" * 254))
    keys = {group_key(long_a, "managed"), group_key(long_b, "managed")}
    assert len(keys) == 2
    assert all(len(key) <= 200 for key in keys)
