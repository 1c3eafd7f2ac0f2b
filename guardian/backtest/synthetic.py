"""Synthetic training-style GPU histories with a fixed seed, for backtests, tests and the README.

Each instance lives the life a forgotten training machine does: a few minutes of setup, one or
more training runs (a sweep restarts the process, releasing GPU memory for a minute or two),
each run broken by eval and checkpoint pauses of a few minutes and now and then a stall of 10 to
45 minutes that holds GPU memory (a slow data loader, a blocked filesystem), then an exit that
releases the memory, and an idle tail until someone notices: minutes for the lucky, hours for
most. A few timestamps are missing altogether, as from any metrics pipeline.

The same seed gives the same histories on every machine (``random.Random`` with a string seed).
"""

from __future__ import annotations

import csv
import gzip
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from guardian.backtest.trace import TraceSeries, series_from_points
from guardian.model import GpuInstance

__all__ = ["FLEET_SIZE", "TraceRow", "training_rows", "training_series", "write_trace"]

# Any instant would do (a replay runs on its own clock); Monday four weeks ago at 00:00 UTC reads
# as what it is, a recent month that has already happened, whatever the day it is generated.
_TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
START = _TODAY - timedelta(days=_TODAY.weekday() + 28)
# Machines in the fleet ``guardian backtest --synthetic`` and ``bench/backtest.py`` replay.
FLEET_SIZE = 40
STALL_MINUTES = (10, 45)  # longest stalls stay under the default 60-minute window
MISSING_TIMESTAMP_RATE = 0.002


@dataclass(frozen=True)
class TraceRow:
    """One row of the backtest trace format: one GPU at one timestamp."""

    instance_id: str
    at: datetime
    gpu_index: int
    gpu_util: float
    gpu_mem_used_mib: float
    notebook_idle_s: float | None = None  # the agent's notebook signal; None = absent


@dataclass(frozen=True)
class _Minute:
    working: bool
    mem_mib: float  # per GPU; under 256 = released


def _timeline(rng: random.Random) -> list[_Minute]:
    """Minute-by-minute phases of one instance's life."""
    model_mib = rng.choice((14_000.0, 30_000.0, 62_000.0))
    minutes: list[_Minute] = []

    def add(count: int, working: bool, mem_mib: float) -> None:
        minutes.extend(_Minute(working, mem_mib) for _ in range(count))

    add(1, False, 0.0)  # the process starts: nothing on the GPU yet
    add(rng.randint(2, 7), False, model_mib * 0.3)  # loading data and the model
    runs = rng.choice((1, 1, 2, 3))
    for run in range(runs):
        if run:
            add(rng.randint(1, 4), False, rng.uniform(0, 120))  # the sweep's next process
        left = rng.randint(90, 600)
        while left > 0:
            chunk = min(left, rng.randint(25, 80))
            add(chunk, True, model_mib)
            left -= chunk
            if left <= 0:
                break  # the run ends on a training step, then the process exits
            kind = rng.random()
            if kind < 0.6:
                pause = rng.randint(2, 8)  # evaluation
            elif kind < 0.9:
                pause = rng.randint(1, 3)  # checkpoint
            else:
                pause = rng.randint(*STALL_MINUTES)  # a stall that keeps the memory
            add(pause, False, model_mib)
            left -= pause
    add(rng.randint(0, 2), False, model_mib)  # final checkpoint written
    tail = rng.randint(0, 20) if rng.random() < 0.2 else rng.randint(60, 720)
    add(tail, False, rng.uniform(0, 120))  # exited: memory released, nobody stopped it
    return minutes


def training_rows(
    seed: int = 7, instances: int = FLEET_SIZE, *, gpus: int = 2, start: datetime = START
) -> Iterator[TraceRow]:
    """Rows of ``instances`` training machines with ``gpus`` GPUs each, one-minute samples."""
    for number in range(instances):
        rng = random.Random(f"training/{seed}/{number}")
        instance_id = f"train-{number:02d}"
        began = start + timedelta(minutes=rng.randint(0, 360))
        for minute, phase in enumerate(_timeline(rng)):
            if rng.random() < MISSING_TIMESTAMP_RATE:
                continue  # the metrics pipeline lost this timestamp for every GPU
            at = began + timedelta(minutes=minute)
            for gpu in range(gpus):
                util = (
                    min(100.0, max(20.0, rng.gauss(92.0, 5.0)))
                    if phase.working
                    else rng.uniform(0.0, 2.0)
                )
                mem = phase.mem_mib if phase.mem_mib < 256 else phase.mem_mib + rng.gauss(0, 40)
                yield TraceRow(instance_id, at, gpu, round(util, 1), round(max(0.0, mem)))


def training_series(
    seed: int = 7,
    instances: int = FLEET_SIZE,
    *,
    gpus: int = 2,
    start: datetime = START,
    instance_type: str = "",
) -> list[TraceSeries]:
    """The same histories as ``training_rows``, reduced to series as ``read_trace`` would."""
    util: dict[str, dict[str, dict[datetime, float]]] = {}
    mem: dict[str, dict[str, dict[datetime, float]]] = {}
    for row in training_rows(seed, instances, gpus=gpus, start=start):
        util.setdefault(row.instance_id, {}).setdefault(str(row.gpu_index), {})[row.at] = (
            row.gpu_util
        )
        mem.setdefault(row.instance_id, {}).setdefault(str(row.gpu_index), {})[row.at] = (
            row.gpu_mem_used_mib
        )
    series = []
    for instance_id in sorted(util):
        launch = min(min(values) for values in util[instance_id].values())
        instance = GpuInstance(
            provider="aws",
            account="synthetic",
            region="us-east-1",
            zone="",
            instance_id=instance_id,
            instance_type=instance_type,
            launch_time=launch,
            gpu_count=gpus,
        )
        series.append(series_from_points(instance, util[instance_id], mem[instance_id]))
    return series


def write_trace(
    rows: Sequence[TraceRow] | Iterator[TraceRow], path: Path, *, notebook_column: bool = False
) -> int:
    """Write rows in the backtest format (gzipped when the name ends in .gz); returns the count.
    ``notebook_column`` adds ``notebook_idle_s`` (empty where the signal is absent)."""
    opener = gzip.open if path.suffix == ".gz" else open
    count = 0
    header = ["instance_id", "timestamp", "gpu_index", "gpu_util", "gpu_mem_used_mib"]
    with opener(path, "wt", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*header, "notebook_idle_s"] if notebook_column else header)
        for row in rows:
            cells = [
                row.instance_id,
                row.at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                row.gpu_index,
                f"{row.gpu_util:g}",
                f"{row.gpu_mem_used_mib:g}",
            ]
            if notebook_column:
                idle_s = row.notebook_idle_s
                cells.append("" if idle_s is None else f"{idle_s:g}")
            writer.writerow(cells)
            count += 1
    return count
