"""Log lines go to stderr as it is when they are written (issue 12: a spinner hid them)."""

from __future__ import annotations

import io
import sys

import pytest
import structlog

from guardian.logs import configure_logging


def test_a_log_line_goes_to_the_current_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    # rich's spinner swaps sys.stderr for a proxy that prints above the spinner; a logger that
    # kept the stderr of its start wrote under the spinner, which then drew over the line.
    configure_logging("console", "info")
    swapped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", swapped)
    structlog.get_logger("test").warning("discovery_failed", region="us-east-1")
    assert "discovery_failed" in swapped.getvalue()
    assert "region=us-east-1" in swapped.getvalue()
