"""``docs/SAFETY-notes.md`` names a test for every guarantee: each must exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from guardian.config import parse_config
from guardian.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
NOTES = REPO / "docs" / "SAFETY-notes.md"
NAMED = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def test_every_test_named_in_the_safety_notes_exists() -> None:
    named = NAMED.findall(NOTES.read_text(encoding="utf-8"))
    assert len(named) >= 15
    missing = [
        f"{path}::{name}"
        for path, name in named
        if not (REPO / path).is_file()
        or not re.search(rf"^def {name}\(", (REPO / path).read_text(encoding="utf-8"), re.M)
    ]
    assert missing == []


@pytest.mark.parametrize("value", [0, 101, -3])
def test_alert_after_failed_cycles_is_bounded_with_a_reason(value: int) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"limits": {"alert_after_failed_cycles": value}})
    message = str(raised.value)
    assert message.startswith("config: limits.alert_after_failed_cycles: ")
    assert "is not between 1 and 100" in message
    assert "\n" not in message
    assert parse_config({}).limits.alert_after_failed_cycles == 3
