"""What an instance's own GPU history says about how long to wait before calling it idle.

A fixed idle window cannot tell a finished training run from a service between requests or a
notebook whose user is at lunch: both look the same for the last hour. The lookback holds more:
the pauses that ended in work, how long they were, whether GPU memory was released during them,
and whether the instance spends most of its time waiting between short bursts. This module turns
that into the two waits the policy applies. DESIGN.md allows such signals to *lengthen* the wait
only (the one signal that shortens it, memory released, is the policy's own rule), so every wait
here is the configured one or longer.

Pure, like ``guardian.policy.rules``: samples in, waits out; no clock, no I/O. It runs on every
``decide`` call, so it scans the samples with C-level builtins (a bytes flag string and
``re.finditer``) instead of a Python loop per sample: the backtest calls it once per instance per
poll over a 24-hour lookback.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import attrgetter

from guardian.config import IdleConfig
from guardian.model import GpuSample

__all__ = [
    "BURSTY_ACTIVE_SHARE",
    "BURST_PAUSE",
    "BURST_PAUSES",
    "IdleWaits",
    "PauseHistory",
    "idle_waits",
    "pause_history",
    "released",
]

# A pause this long that ended in work counts towards the "repeated bursts" pattern. Eval and
# checkpoint pauses of a training run are shorter; a service's quiet spells and a notebook's
# think time are routinely longer.
BURST_PAUSE = timedelta(minutes=10)
# This many such pauses within the lookback make a pattern rather than an accident ...
BURST_PAUSES = 3
# ... provided the GPU works less than this share of the samples: a training run that stalls
# now and then is busy most of the time, a service or notebook waits most of the time.
BURSTY_ACTIVE_SHARE = 0.5

# Idle samples followed by a working one. The lookbehind starts a match only at the first idle
# sample of a run, so a long run that never ends in work is scanned once, not once per sample.
_PAUSE_THEN_WORK = re.compile(rb"(?<!\x00)\x00+(?=\x01)")
_UTIL = attrgetter("gpu_util_pct")


@dataclass(frozen=True)
class PauseHistory:
    """The pauses (every GPU under the threshold) in the lookback that ended in work."""

    resumed: int = 0  # pauses followed by a sample at or above the threshold
    longest_resumed: timedelta = timedelta(0)
    longest_resumed_at: datetime | None = None  # when that pause ended
    longest_released: timedelta = timedelta(0)  # longest resumed pause with memory released
    long_pauses: int = 0  # resumed pauses of at least BURST_PAUSE
    active_share: float = 1.0  # share of samples at or above the threshold

    @property
    def bursty(self) -> bool:
        """Repeated bursts of work between long pauses: a service or a notebook, not a job."""
        return self.long_pauses >= BURST_PAUSES and self.active_share < BURSTY_ACTIVE_SHARE


@dataclass(frozen=True)
class IdleWaits:
    """How long an instance must stay under the threshold before it is ``idle``, and why."""

    held: timedelta  # while a process may still hold GPU memory (or memory is unknown)
    released: timedelta  # once GPU memory has been released throughout
    reasons: tuple[str, ...] = ()  # why a wait is longer than configured; empty if it is not


def released(sample: GpuSample, released_below_mib: float) -> bool:
    """Whether this sample shows the job gone: no compute process, or memory under the mark.

    The agent sees processes; the clouds only see memory. Unknown memory is not released.
    """
    if sample.processes is not None:
        return sample.processes == 0 and (
            sample.mem_used_mib is None or sample.mem_used_mib < released_below_mib
        )
    return sample.mem_used_mib is not None and sample.mem_used_mib < released_below_mib


def pause_history(
    samples: Sequence[GpuSample],
    *,
    threshold_pct: float,
    released_below_mib: float,
) -> PauseHistory:
    """Summarise the pauses in ``samples`` (oldest first) that were followed by work.

    Unlike the trailing idle run, which must prove idleness and so stops at any doubt, this
    errs the other way: an incomplete or NaN sample under the threshold extends a pause, and a
    pause across a hole in the data counts the hole. Longer pauses only lengthen the wait.
    """
    if len(samples) < 2:
        return PauseHistory()
    # One flag byte per sample, built in C; NaN compares false, so it extends a pause.
    working = bytes(map(float(threshold_pct).__le__, map(_UTIL, samples)))
    longest = longest_released = timedelta(0)
    longest_at: datetime | None = None
    resumed = long_pauses = 0
    for pause in _PAUSE_THEN_WORK.finditer(working):
        start, end = pause.span()
        # A pause lasts from its first idle sample to the sample that ended it.
        length = samples[end].at - samples[start].at
        resumed += 1
        if length >= BURST_PAUSE:
            long_pauses += 1
        if length > longest:
            longest, longest_at = length, samples[end].at
        # Checked only for a pause that would set a new record, and first on its first
        # sample: most pauses hold memory from the start.
        if (
            length > longest_released
            and released(samples[start], released_below_mib)
            and all(released(s, released_below_mib) for s in samples[start + 1 : end])
        ):
            longest_released = length
    return PauseHistory(
        resumed=resumed,
        longest_resumed=longest,
        longest_resumed_at=longest_at,
        longest_released=longest_released,
        long_pauses=long_pauses,
        active_share=working.count(1) / len(samples),
    )


def _minutes(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 60:.0f} min"


def idle_waits(history: PauseHistory, idle: IdleConfig) -> IdleWaits:
    """The configured waits, lengthened by what the instance's own history shows.

    - It came back from a pause of length P before: wait ``history_margin`` × P.
    - It works in repeated bursts (a service or notebook): wait at least ``window_bursty``, and
      do not take released memory as proof the job ended (servers unload idle models).
    - It came back after releasing memory: the released wait grows the same way.
    """
    held, released_wait = idle.window, idle.window_released
    reasons: list[str] = []
    margin = idle.history_margin
    if margin > 0 and history.longest_resumed > timedelta(0):
        lengthened = history.longest_resumed * margin
        if lengthened > held:
            held = lengthened
            reasons.append(
                f"a {_minutes(history.longest_resumed)} pause ended in work within the "
                f"lookback: waiting {margin:g}x that, {_minutes(held)}"
            )
    bursty = idle.window_bursty > timedelta(0) and history.bursty
    if bursty:
        held = max(held, idle.window_bursty)
        reasons.append(
            f"{history.long_pauses} pauses of {_minutes(BURST_PAUSE)}+ ended in work and the "
            f"GPU worked {history.active_share:.0%} of the time (a service or notebook): "
            f"waiting {_minutes(held)}, memory release not taken as the end of a job"
        )
        released_wait = max(released_wait, held)
    elif margin > 0 and history.longest_released > timedelta(0):
        lengthened = history.longest_released * margin
        if lengthened > released_wait:
            released_wait = lengthened
            reasons.append(
                f"it came back after releasing GPU memory for "
                f"{_minutes(history.longest_released)}: waiting {_minutes(released_wait)} "
                "after a release"
            )
    return IdleWaits(held=held, released=released_wait, reasons=tuple(reasons))
