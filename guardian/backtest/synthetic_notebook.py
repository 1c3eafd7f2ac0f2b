"""Synthetic notebook GPU histories with a fixed seed: the case ``idle.window_notebook`` is for.

Each instance lives a notebook day: a Jupyter server starts, a kernel loads a model onto the GPU
and keeps it there, then a person works in cells — a few minutes of GPU work each — between
think-pauses of up to an hour with the browser connected (now and then the laptop is closed for
the last part of a pause: the browser disconnects, then comes back). At the end the person runs
a last cell, reads for a while, closes the browser and goes home, leaving the kernel — and the GPU
memory — held until someone notices: hours. A few shut their kernel down before leaving (the
memory is released), a few leave the browser tab open overnight (the signal never appears).

Each row carries the agent's ``notebook_idle_s`` as ``guardian.agent.notebook`` would report it:
present only while the kernel is idle with no browser connected, counting from the kernel's
last activity. The same seed gives the same histories on every machine.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from guardian.backtest.synthetic import MISSING_TIMESTAMP_RATE, START, TraceRow
from guardian.backtest.trace import TraceSeries, series_from_points
from guardian.model import GpuInstance

__all__ = ["notebook_rows", "notebook_series"]

THINK_PAUSE_MINUTES = (1, 60)  # with the browser connected: "up to an hour"
TAIL_MINUTES = (60, 720)  # the kernel left open after the browser closed
SHUTDOWN_RATE = 0.15  # the person shut the kernel down before leaving: memory released
TAB_LEFT_OPEN_RATE = 0.1  # the browser tab stays connected overnight: no signal


@dataclass(frozen=True)
class _Minute:
    working: bool  # the GPU is busy (a cell doing GPU work)
    active: bool  # the kernel is executing (a cell runs, on the GPU or not)
    mem_mib: float  # per GPU; under 256 = released
    connected: bool  # a browser is connected to the kernel
    kernel: bool  # the kernel holds the GPU (False before it starts and after a shutdown)


def _pause(rng: random.Random) -> int:
    kind = rng.random()
    if kind < 0.6:
        return rng.randint(1, 10)
    if kind < 0.9:
        return rng.randint(10, 30)
    return rng.randint(30, THINK_PAUSE_MINUTES[1])


def _timeline(rng: random.Random) -> list[_Minute]:
    """Minute-by-minute phases of one notebook machine's day."""
    model_mib = rng.choice((8_000.0, 16_000.0, 22_000.0))
    minutes: list[_Minute] = []

    def add(
        count: int,
        *,
        working: bool = False,
        active: bool = False,
        mem: float = model_mib,
        connected: bool = True,
        kernel: bool = True,
    ) -> None:
        minutes.extend(_Minute(working, active, mem, connected, kernel) for _ in range(count))

    add(rng.randint(1, 3), mem=0.0, kernel=False)  # the server starts, the notebook opens
    add(rng.randint(2, 6), active=True, mem=model_mib * 0.5)  # imports, the model loads
    for _cell in range(rng.randint(6, 30)):
        add(rng.randint(1, 12), working=True, active=True)
        pause = _pause(rng)
        if rng.random() < 0.1:  # the laptop closed for the end of the pause, then reopened
            away = rng.randint(1, pause)
            add(pause - away)
            add(away, connected=False)
        else:
            add(pause)
    add(rng.randint(1, 12), working=True, active=True)  # the last cell
    add(rng.randint(0, 30))  # reading the results
    tail = rng.randint(*TAIL_MINUTES)
    ending = rng.random()
    if ending < SHUTDOWN_RATE:
        add(tail, mem=rng.uniform(0, 120), connected=False, kernel=False)
    elif ending < SHUTDOWN_RATE + TAB_LEFT_OPEN_RATE:
        add(tail)
    else:
        add(tail, connected=False)
    return minutes


def _signals(timeline: list[_Minute]) -> list[float | None]:
    """The agent's notebook_idle_s at each minute: seconds since the kernel's last activity,
    while every GPU-holding process is the idle kernel and no browser is connected."""
    signals: list[float | None] = []
    last_active: int | None = None
    for minute, phase in enumerate(timeline):
        if phase.active or (phase.kernel and last_active is None):
            last_active = minute  # a kernel's start counts as activity
        present = phase.kernel and not phase.active and not phase.connected
        signals.append(
            float((minute - last_active) * 60) if present and last_active is not None else None
        )
    return signals


def notebook_rows(
    seed: int = 11, instances: int = 40, *, start: datetime = START
) -> Iterator[TraceRow]:
    """Rows of ``instances`` notebook machines, one-minute samples, with the notebook signal."""
    for number in range(instances):
        rng = random.Random(f"notebook/{seed}/{number}")
        instance_id = f"notebook-{number:02d}"
        gpus = rng.choice((1, 1, 1, 4))
        began = start + timedelta(minutes=rng.randint(0, 360))
        timeline = _timeline(rng)
        for minute, (phase, idle_s) in enumerate(zip(timeline, _signals(timeline), strict=True)):
            if rng.random() < MISSING_TIMESTAMP_RATE:
                continue  # the metrics pipeline lost this timestamp for every GPU
            at = began + timedelta(minutes=minute)
            for gpu in range(gpus):
                util = rng.uniform(40.0, 98.0) if phase.working else rng.uniform(0.0, 2.0)
                mem = phase.mem_mib if phase.mem_mib < 256 else phase.mem_mib + rng.gauss(0, 40)
                yield TraceRow(instance_id, at, gpu, round(util, 1), round(max(0.0, mem)), idle_s)


def notebook_series(
    seed: int = 11, instances: int = 40, *, start: datetime = START, instance_type: str = ""
) -> list[TraceSeries]:
    """The same histories as ``notebook_rows``, reduced to series as ``read_trace`` would."""
    util: dict[str, dict[str, dict[datetime, float]]] = {}
    mem: dict[str, dict[str, dict[datetime, float]]] = {}
    signal: dict[str, dict[datetime, float]] = {}
    for row in notebook_rows(seed, instances, start=start):
        gpu = str(row.gpu_index)
        util.setdefault(row.instance_id, {}).setdefault(gpu, {})[row.at] = row.gpu_util
        mem.setdefault(row.instance_id, {}).setdefault(gpu, {})[row.at] = row.gpu_mem_used_mib
        if row.notebook_idle_s is not None:
            signal.setdefault(row.instance_id, {})[row.at] = row.notebook_idle_s
    series = []
    for instance_id in sorted(util):
        instance = GpuInstance(
            provider="aws",
            account="synthetic",
            region="us-east-1",
            zone="",
            instance_id=instance_id,
            instance_type=instance_type,
            launch_time=min(min(values) for values in util[instance_id].values()),
            gpu_count=len(util[instance_id]),
        )
        series.append(
            series_from_points(
                instance,
                util[instance_id],
                mem[instance_id],
                notebook_idle=signal.get(instance_id),
            )
        )
    return series
