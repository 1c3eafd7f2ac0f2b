"""The real traces in ../shared/traces, replayed through the real policy (subsets, for speed).

CI has ``../shared`` beside the clone; a missing trace is a failure, never a skip. The full
replays and the sweep are in ``bench/backtest.py`` and the README.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from guardian.backtest.replay import BacktestResult, replay
from guardian.backtest.trace import TraceSeries, read_trace
from guardian.config import Config, apply_overrides, parse_config

TRACES = Path(__file__).resolve().parents[2] / ".." / "shared" / "traces"
FIXED_30 = ("idle.window=30m", "idle.history_margin=0", "idle.window_bursty=0s")
# Philly excerpts are 14 minutes: poll every minute, no grace, no minimum uptime, so that the
# idle rule itself is what is tested inside running jobs.
PHILLY_RAW = ("poll_interval=1m", "idle.grace=0s", "idle.min_uptime=0s")


def config(*overrides: str) -> Config:
    return parse_config(apply_overrides({}, overrides))


def load(name: str) -> list[TraceSeries]:
    path = TRACES / name
    if not path.is_file():
        pytest.fail(
            f"trace {path.resolve()} is missing: the tests read the shared traces from "
            "../shared/traces beside the clone"
        )
    return read_trace(path)


def worked(series: TraceSeries) -> bool:
    return any(s.gpu_util_pct >= 10 for s in series.samples)


@pytest.fixture(scope="module")
def alibaba() -> list[TraceSeries]:
    """Every fifth pod, plus every pod that never works (the ones that must be stopped)."""
    pods = load("alibaba-sd-serving-2026.csv.gz")
    assert len(pods) == 143
    assert sum(len(p.samples) for p in pods) == 157_417
    return [p for p in pods if int(p.instance.instance_id[3:]) % 5 == 0 or not worked(p)]


@pytest.fixture(scope="module")
def job_windows() -> list[TraceSeries]:
    windows = load("philly-2017-job-windows.csv.gz")
    assert all(len(w.samples) <= 14 for w in windows)
    assert {w.job_running for w in windows} == {True, False}
    return windows[:2500]


def by_id(result: BacktestResult) -> dict[str, object]:
    return {o.instance_id: o for o in result.outcomes}


def test_alibaba_history_signals_spare_the_serving_pods(alibaba: list[TraceSeries]) -> None:
    fixed = replay(alibaba, config(*FIXED_30))
    default = replay(alibaba, config())
    # The fixed 30-minute window stops most serving pods between requests ...
    assert fixed.totals.interrupted >= 15
    # ... the history-aware default keeps within the goal (at most 20 of all 143; this subset
    # is a third of them) ...
    assert default.totals.interrupted <= 3
    # ... and still stops every never-working pod that lives long enough to be judged.
    judged = [o for o in default.outcomes if o.never_worked and o.hours >= 2]
    assert len(judged) == 3
    assert all(o.stopped_at is not None and o.interrupted == 0 for o in judged)
    assert default.totals.reclaimed_hours > 60


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
    assert len(running_stops) > 20
    assert all(o.interrupted == 1 for o in running_stops)
    assert result.totals.interrupted >= len(running_stops)
    # Their pauses are shorter than a quarter of an hour: a 15-minute window never fires.
    assert replay(job_windows, config(*PHILLY_RAW, "idle.window=15m")).totals.stops == 0


def test_philly_minutes_read_as_stretches_and_replay_without_interruptions() -> None:
    stretches = load("philly-2017-gpu-minutes.csv.gz")
    assert len(stretches) > 8000
    subset = stretches[:1000]
    assert replay(subset, config()).totals.interrupted == 0
