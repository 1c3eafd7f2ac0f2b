"""Read GPU-utilisation traces into per-instance series for ``guardian backtest``.

Three layouts are recognised by their header, plain or gzipped (by content, not by name):

- the backtest format: ``instance_id,timestamp,gpu_index,gpu_util`` and optionally
  ``gpu_mem_used_mib``, ``instance_type``, ``provider``, ``region`` and ``notebook_idle_s`` (the
  agent's notebook signal, empty where absent; per instance, so where several GPU rows of one
  timestamp carry it the smallest counts); one row per GPU per sample, rows in any order,
  timestamps ISO-8601 (naive = UTC) or Unix seconds;
- the Philly per-minute long form ``machine_id,gpu,timestamp_local,gpu_util``: a machine's
  minutes come in separate excerpts, so each stretch without a gap over ``SEGMENT_GAP`` is one
  series (one instance's life);
- the Philly job windows: one row per job GPU with 14 minute values ``u-10 .. u+3`` and the
  ground-truth label ``job_running_whole_window``; each job on each machine is one series.

Philly's clock is US/Pacific local time; it is read as if it were UTC, which only shifts the
replay and changes no interval. A bad row is a ``TraceError`` naming the file and line.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import statistics
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

from guardian.errors import GuardianError
from guardian.model import GpuInstance, GpuSample, InstanceMetric, Point
from guardian.series import reduce_gpu_series

__all__ = [
    "BACKTEST_COLUMNS",
    "SEGMENT_GAP",
    "TraceDefaults",
    "TraceError",
    "TraceSeries",
    "read_trace",
    "series_from_points",
    "summary",
]

BACKTEST_COLUMNS = ("instance_id", "timestamp", "gpu_index", "gpu_util")
_PHILLY_MINUTES = ("machine_id", "gpu", "timestamp_local", "gpu_util")
_PHILLY_WINDOW_VALUES = tuple(f"u{offset:+d}" for offset in range(-10, 4))
_PHILLY_WINDOWS = ("job_id", "machine_id", "gpu", "window_start_local", "job_running_whole_window")
# Philly excerpts of one machine closer than this are one stretch of its life.
SEGMENT_GAP = timedelta(minutes=10)

# Timestamps a replay can add a year to, or take one from, without leaving the calendar.
_EARLIEST = datetime.min.replace(tzinfo=UTC) + timedelta(days=366)
_LATEST = datetime.max.replace(tzinfo=UTC) - timedelta(days=366)

Points = list[tuple[datetime, float]]
# Per GPU, timestamp → reading: a duplicated row cannot make a timestamp look complete.
Readings = dict[str, dict[datetime, float]]


class TraceError(GuardianError):
    """The trace file cannot be read or a row is malformed; the message names file and line."""


@dataclass(frozen=True)
class TraceDefaults:
    """What a trace does not say about its instances: the backtest's command-line defaults."""

    instance_type: str = ""
    provider: str = "aws"
    region: str = "us-east-1"


@dataclass(frozen=True)
class TraceSeries:
    """One instance's life as the trace saw it: samples reduced over its GPUs, oldest first."""

    instance: GpuInstance
    samples: tuple[GpuSample, ...]
    period_s: int
    # Ground truth where the trace has it: True = the job held the GPUs for the whole series
    # (any stop interrupts it), False = the job had ended, None = not known.
    job_running: bool | None = None
    # Per-instance series beside the GPUs' (the notebook signal), oldest first; absent = no entry.
    instance_series: Mapping[InstanceMetric, tuple[Point, ...]] = field(default_factory=dict)


@dataclass
class _GpuReadings:
    util: Readings
    mem: Readings

    def add(self, gpu: str, at: datetime, util: float, mem: float | None) -> None:
        # A duplicated reading keeps the higher value: doubt never makes a GPU look idler.
        values = self.util.setdefault(gpu, {})
        values[at] = max(util, values.get(at, util))
        if mem is not None:
            mems = self.mem.setdefault(gpu, {})
            mems[at] = max(mem, mems.get(at, mem))


def _open_text(path: Path) -> io.TextIOWrapper:
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc.strerror or exc}") from exc
    magic = raw.peek(2)[:2] if isinstance(raw, io.BufferedReader) else b""
    # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, not part of the first column.
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8-sig", newline="")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


