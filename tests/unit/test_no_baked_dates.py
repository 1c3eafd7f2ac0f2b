"""No calendar date is written into the code, the demo, a test or a benchmark: each is derived
from ``now`` (tests: ``tests/clock.py``), so that nothing passes today and fails on a later day.

What may stay is listed below with its reason: data of the past (a bundled real trace and
excerpts in its format, the price list's own date) and sentinels (the Unix epoch, "since
forever"). An entry that no longer matches anything fails too, so the list stays short.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("guardian", "tests", "bench")
# Data files read as they are: a date in one is a date baked in too.
FIXTURE_SUFFIXES = {".csv", ".json", ".yaml", ".yml", ".txt"}
# A calendar date: 2026-12-31, 2026-12-31T18:00, 20261231t1800z, 20261231000000.
DATE_TEXT = re.compile(r"\b(19|20)\d\d-?[01]\d-?[0-3]\d(?=[tT ]|\b|\d{6}\b|$)")
# An instant written as Unix seconds (1_795_000_000 is a day in 2026): 2001-09-09 to 2033-05-18,
# but not 10**9 itself, the nanoseconds in a second.
EPOCH_SECONDS = range(1_000_000_001, 2_000_000_000)
EPOCH_TEXT = re.compile(r"(?<![\w.])(?!1234567890)1\d{9}(?![\w.])")  # that one is an id


@dataclass(frozen=True)
class Allowed:
    path: str  # relative to the repository
    text: str  # a part of what the scan reports
    reason: str


ALLOWED = (
    Allowed("guardian/providers/aws/metrics.py", "datetime(1970, ...)", "the Unix epoch"),
    Allowed(
        "tests/moto_iam.py",
        "2012-10-17",
        "the IAM policy language's version string, not a moment",
    ),
    Allowed(
        "tests/integration/test_enforce_fleet.py",
        "datetime(2000, ...)",
        "'since forever': every notification the store holds",
    ),
    Allowed(
        "bench/host_series.py",
        "datetime(2000, ...)",
        "a sentinel origin: only the window's length is measured, never compared to now",
    ),
    Allowed(
        "tests/unit/test_catalog.py",
        "date(2024, ...)",
        "a floor for the bundled price list's as_of, which is data of the past",
    ),
    Allowed(
        "tests/unit/test_trace.py",
        "2017-10-",
        "rows in the Philly trace's format, dated as its real rows are (October 2017)",
    ),
    Allowed(
        "tests/unit/test_trace.py",
        "at 1970-01-01T00:00:00",
        "the Unix epoch: rows stamped 0",
    ),
    Allowed(
        "tests/serving_trace.py",
        "datetime(1970, ...)",
        "a sentinel origin a day after the epoch: the replay runs on its own clock",
    ),
    Allowed(
        "tests/unit/test_trace.py",
        "datetime(2017, ...)",
        "the start of a Philly-format excerpt, dated as the real trace is (October 2017)",
    ),
    Allowed(
        "guardian/prices/data/prices-aws.json",
        '"as_of": "',
        "the day the bundled list prices were valid: data of the past, shown as its source",
    ),
    Allowed(
        "guardian/prices/data/prices-gcp.json",
        '"as_of": "',
        "the day the bundled list prices were valid: data of the past, shown as its source",
    ),
)


def _docstrings(tree: ast.AST) -> set[int]:
    """Docstrings may show a format by example (``20261126t1400z``): they are not run."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }


def baked_dates_in_code(source: str) -> list[tuple[int, str]]:
    """(line, what) for each calendar date in the code: a date in a string or f-string part, a
    ``datetime(2026, ...)`` or ``date(2026, ...)`` call, or Unix seconds of this century."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and id(node) not in docstrings:
            value = node.value
            if isinstance(value, str) and (DATE_TEXT.search(value) or EPOCH_TEXT.search(value)):
                found.append((node.lineno, repr(value)))
            elif (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and int(value) in EPOCH_SECONDS
            ):
                found.append((node.lineno, f"{value} (Unix seconds)"))
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", "")) in {"datetime", "date"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            found.append((node.lineno, f"{name}({node.args[0].value}, ...)"))
    return found


def baked_dates_in_text(text: str) -> list[tuple[int, str]]:
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if DATE_TEXT.search(line) or EPOCH_TEXT.search(line)
    ]


def _scanned_files() -> list[Path]:
    return sorted(
        path
        for top in SCANNED
        for path in (ROOT / top).rglob("*")
        if path.is_file()
        and (path.suffix == ".py" or path.suffix in FIXTURE_SUFFIXES)
        and "__pycache__" not in path.parts
        and path != Path(__file__).resolve()  # its examples below are dates on purpose
    )


@functools.cache  # parsing every file takes ~2 s: once for both tests
def scan() -> list[tuple[str, int, str]]:
    found = []
    for path in _scanned_files():
        text = path.read_text(encoding="utf-8")
        relative = path.relative_to(ROOT).as_posix()
        hits = baked_dates_in_code(text) if path.suffix == ".py" else baked_dates_in_text(text)
        found += [(relative, line, what) for line, what in hits]
    return found


def _allowed_by(path: str, what: str) -> Allowed | None:
    return next((a for a in ALLOWED if a.path == path and a.text in what), None)


def test_no_calendar_date_is_baked_into_code_tests_or_benchmarks() -> None:
    baked = [f"{path}:{line}: {what}" for path, line, what in scan() if not _allowed_by(path, what)]
    assert baked == [], "derive these from now (tests: tests/clock.py) or allow them with a reason"


def test_every_allowed_date_is_still_there() -> None:
    used = {_allowed_by(path, what) for path, _, what in scan()}
    assert [a for a in ALLOWED if a not in used] == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            'KEEP = "guardian:keep-until=2026-12-31T18:00Z"',
            ["'guardian:keep-until=2026-12-31T18:00Z'"],
        ),
        ('LABEL = "20261231t1800z"', ["'20261231t1800z'"]),
        ('VERSION = "20261120000000"', ["'20261120000000'"]),
        ('ROW = f"i-1,2026-03-01 12:02:00,{x}"', ["'i-1,2026-03-01 12:02:00,'"]),
        ("AT = datetime(2026, 11, 26, tzinfo=UTC)", ["datetime(2026, ...)"]),
        ("DAY = dt.date(2026, 11, 26)", ["date(2026, ...)"]),
        ("EPOCH = 1_795_000_000", ["1795000000 (Unix seconds)"]),
        ('ROW = "i-1,1795000000,0,5,,"', ["'i-1,1795000000,0,5,,'"]),
        ('def f():\n    """Labels look like 20261126t1400z."""', []),
        ("N = 4_294_967_295  # a 32-bit maximum, not a moment", []),
        ('ACCOUNT = "123456789012"', []),
        ('PROJECT_NUMBER = "1234567890"', []),
        ("MIB = 1_048_576", []),
    ],
)
def test_the_scan_finds_each_way_of_writing_a_date(source: str, expected: list[str]) -> None:
    assert [what for _, what in baked_dates_in_code(source)] == expected
