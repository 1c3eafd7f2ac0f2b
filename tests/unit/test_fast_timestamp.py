"""fast_timestamp: epoch numbers to UTC datetimes, one shared object per instant, bounded."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from guardian.providers.aws import clients as aws_clients
from guardian.providers.aws.clients import fast_timestamp


def test_epochs_become_utc_and_each_instant_is_one_object() -> None:
    first = fast_timestamp(1_795_000_000)
    assert first == datetime.fromtimestamp(1_795_000_000, UTC)
    assert first.tzinfo is UTC
    assert fast_timestamp(1_795_000_000) is first
    assert fast_timestamp(1_795_000_000.0) is first  # the same instant, however encoded
    assert fast_timestamp(1_795_000_000.5) == datetime.fromtimestamp(1_795_000_000.5, UTC)


def test_strings_go_to_botocore_and_are_not_cached() -> None:
    parsed = fast_timestamp("2026-11-26T12:00:00Z")
    assert parsed == datetime(2026, 11, 26, 12, tzinfo=UTC)


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aws_clients, "_EPOCHS_MAX", 10)
    monkeypatch.setattr(aws_clients, "_EPOCHS", {})
    for second in range(25):
        assert fast_timestamp(1_795_000_000 + second).second == (40 + second) % 60
        assert len(aws_clients._EPOCHS) <= 10
