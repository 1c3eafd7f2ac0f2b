"""Replay the real traces in full through the real policy: totals, the idle.window sweep, timings.

    .venv/bin/python bench/backtest.py                 # markdown tables on stdout
    .venv/bin/python bench/backtest.py --json out.json # and the figures as JSON

Traces are read from ``../shared/traces`` beside the clone (``--traces`` to point elsewhere).
Where a Philly trace is not there, the excerpt shipped in ``bench/traces`` is replayed instead;
where the Alibaba trace is not there (it may not be copied into the repository), its rows are
left out. Either is said on stderr and in the JSON's ``sources``. Rows of the sweep:

- **Alibaba serving** (143 pods, 23 h): the default history-aware policy, and the same window
  with the history signals off (``history_margin=0``, ``window_bursty=0s``): a fixed window;
- **training (synthetic)**: ``guardian.backtest.synthetic.training_series()`` (40 machines,
  seed 7: what ``guardian backtest --synthetic`` replays),
  with the share of the idle tail reclaimed beyond the detection delay (window_released +
  grace + one poll, the released window being the one a finished run is judged by);
- **Philly job windows**: 14-minute excerpts around 5,910 jobs, polled every minute with no
  grace and no minimum uptime so that the idle rule itself is tested; an interruption is a stop
  inside a window whose job was still running (the trace's label) or followed by work;
- **notebooks (synthetic)**: ``guardian.backtest.synthetic_notebook.notebook_series(seed=11,
  instances=40)`` with the agent's notebook signal, by default and with it off
  (``idle.window_notebook=0s``, the policy before it), with the share of the idle tail reclaimed
  beyond window_notebook + grace + one poll (each instance's reclaimed hours capped at its own
  tail beyond that delay, so an early stop of one does not make up for a late one of another).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from guardian.backtest.replay import BacktestResult, replay
from guardian.backtest.synthetic import training_series
from guardian.backtest.synthetic_notebook import notebook_series
from guardian.backtest.trace import TraceSeries, read_trace
from guardian.config import Config, apply_overrides, parse_config

REPO = Path(__file__).resolve().parents[1]
EXCERPTS = REPO / "bench" / "traces"
FIXED = ("idle.history_margin=0", "idle.window_bursty=0s")
NOTEBOOK_OFF = ("idle.window_notebook=0s",)
PHILLY_RAW = ("poll_interval=1m", "idle.grace=0s", "idle.min_uptime=0s")
WINDOWS = ("5m", "10m", "20m", "30m", "60m", "2h")


def config(*overrides: str) -> Config:
    return parse_config(apply_overrides({}, overrides))


def timed(series: Sequence[TraceSeries], cfg: Config) -> tuple[BacktestResult, float, float]:
    """The replay, its wall-clock seconds and its CPU seconds (steadier on a shared machine)."""
    started, cpu = time.perf_counter(), time.process_time()
    result = replay(series, cfg)
    return result, time.perf_counter() - started, time.process_time() - cpu


def beyond_delay(result: BacktestResult, cfg: Config) -> float | None:
    """Reclaimed share of the idle tail beyond window_released + grace + one poll."""
    delay_h = (cfg.idle.window_released + cfg.idle.grace + cfg.poll_interval).total_seconds() / 3600
    beyond = sum(max(0.0, o.idle_tail_hours - delay_h) for o in result.outcomes)
    return result.totals.reclaimed_hours / beyond if beyond else None


def beyond_notebook_delay(result: BacktestResult, cfg: Config) -> float | None:
    """Reclaimed share of the idle tail beyond window_notebook + grace + one poll, each
    instance's reclaimed hours capped at its own tail beyond that delay."""
    delay = config().idle.window_notebook + cfg.idle.grace + cfg.poll_interval
    delay_h = delay.total_seconds() / 3600
    beyond = [max(0.0, o.idle_tail_hours - delay_h) for o in result.outcomes]
    reclaimed = sum(min(o.reclaimed_hours, b) for o, b in zip(result.outcomes, beyond, strict=True))
    return reclaimed / sum(beyond) if sum(beyond) else None


def figures(result: BacktestResult, seconds: float, cpu: float) -> dict[str, Any]:
    totals = result.totals
    return {
        "instances": totals.instances,
        "polls": totals.polls,
        "stops": totals.stops,
        "interrupted": totals.interrupted,
        "never_worked": totals.never_worked,
        "never_worked_stopped": totals.never_worked_stopped,
        "idle_tail_hours": round(totals.idle_tail_hours, 1),
        "reclaimed_hours": round(totals.reclaimed_hours, 1),
        "reclaimed_fraction": (
            None if totals.reclaimed_fraction is None else round(totals.reclaimed_fraction, 3)
        ),
        "replay_seconds": round(seconds, 2),
        "replay_cpu_seconds": round(cpu, 2),
    }


