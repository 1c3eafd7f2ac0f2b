"""Bounds and formats of config values: ``within`` for every number and duration, and the
checks of names and addresses, each raising ``ValueError`` with a one-line reason that
``guardian.config`` turns into ``key.path: reason``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from pydantic import AfterValidator

from guardian.durations import format_duration, parse_duration

__all__ = [
    "database_url",
    "format_size_mib",
    "is_aws_region",
    "listen_address",
    "parse_size_mib",
    "region_list",
    "region_name",
    "role_arn",
    "url_syntax",
    "within",
]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(KiB|MiB|GiB|TiB|kB|KB|MB|GB|TB)\s*$")
_SIZE_MIB = {
    "KiB": 1 / 1024,
    "MiB": 1.0,
    "GiB": 1024.0,
    "TiB": 1024.0**2,
    "kB": 1e3 / 2**20,
    "KB": 1e3 / 2**20,
    "MB": 1e6 / 2**20,
    "GB": 1e9 / 2**20,
    "TB": 1e12 / 2**20,
}


def parse_size_mib(value: str | float) -> float:
    """``"1GiB"`` → 1024.0 (MiB). A unit is required: a bare number could mean anything."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return 0.0
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"not a size: {value!r} (use e.g. 512MiB, 1GiB, 2GB)")
    return float(match.group(1)) * _SIZE_MIB[match.group(2)]


def format_size_mib(mib: float) -> str:
    """The shortest exact binary form: 1024.0 → ``1GiB``, 1536.0 → ``1536MiB``."""
    for unit, size in (("TiB", 1024.0**2), ("GiB", 1024.0)):
        if mib >= size and mib % size == 0:
            return f"{mib / size:g}{unit}"
    return f"{mib:g}MiB"


def within(
    low: float | str, high: float | str, why: str, *, off: float | str | None = None
) -> AfterValidator:
    """Bound a number or a duration to ``[low, high]``; ``why`` is the one-line reason an error
    gives. Every number and duration in the config has one, so a typo cannot turn a threshold
    into nonsense (``poll_interval: 0s`` polled back to back, billing each call)::

        grace: Annotated[Duration, within("0s", "7d", "a warning must come before a stop")]
        max_stops: Annotated[int, within(0, 1000, "0 = never stop")] = 5

    Durations take their bounds as duration strings, sizes (MiB, ``SizeMiB``) as size strings,
    numbers as numbers; both inclusive. ``off`` is one more value accepted outside the range
    (``window_notebook``: 0s = off, else at least 10m).
    """

    def check(value: Any) -> Any:
        parse: Any = float
        shown: Any = _number
        if isinstance(value, timedelta):
            parse, shown = parse_duration, format_duration
        elif isinstance(low, str):
            parse, shown = parse_size_mib, format_size_mib
        if off is not None and value == parse(off):
            return value
        if not parse(low) <= value <= parse(high):
            also = f" (or {off}, off)" if off is not None else ""
            raise ValueError(
                f"{shown(value)} is not between {shown(parse(low))} and {shown(parse(high))}"
                f"{also}: {why}"
            )
        return value

    return AfterValidator(check)


def _number(value: float) -> str:
    """``{:g}`` of a number, also of an integer too large for a float (``10**400``)."""
    try:
        return f"{value:g}"
    except OverflowError:
        return (
            f"{value:.3e}"
            if isinstance(value, float)
            else f"an integer of {len(str(value))} digits"
        )


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


def url_syntax(value: str) -> str:
    """A URL the standard library can split (``http://[::1`` cannot): checked here, so that no
    later ``urlsplit`` of a config value raises where nobody expects it."""
    try:
        urlsplit(value).port  # noqa: B018  # the port is parsed, and checked, only when read
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
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
