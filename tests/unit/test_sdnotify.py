"""The systemd notify protocol never blocks the daemon, even when nobody reads the socket."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from guardian.daemon import sdnotify


def test_a_full_notify_queue_drops_pings_instead_of_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unread:
        unread.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        started = time.monotonic()
        results = [sdnotify.notify("WATCHDOG=1", f"STATUS=cycle {n}") for n in range(2000)]
        elapsed = time.monotonic() - started
    assert results[0] is True  # the first ones are queued
    assert results[-1] is False  # once the queue is full they are dropped, not waited on
    assert elapsed < 10


def test_outside_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