class _Times:
    """Parse timestamps once each: a trace repeats every timestamp once per GPU."""

    def __init__(self, where: str) -> None:
        self._where = where
        self._cache: dict[str, datetime] = {}

    def parse(self, text: str, line: int) -> datetime:
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        value = text.strip()
        try:
            seconds = float(value)
        except ValueError:
            moment = self._iso(value, text, line)
        else:
            try:
                moment = datetime.fromtimestamp(seconds, UTC)
            except (OverflowError, OSError, ValueError):
                raise TraceError(
                    f"{self._where} line {line}: timestamp {text!r} is out of range"
                ) from None
        if not _EARLIEST <= moment <= _LATEST:
            # Replaying adds windows and lookbacks to every time: near the calendar's ends that
            # overflows. No GPU has reported from there.
            raise TraceError(f"{self._where} line {line}: timestamp {text!r} is out of range")
        self._cache[text] = moment
        return moment

    def _iso(self, value: str, text: str, line: int) -> datetime:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise TraceError(
                f"{self._where} line {line}: timestamp {text!r} is neither ISO-8601 nor "
                "Unix seconds"
            ) from None
        # A naive time is taken as UTC, as the tags' times are.
        try:
            return (moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment).astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+01:00 is before the calendar's first day
            raise TraceError(
                f"{self._where} line {line}: timestamp {text!r} is out of range"
            ) from None


def _number(text: str | None, column: str, where: str, line: int) -> float | None:
    """A reading, or None where the cell is blank (the GPU did not report)."""
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise TraceError(f"{where} line {line}: {column} {text!r} is not a number") from None
    if not math.isfinite(value):  # a blank says "no reading"; nan or inf is a broken export
        raise TraceError(
            f"{where} line {line}: {column} {text!r} is not a reading (leave the cell blank "
            "where the GPU did not report)"
        )
    if value < 0:
        raise TraceError(f"{where} line {line}: {column} {value:g} is negative")
    return value


def _fields(row: dict[str | None, str | None], header: int, where: str, line: int) -> None:
    """A row with fewer or more fields than the header is a broken line, not a blank reading."""
    count = sum(1 for key, value in row.items() if key is not None and value is not None)
    extra = row.get(None)
    if extra:
        count += len(extra)
    if count != header:
        raise TraceError(f"{where} line {line}: {count} field(s), the header has {header}")


def _gpu_index(text: str | None, where: str, line: int) -> str:
    value = (text or "").strip() or "0"
    if not value.isdigit():
        raise TraceError(f"{where} line {line}: gpu_index {value!r} is not a GPU number (0, 1, …)")
    return str(int(value))


def _same(first: float | None, again: float | None, what: str, where: str, line: int) -> None:
    if first is not None and again is not None and first != again:
        raise TraceError(
            f"{where} line {line}: {what} read twice with different values ({first:g}, then "
            f"{again:g})"
        )


def _check_util(value: float, where: str, line: int) -> None:
    if not 0.0 <= value <= 100.0:
        raise TraceError(f"{where} line {line}: gpu_util {value:g} is not a percentage 0-100")


def _period_s(samples: Sequence[GpuSample]) -> int:
    """The sampling period: the median step, so a few gaps do not distort it."""
    if len(samples) < 2:
        return 60
    steps = [(b.at - a.at).total_seconds() for a, b in pairwise(samples)]
    return max(1, round(statistics.median(steps)))


def series_from_points(
    instance: GpuInstance,
    util: Mapping[str, Mapping[datetime, float]],
    mem: Mapping[str, Mapping[datetime, float]] | None = None,
    job_running: bool | None = None,
    notebook_idle: Mapping[datetime, float] | None = None,
) -> TraceSeries:
    """Reduce per-GPU readings to per-timestamp samples (the shared rule of
    ``guardian.series``): max over GPUs, incomplete where a GPU of the instance is missing."""
    samples = reduce_gpu_series(
        {gpu: list(values.items()) for gpu, values in util.items()},
        {gpu: list(values.items()) for gpu, values in (mem or {}).items()},
        expected_gpus=instance.gpu_count,
    )
    extra = (
        {InstanceMetric.NOTEBOOK_IDLE_S: tuple(sorted(notebook_idle.items()))}
        if notebook_idle
        else {}
    )
    return TraceSeries(instance, samples, _period_s(samples), job_running, extra)


