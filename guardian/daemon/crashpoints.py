"""Test-only: make the daemon kill itself (SIGKILL) at a named point of the stop path.

The recovery tests prove that a ``kill -9`` at any point of a stop loses nothing and repeats
nothing. A signal sent from outside cannot land reliably between two statements, so the
process is told where to die instead: with ``GUARDIAN_TEST_CRASH_AT=<point>`` in its
environment it sends itself SIGKILL the first time it reaches that point — no cleanup, no
``finally``, no flushed buffers, exactly like ``kill -9``.

The points, in the order a stop passes them (``guardian.daemon.enforce``):

- ``before_intent``: the deadline has passed, nothing of the stop is recorded yet;
- ``after_intent``: the intent is committed, the cloud has not been called;
- ``after_stop_call``: the cloud has answered, the outcome is not recorded;
- ``after_outcome``: the outcome and its alert are committed, the alert is not delivered.

Never set it in production. Unset, each point costs one environment lookup per stop.
"""

from __future__ import annotations

import os
import signal
from typing import Final, Literal

__all__ = ["CRASH_ENV", "POINTS", "CrashPoint", "crash_point"]

CrashPoint = Literal["before_intent", "after_intent", "after_stop_call", "after_outcome"]
POINTS: Final[tuple[CrashPoint, ...]] = (
    "before_intent",
    "after_intent",
    "after_stop_call",
    "after_outcome",
)
CRASH_ENV: Final = "GUARDIAN_TEST_CRASH_AT"


def crash_point(point: CrashPoint) -> None:
    """Die here, at once, if the environment asks for this point."""
    if os.environ.get(CRASH_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
