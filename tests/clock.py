"""The moments tests run at: derived from the real clock, read once per test process.

No calendar date is written into a test (tests/unit/test_no_baked_dates.py checks): a test that
pins a day passes until that day drifts out of some window (a price list's age, a keep-until
tag, a retention period) and then fails, or quietly stops proving anything.

Every moment here lies in the past and at a fixed time of day in UTC:
- in the past, so that code which also reads the real clock never sees a "now" from the future;
- at a fixed hour, so that a test may rely on it (a digest at 09:00, a label's ``t1200z``);
- from one reading of the clock, so that two modules never disagree across midnight.
UTC has no daylight saving time, so no moment here lands in a skipped or doubled hour.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_READ_AT = datetime.now(UTC)

# Yesterday at 00:00 UTC: a whole day that is over, to place a test's moments in.
DAY = _READ_AT.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
# Yesterday at 12:00 UTC: the "now" of most tests.
NOW = DAY + timedelta(hours=12)
# Monday of the week before yesterday's, 00:00 UTC: a whole working week (Monday to Sunday) that
# is over, for tests whose trace follows the days of the week.
MONDAY = DAY - timedelta(days=DAY.weekday() + 7)


def at(hour: int, minute: int = 0, second: int = 0, *, days: int = 0) -> datetime:
    """``DAY`` at this time of day, ``days`` later (negative: earlier)."""
    return DAY + timedelta(days=days, hours=hour, minutes=minute, seconds=second)


def iso_z(moment: datetime) -> str:
    """``2000-01-31T12:00:00Z``: how AWS and our JSON write an instant."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