def _instance(instance_id: str, launch: datetime, gpus: int, shape: TraceDefaults) -> GpuInstance:
    return GpuInstance(
        provider=shape.provider,
        account="trace",
        region=shape.region,
        zone="",
        instance_id=instance_id,
        instance_type=shape.instance_type,
        launch_time=launch,  # the series starts with the instance's life
        gpu_count=gpus,
    )


def _read_backtest(
    rows: csv.DictReader[str], where: str, defaults: TraceDefaults, header: int
) -> list[TraceSeries]:
    times = _Times(where)
    points: dict[str, _GpuReadings] = defaultdict(lambda: _GpuReadings({}, {}))
    notebook: dict[str, dict[datetime, float]] = defaultdict(dict)
    shape: dict[str, TraceDefaults] = {}
    for line, row in _numbered(rows):
        _fields(row, header, where, line)  # type: ignore[arg-type]
        instance_id = (row.get("instance_id") or "").strip()
        if not instance_id:
            raise TraceError(f"{where} line {line}: instance_id is empty")
        at = times.parse(row.get("timestamp") or "", line)
        gpu = _gpu_index(row.get("gpu_index"), where, line)
        util = _number(row.get("gpu_util"), "gpu_util", where, line)
        mem = _number(row.get("gpu_mem_used_mib"), "gpu_mem_used_mib", where, line)
        if instance_id not in shape:
            shape[instance_id] = TraceDefaults(
                (row.get("instance_type") or "").strip() or defaults.instance_type,
                (row.get("provider") or "").strip() or defaults.provider,
                (row.get("region") or "").strip() or defaults.region,
            )
        gpu_points = points[instance_id]
        gpu_points.util.setdefault(gpu, {})  # a GPU that never reports still counts
        idle_s = _number(row.get("notebook_idle_s"), "notebook_idle_s", where, line)
        if idle_s is not None:
            if idle_s < 0:
                raise TraceError(f"{where} line {line}: notebook_idle_s {idle_s:g} is negative")
            known = notebook[instance_id]
            known[at] = min(idle_s, known.get(at, idle_s))  # doubt never makes a kernel idler
        if util is None:
            continue  # the GPU did not report: the timestamp is incomplete, not idle
        _check_util(util, where, line)
        # The same reading twice is harmless; two different ones mean a broken export.
        what = f"{instance_id} GPU {gpu} at {at.isoformat()}"
        _same(gpu_points.util[gpu].get(at), util, f"gpu_util of {what}", where, line)
        _same(gpu_points.mem.get(gpu, {}).get(at), mem, f"memory of {what}", where, line)
        gpu_points.add(gpu, at, util, mem)
    result = []
    for instance_id in sorted(points):
        gpu_points = points[instance_id]
        stamps = [at for readings in gpu_points.util.values() for at in readings]
        if not stamps:
            continue  # not one reading: nothing to replay
        instance = _instance(instance_id, min(stamps), len(gpu_points.util), shape[instance_id])
        result.append(
            series_from_points(
                instance,
                gpu_points.util,
                gpu_points.mem,
                notebook_idle=notebook.get(instance_id),
            )
        )
    return result


def _read_philly_minutes(
    rows: csv.DictReader[str], where: str, defaults: TraceDefaults, header: int
) -> list[TraceSeries]:
    times = _Times(where)
    by_machine: dict[str, list[tuple[datetime, str, float]]] = defaultdict(list)
    for line, row in _numbered(rows):
        _fields(row, header, where, line)  # type: ignore[arg-type]
        util = _number(row.get("gpu_util"), "gpu_util", where, line)
        if util is None:
            continue
        _check_util(util, where, line)
        at = times.parse(row.get("timestamp_local") or "", line)
        by_machine[row["machine_id"]].append((at, row["gpu"], util))
    result = []
    for machine in sorted(by_machine):
        readings = sorted(by_machine[machine])
        segment: list[tuple[datetime, str, float]] = []
        for reading in readings:
            if segment and reading[0] - segment[-1][0] > SEGMENT_GAP:
                result.append(_philly_segment(machine, segment, defaults))
                segment = []
            segment.append(reading)
        if segment:
            result.append(_philly_segment(machine, segment, defaults))
    return result


