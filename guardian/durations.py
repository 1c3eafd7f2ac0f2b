"""Parse and format the short durations used in config and on the command line (``90s``, ``2h``)."""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = ["format_duration", "parse_duration"]

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    """``"30m"`` → 30 minutes. Bare numbers are seconds. Raises ``ValueError`` with the input."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative: {value!r}")
        return timedelta(seconds=value)
    match = _PATTERN.match(value)
    if match is None:
        raise ValueError(f"not a duration: {value!r} (use e.g. 0s, 90s, 30m, 2h, 7d)")
    number, unit = match.groups()
    return timedelta(seconds=float(number) * _UNIT_SECONDS[unit])


def format_duration(delta: timedelta) -> str:
    """The shortest exact form: 5400 s → ``90m``, 7200 s → ``2h``."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
