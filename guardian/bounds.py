"""Bounds and formats of config values: ``within`` for every number and duration, and the
checks of names and addresses, each raising ``ValueError`` with a one-line reason that
``guardian.config`` turns into ``key.path: reason``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from pydantic import AfterValidator

from guardian.durations import format_duration, parse_duration

__all__ = [
    "database_url",
    "is_aws_region",
    "listen_address",
    "region_list",
    "region_name",
    "role_arn",
    "within",
]


def within(low: float | str, high: float | str, why: str) -> AfterValidator:
    """Bound a number or a duration to ``[low, high]``; ``why`` is the one-line reason an error
    gives. Every number and duration in the config has one, so a typo cannot turn a threshold
    into nonsense (``poll_interval: 0s`` polled back to back, billing each call)::

        grace: Annotated[Duration, within("0s", "7d", "a warning must come before a stop")]
        max_stops: Annotated[int, within(0, 1000, "0 = never stop")] = 5

    Durations take their bounds as duration strings, numbers as numbers; both inclusive.
    """

    def check(value: Any) -> Any:
        bounds: tuple[Any, Any] = (low, high)
        shown: Any = "{:g}".format
        if isinstance(value, timedelta):
            bounds, shown = (parse_duration(low), parse_duration(high)), format_duration
        if not bounds[0] <= value <= bounds[1]:
            raise ValueError(
                f"{shown(value)} is not between {shown(bounds[0])} and {shown(bounds[1])}: {why}"
            )
        return value

    return AfterValidator(check)


_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")  # us-east-1, us-gov-west-1, ap-southeast-5
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/\S+$")
_STATE_URL = re.compile(r"^(sqlite|postgresql)(\+\w+)?://")


def region_list(value: Any) -> Any:
    """``aws.regions``: a list, or "all"; a bare region name says how to write it."""
    if isinstance(value, str) and value != "all":
        raise ValueError(f'a list of regions such as [{value}], or "all"; got the text {value!r}')
    return value


def is_aws_region(name: str) -> bool:
    """``us-east-1`` is an AWS region name; ``us-central1`` (GCP) is not."""
    return bool(_REGION.match(name))


def region_name(value: str) -> str:
    if not is_aws_region(value):
        raise ValueError(f"{value!r} is not an AWS region name (like us-east-1)")
    return value


def listen_address(value: str) -> str:
    """``host:port`` (``[::1]:9464``, ``:9464`` for every interface) or empty for off."""
    _host, sep, port = value.strip().rpartition(":")
    if value.strip() and (not sep or not port.isdigit() or not 0 < int(port) < 65536):
        raise ValueError(f"expected HOST:PORT (or empty for off), got {value!r}")
    return value


def role_arn(value: str) -> str:
    if not _ROLE_ARN.match(value):
        raise ValueError(f"{value!r} is not an IAM role ARN (arn:aws:iam::123456789012:role/name)")
    return value


def database_url(value: str) -> str:
    """``state_url``: an SQLite or PostgreSQL URL (SQLAlchemy's form)."""
    if not _STATE_URL.match(value):
        raise ValueError(
            "not a database URL: use sqlite:////path/state.db or "
            "postgresql+psycopg://user:password@host/database"
        )
    return value
