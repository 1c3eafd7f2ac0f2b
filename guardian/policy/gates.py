"""The safety gates one instance must pass before it may be stopped, pure.

Shared by the daemon (``guardian.daemon.enforce``, which adds the fleet-wide gates: circuit breaker
and stops per cycle), the node agent's autostop and the audit's "what would enforce do", so all
of them refuse for the same reasons. A verdict says what a machine does; these say whether it
may be stopped — an idle instance behind a gate stays ``idle`` and its money still counts.

Permanent gates (waiting never lifts them, the instance is alert-only): a one-time spot
instance, a controller that owns it (``policy.owners``), reserved capacity, stop protection
(learned by enforcement from the API), and local disks that hold data or are not reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from guardian.config import Config
from guardian.model import Controller, Finding, GpuInstance, Point, Verdict
from guardian.policy.owners import controller_label, reservation_knob, saving_knob
from guardian.policy.tags import protection

__all__ = [
    "STANDBY_STOP",
    "Block",
    "Plan",
    "enforce_plan",
    "instance_block",
    "local_disk_block",
    "ownership_block",
    "permanent_block",
    "standby_eligible",
]

STANDBY_STOP = "standby+stop"


@dataclass(frozen=True)
class Block:
    """Why a stop is refused: a stable ``reason`` for logs and metrics, a ``detail`` for people,
    a short ``category`` for counting (no names in it), and the ``knob`` that saves the money
    instead, where one exists."""

    reason: str  # protected | min_uptime | spot_one_time | managed | reserved | local_disk ...
    detail: str
    permanent: bool  # no amount of waiting lifts it: the instance is alert-only
    category: str = ""
    knob: str | None = None


def standby_eligible(instance: GpuInstance, config: Config) -> bool:
    """A plain Auto Scaling group's member that ``enforce.autoscaling_groups: standby`` covers."""
    owner = instance.managed_by
    return (
        owner is not None
        and owner.kind is Controller.AUTOSCALING_GROUP
        and config.enforce.autoscaling_groups == "standby"
        and not instance.reserved
    )


def ownership_block(instance: GpuInstance, config: Config, *, agent: bool = False) -> Block | None:
    """Reserved capacity or a controller: a stop saves nothing, or is undone by the controller.

    ``agent`` (the node agent's own check) refuses even plain Auto Scaling group members: only
    the daemon walks a group's capacity down through Standby.
    """
    if instance.reservation is not None:
        knob = reservation_knob(instance.reservation)
        return Block(
            "reserved",
            f"it runs in reserved capacity, paid whether it runs or not ({knob})",
            permanent=True,
            category="reserved capacity",
            knob=knob,
        )
    owner = instance.managed_by
    if owner is None or (not agent and standby_eligible(instance, config)):
        return None
    label = controller_label(owner.kind)
    knob = saving_knob(owner)
    return Block(
        "managed",
        f"it is managed by {label} {owner.name}, which would replace a stopped instance ({knob})",
        permanent=True,
        category=f"managed by {label}",
        knob=knob,
    )


