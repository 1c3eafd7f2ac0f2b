"""Real and realistic traces replayed through the real policy, from what the repository holds.

The Philly excerpts in ``bench/traces`` are real data (CC BY 4.0, credited there); the serving
fleet is generated in the shape of the Alibaba trace, which may not be copied into the
repository. The full replays of the real traces and the sweep are in ``bench/backtest.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from guardian.backtest.replay import replay
from guardian.backtest.trace import TraceSeries, read_trace
from guardian.config import Config, apply_overrides, parse_config
from tests.serving_trace import serving_series

REPO = Path(__file__).resolve().parents[2]
TRACES = REPO / "bench" / "traces"
FIXED_30 = ("idle.window=30m", "idle.history_margin=0", "idle.window_bursty=0s")
# Philly excerpts are 14 minutes: poll every minute, no grace, no minimum uptime, so that the
# idle rule itself is what is tested inside running jobs.
PHILLY_RAW = ("poll_interval=1m", "idle.grace=0s", "idle.min_uptime=0s")


def config(*overrides: str) -> Config:
    return parse_config(apply_overrides({}, overrides))


@pytest.fixture(scope="module")
def serving() -> list[TraceSeries]:
    return serving_series()


@pytest.fixture(scope="module")
def job_windows() -> list[TraceSeries]:
    windows = read_trace(TRACES / "philly-2017-job-windows-excerpt.csv.gz")
    assert len(windows) == 446
    assert all(len(w.samples) <= 14 for w in windows)
    assert {w.job_running for w in windows} == {True, False}
    return windows


def _path_strings(path: Path) -> list[tuple[int, str]]:
    """The string constants of a module that are not docstrings or comments, nor the target of
    a symbolic link a test makes (``../../nvme1n1`` inside a fake sysfs tree is relative to the
    link, not a path the test reads)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "symlink_to"
        ):
            skipped |= {id(inner) for arg in node.args for inner in ast.walk(arg)}
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in skipped
    ]


def test_no_test_reads_outside_the_repository() -> None:
    # A clone has nothing beside it: a test that reads the shared folder next to this
    # checkout fails there (issue 12). Only benchmarks may look for it, and say when it is missing.
    offenders = [
        f"{path.relative_to(REPO)}:{line}: {text!r}"
        for path in sorted((REPO / "tests").rglob("*.py"))
        if path != Path(__file__).resolve()
        for line, text in _path_strings(path)
        if text in ("..", "shared") or "../" in text or text.startswith("/work/")
    ]
    assert offenders == []


def test_serving_history_signals_spare_the_serving_pods(serving: list[TraceSeries]) -> None:
    fixed = replay(serving, config(*FIXED_30))
    default = replay(serving, config())
    # The fixed 30-minute window stops nearly every serving pod between requests ...
    assert fixed.totals.interrupted >= 30
    # ... the history-aware default interrupts a few ...
    assert default.totals.interrupted <= 3
    # ... and still stops every never-serving pod that lives long enough to be judged.
    judged = [o for o in default.outcomes if o.never_worked and o.hours >= 2]
    assert len(judged) == 3
    assert all(o.stopped_at is not None and o.interrupted == 0 for o in judged)
    # Fewer stops, yet more reclaimed: a pod stopped between requests comes straight back.
    assert default.totals.reclaimed_hours > fixed.totals.reclaimed_hours + 5


def test_philly_windows_no_running_job_is_stopped_at_the_default_config(
    job_windows: list[TraceSeries],
) -> None:
    result = replay(job_windows, config())
    assert result.totals.stops == 0
    assert result.totals.interrupted == 0


def test_philly_windows_the_label_counts_stops_inside_running_jobs(
    job_windows: list[TraceSeries],
) -> None:
    # A 5-minute window fires inside running training jobs; each such stop is an interruption
    # by the trace's own label, whether or not work shows up within the excerpt.
    result = replay(job_windows, config(*PHILLY_RAW, "idle.window=5m"))
    running_stops = [o for o in result.outcomes if o.job_running and o.stopped_at is not None]
    assert len(running_stops) > 15
    assert all(o.interrupted == 1 for o in running_stops)
    assert result.totals.interrupted >= len(running_stops)
    # Their pauses are shorter than a quarter of an hour: a 15-minute window never fires.
    assert replay(job_windows, config(*PHILLY_RAW, "idle.window=15m")).totals.stops == 0


def test_philly_minutes_read_as_stretches_and_replay_without_interruptions() -> None:
    stretches = read_trace(TRACES / "philly-2017-gpu-minutes-excerpt.csv.gz")
    assert len(stretches) == 207
    assert replay(stretches, config()).totals.interrupted == 0
    # A 5-minute window does fire inside them: the excerpt is not trivially idle-free.
    assert replay(stretches, config(*PHILLY_RAW, "idle.window=5m")).totals.stops > 20
