"""Parse and format the short durations used in config and on the command line (``90s``, ``2h``)."""

from __future__ import annotations

import math
import re
from datetime import timedelta

__all__ = ["format_duration", "parse_duration"]

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Longer is a typo or junk; every bound in the config is far below it.
_TOO_LONG_S = 10_000 * 365 * 86400
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    """``"30m"`` → 30 minutes. Bare numbers are seconds. Raises ``ValueError`` with the input."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a duration: {_shown(value)} (use e.g. 0s, 90s, 30m, 2h, 7d)")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative: {value!r}")
        if isinstance(value, float) and math.isnan(value):
            raise ValueError("not a duration: nan (use e.g. 0s, 90s, 30m, 2h, 7d)")
        seconds = float(value) if value < _TOO_LONG_S else math.inf  # float(10**400) overflows
    else:
        match = _PATTERN.match(value)
        if match is None:
            raise ValueError(f"not a duration: {_shown(value)} (use e.g. 0s, 90s, 30m, 2h, 7d)")
        number, unit = match.groups()
        seconds = float(number) * _UNIT_SECONDS[unit]
    # NaN, infinity or a number of years no clock reaches: timedelta would raise OverflowError,
    # which is no ValueError and so would escape the config's one-line errors.
    if not seconds < _TOO_LONG_S:
        raise ValueError(f"not a duration: {_shown(value)} is too long (at most 10,000 years)")
    return timedelta(seconds=seconds)


def _shown(value: object) -> str:
    """The value as the error shows it: its repr, cut short (a file may hold anything)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def format_duration(delta: timedelta) -> str:
    """The shortest exact form: 5400 s → ``90m``, 7200 s → ``2h``."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
