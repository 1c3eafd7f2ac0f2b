"""The safety gates one instance must pass before it may be stopped, pure.

Shared by the daemon (``guardian.daemon.enforce``, which adds the fleet-wide gates: circuit breaker
and stops per cycle) and the node agent's autostop, so both refuse for the same reasons.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from guardian.config import Config
from guardian.model import GpuInstance
from guardian.policy.tags import protection

__all__ = ["Block", "instance_block", "permanent_block"]


@dataclass(frozen=True)
class Block:
    """Why a stop is refused: a stable ``reason`` for logs and metrics, a ``detail`` for people."""

    reason: str  # protected | min_uptime | spot_one_time | instance_store
    detail: str
    permanent: bool  # no amount of waiting lifts it: the instance is alert-only


def permanent_block(instance: GpuInstance, config: Config) -> Block | None:
    """Gates that waiting never lifts."""
    if instance.spot_one_time:
        return Block(
            "spot_one_time",
            "it is a one-time spot instance, which cannot be stopped",
            permanent=True,
        )
    if instance.has_instance_store and not config.enforce.allow_instance_store_loss:
        return Block(
            "instance_store",
            "its instance-store (local SSD) data would be lost on stop "
            "(enforce.allow_instance_store_loss is false)",
            permanent=True,
        )
    return None


def instance_block(instance: GpuInstance, config: Config, now: datetime) -> Block | None:
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
    return permanent_block(instance, config)
