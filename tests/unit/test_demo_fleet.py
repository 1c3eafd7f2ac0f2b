"""The demo's fleet works on any day: every time in it is derived from ``now`` (that no date is
written into it, or anywhere else, is tests/unit/test_no_baked_dates.py's to check)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from guardian.policy import protection
from guardian.simulated.demo_fleet import demo_fleet


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
