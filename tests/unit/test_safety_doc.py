"""``docs/SAFETY.md`` names a test for every guarantee: each must exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from guardian.config import parse_config
from guardian.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SAFETY = REPO / "docs" / "SAFETY.md"
NAMED = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def test_every_guarantee_names_a_test() -> None:
    text = SAFETY.read_text(encoding="utf-8")
    guarantees = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(guarantees) >= 40
    assert [line for line in guarantees if not NAMED.search(line)] == []


def test_every_test_named_in_safety_md_exists() -> None:
    named = NAMED.findall(SAFETY.read_text(encoding="utf-8"))
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
