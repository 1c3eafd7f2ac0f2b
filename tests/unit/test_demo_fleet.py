"""The demo's fleet works on any day: every time in it is derived from ``now``."""

from __future__ import annotations

import ast
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from guardian.policy import protection
from guardian.simulated.demo_fleet import demo_fleet

PACKAGE = Path(__file__).resolve().parents[2] / "guardian"
# A calendar date written into code: 2026-12-31, 20261231t1800z, datetime(2026, ...).
DATE_TEXT = re.compile(r"\b(19|20)\d\d-?[01]\d-?[0-3]\d[tT ]?")


@pytest.mark.parametrize("years_ahead", [0, 1, 5, 30])
def test_the_kept_instance_stays_protected_whatever_the_date(years_ahead: int) -> None:
    now = datetime.now(UTC) + timedelta(days=365 * years_ahead)
    kept = [
        instance
        for fleet in demo_fleet(now).values()
        for instance in fleet
        if any("keep-until" in key for key in instance.tags)
    ]
    assert kept, "the demo shows a keep-until tag"
    for instance in kept:
        # Protected now, and still during an hour of `guardian demo --serve`.
        assert protection(instance.tags, now).protected
        assert protection(instance.tags, now + timedelta(hours=1)).protected


def _baked_dates(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and DATE_TEXT.search(node.value)
        ):
            found.append(f"{path.name}:{node.lineno}: {node.value!r}")
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", "")) == "datetime"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.append(f"{path.name}:{node.lineno}: datetime({node.args[0].value}, ...)")
    return found


def test_no_calendar_date_is_baked_into_the_demo_or_the_commands() -> None:
    paths = sorted((PACKAGE / "simulated").glob("*.py")) + sorted(
        (PACKAGE / "commands").glob("*.py")
    )
    assert [found for path in paths for found in _baked_dates(path)] == []
