"""The warn-then-stop ladder as a pure state machine, shared by the daemon, agent and backtest.

One warning per idle episode, never one per cycle. At the deadline the instance has been
re-measured (this cycle's verdict): still idle → stop; busy again → the warning is withdrawn.
``unmeasured`` keeps the episode open but never stops: unknown is never idle.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from guardian.model import Verdict

__all__ = ["Episode", "Step", "next_step"]


class Step(StrEnum):
    NONE = "none"  # nothing to do
    WARN = "warn"  # first idle verdict of an episode: send the warning with the deadline
    WAIT = "wait"  # warned, deadline not reached (or data unknown): do nothing yet
    STOP = "stop"  # deadline passed and still idle: stop, subject to enforcement's safety gates
    RESUMED = "resumed"  # warned, but busy (or protected) again: withdraw the warning


@dataclass(frozen=True)
class Episode:
    """An idle episode that has been warned about."""

    instance_key: str
    warned_at: datetime
    deadline: datetime


def next_step(
    instance_key: str,
    verdict: Verdict,
    episode: Episode | None,
    now: datetime,
    grace: timedelta,
) -> tuple[Step, Episode | None]:
    """The step to take now and the episode to keep afterwards (None = no open episode)."""
    if episode is None:
        if verdict is Verdict.IDLE:
            return Step.WARN, Episode(instance_key, now, now + grace)
        return Step.NONE, None
    if verdict is Verdict.IDLE:
        return (Step.STOP if now >= episode.deadline else Step.WAIT), episode
    if verdict is Verdict.UNMEASURED:
        return Step.WAIT, episode
    return Step.RESUMED, None