def _philly_segment(
    machine: str, readings: Sequence[tuple[datetime, str, float]], defaults: TraceDefaults
) -> TraceSeries:
    gpu_readings = _GpuReadings({}, {})
    for at, gpu, value in readings:
        gpu_readings.add(gpu, at, value, None)
    util = gpu_readings.util
    start = readings[0][0]
    instance = _instance(f"{machine}@{start:%Y-%m-%dT%H:%M}", start, len(util), defaults)
    return series_from_points(instance, util)


def _read_philly_windows(
    rows: csv.DictReader[str], where: str, defaults: TraceDefaults, header: int
) -> list[TraceSeries]:
    times = _Times(where)
    groups: dict[tuple[str, str], tuple[datetime, bool, _GpuReadings]] = {}
    for line, row in _numbered(rows):
        _fields(row, header, where, line)  # type: ignore[arg-type]
        key = (row["job_id"], row["machine_id"])
        start = times.parse(row.get("window_start_local") or "", line)
        running = (row.get("job_running_whole_window") or "").strip().lower() == "true"
        readings = groups.setdefault(key, (start, running, _GpuReadings({}, {})))[2]
        readings.util.setdefault(row["gpu"], {})
        for minute, column in enumerate(_PHILLY_WINDOW_VALUES):
            value = _number(row.get(column), column, where, line)
            if value is not None:
                _check_util(value, where, line)
                readings.add(row["gpu"], start + timedelta(minutes=minute), value, None)
    result = []
    for (job_id, machine), (start, running, readings) in sorted(groups.items()):
        util = readings.util
        if not any(util.values()):
            continue  # a window without one reading: nothing to replay
        instance = _instance(f"{job_id}/{machine}", start, len(util), defaults)
        result.append(series_from_points(instance, util, job_running=running))
    return result


def _numbered(reader: csv.DictReader[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Each row with its line in the file as an editor counts it: the csv reader's own count,
    which a quoted cell spanning lines advances (a count of records would fall behind)."""
    for row in reader:
        yield reader.line_num, row


def _missing(header: Sequence[str], needed: Sequence[str]) -> list[str]:
    return [column for column in needed if column not in header]


def read_trace(path: Path, defaults: TraceDefaults | None = None) -> list[TraceSeries]:
    """Every instance's series in the trace at ``path``, sorted by instance id."""
    defaults = defaults or TraceDefaults()
    where = str(path)
    with _open_text(path) as handle:
        reader = csv.DictReader(handle)
        try:
            header = [name.strip() for name in (reader.fieldnames or [])]
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise TraceError(f"cannot read trace {path}: {exc}") from exc
        reader.fieldnames = header
        readers = {
            "backtest": (BACKTEST_COLUMNS, _read_backtest),
            "philly-minutes": (_PHILLY_MINUTES, _read_philly_minutes),
            "philly-windows": (_PHILLY_WINDOWS + _PHILLY_WINDOW_VALUES, _read_philly_windows),
        }
        for needed, read in readers.values():
            if not _missing(header, needed):
                try:
                    series = read(reader, where, defaults, len(header))
                except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
                    raise TraceError(f"cannot read trace {path}: {exc}") from exc
                break
        else:
            missing = ", ".join(_missing(header, BACKTEST_COLUMNS))
            raise TraceError(
                f"{where}: not a GPU trace: missing column(s) {missing} (expected "
                f"{','.join(BACKTEST_COLUMNS)}"
                "[,gpu_mem_used_mib,instance_type,provider,region,notebook_idle_s])"
            )
    if not series:
        raise TraceError(f"{where}: the trace has no GPU readings")
    return series


def summary(series: Sequence[TraceSeries]) -> Mapping[str, float]:
    """Counts for a progress line: instances, samples, hours spanned."""
    if not series:
        return {"instances": 0, "samples": 0, "hours": 0.0}
    first = min(s.samples[0].at for s in series)
    last = max(s.samples[-1].at for s in series)
    return {
        "instances": len(series),
        "samples": sum(len(s.samples) for s in series),
        "hours": round((last - first).total_seconds() / 3600, 1),
    }
