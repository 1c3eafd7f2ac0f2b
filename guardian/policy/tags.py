"""Read guardian's own tags (AWS) and labels (GCP) from an instance: protection and speedup.

GCP labels cannot hold ``:``, so there the keys are ``guardian-protect`` and friends, and a time
is written ``20261126t1400z``. Both spellings are accepted on both clouds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = [
    "KEEP_UNTIL_TAGS",
    "PROTECT_TAGS",
    "SPEEDUP_TAGS",
    "Protection",
    "format_keep_until",
    "parse_keep_until",
    "protection",
    "speedup_override",
]

PROTECT_TAGS = ("guardian:protect", "guardian-protect")
KEEP_UNTIL_TAGS = ("guardian:keep-until", "guardian-keep-until")
SPEEDUP_TAGS = ("guardian:speedup", "guardian-speedup")

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off", ""}
_LABEL_TIME = re.compile(r"^(\d{8})t(\d{4})(\d{2})?z$")


@dataclass(frozen=True)
class Protection:
    protected: bool
    reason: str | None = None
    problem: str | None = None  # a malformed guardian tag, to show the user


def _first(tags: Mapping[str, str], keys: tuple[str, ...]) -> tuple[str, str] | None:
    for key in keys:
        if key in tags:
            return key, tags[key]
    return None


def parse_keep_until(value: str) -> datetime:
    """ISO-8601 (``2026-11-26T14:00Z``) or the GCP label form ``20261126t1400z``; aware UTC."""
    text = value.strip()
    label = _LABEL_TIME.match(text.lower())
    if label:
        day, hhmm, ss = label.groups()
        return datetime.strptime(f"{day}{hhmm}{ss or '00'}", "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # a bare time is taken as UTC, as the docs say
    return parsed.astimezone(UTC)


def format_keep_until(moment: datetime, *, label: bool = False) -> str:
    """The tag value a user would set to keep an instance until ``moment``."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y%m%dt%H%Mz") if label else moment.strftime("%Y-%m-%dT%H:%MZ")


def protection(tags: Mapping[str, str], now: datetime) -> Protection:
    """Whether the tags protect the instance now.

    A malformed guardian tag protects too: whoever set it meant to keep the machine, and safety
    wins over savings. The problem is reported so the user can fix the tag.
    """
    protect = _first(tags, PROTECT_TAGS)
    if protect is not None:
        key, value = protect
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return Protection(True, f"tag {key}={value}")
        if lowered not in _FALSE:
            return Protection(
                True,
                f"tag {key}={value!r} is not true/false; treated as protected",
                problem=f"malformed tag {key}={value!r}: use true or false",
            )
    keep = _first(tags, KEEP_UNTIL_TAGS)
    if keep is not None:
        key, value = keep
        try:
            until = parse_keep_until(value)
        except ValueError:
            return Protection(
                True,
                f"tag {key}={value!r} is not a time; treated as protected",
                problem=f"malformed tag {key}={value!r}: use e.g. "
                f"{format_keep_until((now + timedelta(days=1)).replace(hour=14, minute=0))}",
            )
        if until > now:
            return Protection(True, f"tag {key} keeps it until {format_keep_until(until)}")
    return Protection(False)


def speedup_override(tags: Mapping[str, str]) -> tuple[float | None, str | None]:
    """The instance's own expected speedup from its tag, or (None, problem) when malformed."""
    found = _first(tags, SPEEDUP_TAGS)
    if found is None:
        return None, None
    key, value = found
    try:
        speedup = float(value.strip().rstrip("xX"))
    except ValueError:
        return None, f"malformed tag {key}={value!r}: expected a number such as 8"
    if speedup <= 0:
        return None, f"malformed tag {key}={value!r}: must be positive"
    return speedup, None