def local_disk_block(
    instance: GpuInstance,
    config: Config,
    local_disk: Point | None,
    now: datetime,
    *,
    on_the_machine: bool = False,
) -> Block | None:
    """Instance store / local SSD: a stop wipes it, so it must be measured unused (or allowed).

    ``local_disk`` is the newest reading of the agent's metric (MiB used beyond empty
    filesystems). Missing or older than ``idle.max_staleness`` is unknown, and unknown is
    never "unused". ``on_the_machine``: the reading is the node agent's own (autostop).
    """
    if not instance.has_instance_store:
        return None
    enforce = config.enforce
    if enforce.local_disks == "stop":
        return None
    if enforce.local_disks == "alert":
        return Block(
            "local_disk",
            "its local disks (instance store / local SSD) would be wiped by a stop "
            "(enforce.local_disks: alert)",
            permanent=True,
            category="local disks alert-only",
        )
    how = (
        "run `guardian agent` with agent.publish: cloudwatch (or gcp) on it to measure them "
        "(enforce.local_disks: stop-if-unused)"
    )
    if on_the_machine:
        how = (
            "the agent found no instance-store / local-SSD device it recognises, or could not "
            "measure one (`guardian agent status`; enforce.local_disks: stop-if-unused)"
        )
    if local_disk is None:
        return Block(
            "local_disk",
            f"its local disks are not reported, and a stop would wipe them; {how}",
            permanent=True,
            category="local disk not reported",
        )
    at, used_mib = local_disk
    age = now - at
    if age > config.idle.max_staleness:
        return Block(
            "local_disk",
            f"its local disks were last reported {age.total_seconds() / 60:.0f} min ago "
            f"(idle.max_staleness), and a stop would wipe them; {how}",
            permanent=True,
            category="local disk not reported",
        )
    if not used_mib < enforce.local_disk_unused_below:  # NaN is not "unused"
        return Block(
            "local_disk",
            f"{used_mib / 1024:.1f} GiB in use on its local disks would be wiped by a stop "
            "(enforce.local_disk_unused_below)",
            permanent=True,
            category="local disk in use",
        )
    return None


def permanent_block(
    instance: GpuInstance,
    config: Config,
    *,
    now: datetime,
    local_disk: Point | None = None,
    agent: bool = False,
) -> Block | None:
    """Gates that waiting never lifts. ``agent``: the node agent's check of its own machine
    (no Standby; the local-disk reading is its own)."""
    if instance.spot_one_time:
        return Block(
            "spot_one_time",
            "it is a one-time spot instance, which cannot be stopped",
            permanent=True,
            category="one-time spot",
        )
    owned = ownership_block(instance, config, agent=agent)
    if owned is not None:
        return owned
    return local_disk_block(instance, config, local_disk, now, on_the_machine=agent)


def instance_block(
    instance: GpuInstance,
    config: Config,
    now: datetime,
    *,
    local_disk: Point | None = None,
    agent: bool = False,
) -> Block | None:
    """The first gate of this instance that refuses a stop now, or None.

    Protection is read from the tags as they are now: callers pass a freshly described instance.
    """
    guard = protection(instance.tags, now)
    if guard.protected:
        return Block("protected", f"protected ({guard.reason or 'by tag'})", permanent=False)
    uptime = now - instance.launch_time
    if uptime < config.idle.min_uptime:
        return Block(
            "min_uptime",
            f"up only {uptime.total_seconds() / 60:.0f} min (idle.min_uptime)",
            permanent=False,
        )
    return permanent_block(instance, config, local_disk=local_disk, now=now, agent=agent)


@dataclass(frozen=True)
class Plan:
    """What ``mode: enforce`` would do with an idle instance: ``stop``, ``standby+stop`` or
    ``alert``, with the gate that makes it alert-only."""

    action: str
    block: Block | None = None

    @property
    def label(self) -> str:
        """``stop`` or ``alert (local disk not reported)``: the audit's column and JSON."""
        return f"alert ({self.block.category})" if self.block else self.action


def enforce_plan(
    finding: Finding, config: Config, now: datetime, *, assume_idle: bool = False
) -> Plan | None:
    """What enforcement would do with this finding, in any mode; None unless it is idle.

    ``assume_idle`` answers for a busy instance too, as if it went idle now (how much of the
    fleet enforcement can reach at all). Stop protection is read from the API only before a
    warning, so here it shows as ``stop``.
    """
    verdict = finding.decision.verdict
    if verdict is not Verdict.IDLE and not (assume_idle and verdict is not Verdict.PROTECTED):
        return None
    block = permanent_block(finding.instance, config, local_disk=finding.local_disk_used, now=now)
    if block is not None:
        return Plan("alert", block)
    if standby_eligible(finding.instance, config):
        return Plan(STANDBY_STOP)
    return Plan("stop")
