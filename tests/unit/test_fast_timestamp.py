"""fast_timestamp: epoch numbers to UTC datetimes, one shared object per instant, bounded."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from guardian.providers.aws import clients as aws_clients
from guardian.providers.aws.clients import fast_timestamp
from tests.clock import at, iso_z

EPOCH = int(at(12, 0, 40).timestamp())  # 40 s past a minute: the bounded test counts seconds


def test_epochs_become_utc_and_each_instant_is_one_object() -> None:
    first = fast_timestamp(EPOCH)
    assert first == datetime.fromtimestamp(EPOCH, UTC)
    assert first.tzinfo is UTC
    assert fast_timestamp(EPOCH) is first
    assert fast_timestamp(float(EPOCH)) is first  # the same instant, however encoded
    assert fast_timestamp(EPOCH + 0.5) == datetime.fromtimestamp(EPOCH + 0.5, UTC)


def test_strings_go_to_botocore_and_are_not_cached() -> None:
    parsed = fast_timestamp(iso_z(at(12)))
    assert parsed == at(12)


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aws_clients, "_EPOCHS_MAX", 10)
    monkeypatch.setattr(aws_clients, "_EPOCHS", {})
    for second in range(25):
        assert fast_timestamp(EPOCH + second).second == (40 + second) % 60
        assert len(aws_clients._EPOCHS) <= 10