def cell(entry: dict[str, Any]) -> str:
    fraction = entry["reclaimed_fraction"]
    shown = "—" if fraction is None else f"{fraction:.0%}"
    return f"{shown} / {entry['interrupted']}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=REPO.parent / "shared" / "traces")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    loaded: dict[str, tuple[list[TraceSeries], float]] = {}
    sources: dict[str, str] = {}
    for name, excerpt in (
        ("alibaba-sd-serving-2026.csv.gz", None),
        ("philly-2017-gpu-minutes.csv.gz", "philly-2017-gpu-minutes-excerpt.csv.gz"),
        ("philly-2017-job-windows.csv.gz", "philly-2017-job-windows-excerpt.csv.gz"),
    ):
        path = args.traces / name
        if not path.is_file():
            if excerpt is None:
                print(f"{path} not found: its rows are left out", file=sys.stderr)
                continue
            print(
                f"{path} not found: replaying the excerpt bench/traces/{excerpt}", file=sys.stderr
            )
            path = EXCERPTS / excerpt
        sources[name] = str(path)
        started = time.perf_counter()
        loaded[name] = (read_trace(path), time.perf_counter() - started)
    alibaba = loaded.get("alibaba-sd-serving-2026.csv.gz", ([], 0.0))[0]
    minutes = loaded["philly-2017-gpu-minutes.csv.gz"][0]
    windows = loaded["philly-2017-job-windows.csv.gz"][0]
    training = training_series()
    notebooks = notebook_series(seed=11, instances=40)

    report: dict[str, Any] = {
        "sources": sources,
        "read_seconds": {k: round(v[1], 2) for k, v in loaded.items()},
    }
    defaults: dict[str, Any] = {}
    for label, series, cfg in (
        ("alibaba (default)", alibaba, config()),
        ("alibaba (fixed 30m window, 15m grace)", alibaba, config("idle.window=30m", *FIXED)),
        ("philly gpu-minutes (default)", minutes, config()),
        ("philly job-windows (default)", windows, config()),
        (
            "philly job-windows (1m polls, 10m window, no grace)",
            windows,
            config(*PHILLY_RAW, "idle.window=10m"),
        ),
        ("training, synthetic (default)", training, config()),
        ("notebooks, synthetic (default)", notebooks, config()),
        ("notebooks, synthetic (window_notebook=0s: before)", notebooks, config(*NOTEBOOK_OFF)),
        ("alibaba (window_notebook=0s: before)", alibaba, config(*NOTEBOOK_OFF)),
    ):
        if not series:
            continue  # a trace that is not here
        result, seconds, cpu = timed(series, cfg)
        entry = figures(result, seconds, cpu)
        if series is training:
            entry["reclaimed_beyond_delay"] = round(beyond_delay(result, cfg) or 0.0, 3)
        if series is notebooks:
            entry["reclaimed_beyond_notebook_delay"] = round(
                beyond_notebook_delay(result, cfg) or 0.0, 3
            )
        if series is windows:
            entry["running_job_stops"] = sum(
                1 for o in result.outcomes if o.job_running and o.stopped_at is not None
            )
        defaults[label] = entry
    report["defaults"] = defaults

    sweep: dict[str, dict[str, Any]] = {}
    for window in WINDOWS:
        row: dict[str, Any] = {}
        for label, series, extra in (
            ("alibaba", alibaba, ()),
            ("alibaba fixed", alibaba, FIXED),
            ("training", training, ()),
            ("training fixed", training, FIXED),
            ("philly windows", windows, PHILLY_RAW),
        ):
            if not series:
                continue
            cfg = config(f"idle.window={window}", *extra)
            result, seconds, cpu = timed(series, cfg)
            row[label] = figures(result, seconds, cpu)
        sweep[window] = row
    report["sweep"] = sweep

    print("## Totals\n")
    print(
        "| replay | instances | stops | interrupted | idle tail h | reclaimed h | "
        "reclaimed | never worked (stopped) | replay s (CPU s) |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for label, e in defaults.items():
        fraction = "—" if e["reclaimed_fraction"] is None else f"{e['reclaimed_fraction']:.1%}"
        print(
            f"| {label} | {e['instances']} | {e['stops']} | {e['interrupted']} | "
            f"{e['idle_tail_hours']} | {e['reclaimed_hours']} | {fraction} | "
            f"{e['never_worked']} ({e['never_worked_stopped']}) | {e['replay_seconds']} "
            f"({e['replay_cpu_seconds']}) |"
        )
    print("\n## Notebooks: reclaimed beyond window_notebook + grace + one poll\n")
    for label, e in defaults.items():
        if "reclaimed_beyond_notebook_delay" in e:
            print(f"- {label}: {e['reclaimed_beyond_notebook_delay']:.1%}")
    print("\n## Sweep: reclaimed fraction / interruptions as idle.window varies\n")
    labels = list(next(iter(sweep.values())))
    print("| idle.window | " + " | ".join(labels) + " |")
    print("|---|" + "--:|" * len(labels))
    for window, row in sweep.items():
        print(f"| {window} | " + " | ".join(cell(row[label]) for label in labels) + " |")
    print("\nread seconds: " + ", ".join(f"{k} {v}" for k, v in report["read_seconds"].items()))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
