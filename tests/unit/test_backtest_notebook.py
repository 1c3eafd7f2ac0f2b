"""The notebook signal in the backtest: the trace column, the replay through the same decide,
the synthetic notebook fleet, and the properties the issue asks of it."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from guardian.backtest.cloud_traces import history_from_providers
from guardian.backtest.replay import InstanceOutcome, replay
from guardian.backtest.synthetic import write_trace
from guardian.backtest.synthetic_notebook import notebook_rows, notebook_series
from guardian.backtest.trace import TraceError, TraceSeries, read_trace
from guardian.cli import app
from guardian.config import Config, apply_overrides, parse_config
from guardian.model import GpuSample, InstanceMetric
from tests.clock import MONDAY, iso_z
from tests.fake_provider import FakeProvider, make_instance

NOTEBOOK = InstanceMetric.NOTEBOOK_IDLE_S


def config(*overrides: str) -> Config:
    return parse_config(apply_overrides({}, overrides))


def test_the_trace_column_is_read_per_instance_blank_where_absent(tmp_path: Path) -> None:
    path = tmp_path / "nb.csv"
    first = MONDAY + timedelta(hours=8)
    at = first + timedelta(minutes=1)
    path.write_text(
        "instance_id,timestamp,gpu_index,gpu_util,gpu_mem_used_mib,notebook_idle_s\n"
        f"nb,{iso_z(first)},0,1,9000,\n"
        f"nb,{iso_z(first)},1,1,9000,\n"
        f"nb,{iso_z(at)},0,1,9000,3660\n"
        f"nb,{iso_z(at)},1,1,9000,3600\n"  # two rows disagree: the smaller counts
        f"job,{iso_z(first)},0,90,9000,\n"
    )
    job, nb = read_trace(path)
    assert job.instance_series == {}  # never touched: no entry, not a 0
    assert nb.instance_series == {NOTEBOOK: ((at, 3600.0),)}


@pytest.mark.parametrize(
    ("cell", "message"),
    [("-5", "line 2: notebook_idle_s -5 is negative"), ("soon", "notebook_idle_s 'soon' is not")],
)
def test_a_bad_notebook_cell_names_the_file_and_line(
    tmp_path: Path, cell: str, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(f"instance_id,timestamp,gpu_index,gpu_util,notebook_idle_s\nnb,0,0,1,{cell}\n")
    with pytest.raises(TraceError, match=message):
        read_trace(path)


def test_written_synthetic_notebooks_replay_as_generated(tmp_path: Path) -> None:
    path = tmp_path / "notebooks.csv.gz"
    write_trace(notebook_rows(seed=3, instances=3), path, notebook_column=True)
    from_file = read_trace(path)
    generated = notebook_series(seed=3, instances=3)
    assert [s.instance_series for s in from_file] == [s.instance_series for s in generated]
    assert replay(from_file, config()).outcomes == replay(generated, config()).outcomes


def beyond_delay(outcomes: tuple[InstanceOutcome, ...], cfg: Config) -> tuple[float, float]:
    """(reclaimed, idle tail) hours beyond window_notebook + grace + one poll, each instance's
    reclaimed hours capped at its own tail beyond that delay."""
    delay = (cfg.idle.window_notebook + cfg.idle.grace + cfg.poll_interval).total_seconds()
    beyond = [max(0.0, o.idle_tail_hours - delay / 3600) for o in outcomes]
    reclaimed = sum(min(o.reclaimed_hours, b) for o, b in zip(outcomes, beyond, strict=True))
    return reclaimed, sum(beyond)


def test_notebook_fleet_meets_the_goal_at_the_default_config() -> None:
    fleet = notebook_series(seed=11, instances=12)
    cfg = config()
    result = replay(fleet, cfg)
    assert result.totals.interrupted == 0
    reclaimed, beyond = beyond_delay(result.outcomes, cfg)
    assert beyond > 30  # hours of kernels left open to win back
    assert reclaimed >= 0.8 * beyond
    assert any(
        r.startswith("notebook kernel idle") for o in result.outcomes for r in o.stop_reasons
    )
    # Without the signal the same fleet waits out its bursty history: the goal is not met
    # by accident.
    before = replay(fleet, config("idle.window_notebook=0s"))
    assert before.totals.interrupted == 0
    assert beyond_delay(before.outcomes, cfg)[0] < 0.7 * beyond


def test_cloud_history_carries_the_signal_into_the_replay() -> None:
    end = MONDAY + timedelta(days=4, hours=12)  # a Friday noon
    instance = make_instance("i-nb", launch_time=end - timedelta(days=2))
    (generated,) = notebook_series(seed=5, instances=1, start=end - timedelta(days=1, hours=6))
    provider = FakeProvider(
        [instance],
        samples={instance.key: generated.samples},
        notebook={instance.key: generated.instance_series[NOTEBOOK]},
    )
    history = history_from_providers([provider], end - timedelta(days=2), end)
    (series,) = history.series
    assert series.instance_series == generated.instance_series
    outcome = replay(history.series, config()).outcomes[0]
    assert outcome.stop_reasons[0].startswith("notebook kernel idle")


def test_cli_replays_the_synthetic_notebook_fleet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GUARDIAN_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["backtest", "--synthetic-notebooks", "--format", "json"], catch_exceptions=True
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["source"] == "synthetic notebook fleet"
    assert document["config"]["idle"]["window_notebook"] == "1h"
    assert document["totals"]["interrupted"] == 0
    assert document["totals"]["instances"] == 40


# -- properties ----------------------------------------------------------------------------------


def masked(series: TraceSeries, keep: set[datetime] | None) -> TraceSeries:
    """The series with the notebook signal only at the times in ``keep`` (None: none at all)."""
    points = series.instance_series.get(NOTEBOOK, ())
    kept = tuple(p for p in points if keep is not None and p[0] in keep)
    return replace(series, instance_series={NOTEBOOK: kept} if kept else {})


def stop_of(series: TraceSeries, cfg: Config) -> datetime | None:
    return replay([series], cfg).outcomes[0].stopped_at


def signal_at(series: TraceSeries, moment: datetime, window: timedelta) -> bool:
    """Whether the signal, at least ``window`` long, stood with the newest sample at ``moment``."""
    newest = max(s.at for s in series.samples if s.at <= moment)
    points = dict(series.instance_series.get(NOTEBOOK, ()))
    return points.get(newest, 0.0) >= window.total_seconds()


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10_000), st.sampled_from([0.2, 0.7, 1.0]))
def test_the_signal_only_ever_stops_a_machine_when_no_browser_is_connected(
    seed: int, mask_seed: int, share: float
) -> None:
    """Randomly reconnected browsers (signal points dropped): a stop that comes earlier than
    without the signal comes after the signal stood at window_notebook, and where no point
    stands at window_notebook anywhere nothing changes at all."""
    rng = random.Random(mask_seed)
    cfg = config()
    (full,) = notebook_series(seed=seed, instances=1)
    times = [at for at, _ in full.instance_series.get(NOTEBOOK, ())]
    keep = {at for at in times if rng.random() < share}
    series = masked(full, keep)
    without = stop_of(masked(full, None), cfg)
    with_signal = stop_of(series, cfg)
    window = cfg.idle.window_notebook
    standing = [at for at, v in series.instance_series.get(NOTEBOOK, ()) if v >= 3600]
    if not standing:
        assert with_signal == without  # rows without it (or below the window) are untouched
    if with_signal is not None and (without is None or with_signal < without):
        assert any(at <= with_signal for at in standing)
        warned = with_signal - cfg.idle.grace
        assert any(signal_at(series, warned + timedelta(minutes=m), window) for m in (0, 5, 10))


def test_a_blank_column_changes_nothing(tmp_path: Path) -> None:
    rows = list(notebook_rows(seed=2, instances=2))
    plain, blank = tmp_path / "plain.csv", tmp_path / "blank.csv"
    write_trace(rows, plain)
    write_trace([replace(r, notebook_idle_s=None) for r in rows], blank, notebook_column=True)
    assert (
        replay(read_trace(blank), config()).outcomes == replay(read_trace(plain), config()).outcomes
    )


def test_gpu_samples_alone_decide_when_the_signal_is_below_the_window() -> None:
    (full,) = notebook_series(seed=4, instances=1)
    capped = replace(
        full,
        instance_series={
            NOTEBOOK: tuple((at, min(v, 3599.0)) for at, v in full.instance_series[NOTEBOOK])
        },
    )
    plain = masked(full, None)
    assert replay([capped], config()).outcomes == replay([plain], config()).outcomes
    assert isinstance(full.samples[0], GpuSample)
