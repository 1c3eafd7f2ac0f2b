"""Traces for ``guardian backtest`` fuzzed (hypothesis): whatever a trace file holds, reading and
replaying it either works or fails with one ``TraceError`` line that names the file (and the
line of a bad row), never another exception. A handful go through the real command line.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from guardian.backtest.replay import replay
from guardian.backtest.trace import TraceError, read_trace
from guardian.config import apply_overrides, parse_config
from tests.clock import NOW

FUZZ = settings(
    max_examples=60,
    derandomize=True,  # the same examples on every run: CI reproduces what a developer saw
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CONFIG = parse_config(apply_overrides({}, ["poll_interval=1m", "cost.lookback=1h"]))
EPOCH = int(NOW.timestamp())  # a valid row's time, in Unix seconds

BACKTEST_HEADER = "instance_id,timestamp,gpu_index,gpu_util,gpu_mem_used_mib,notebook_idle_s"
PHILLY_MINUTES_HEADER = "machine_id,gpu,timestamp_local,gpu_util"
PHILLY_WINDOWS_HEADER = "job_id,machine_id,gpu,window_start_local,job_running_whole_window," + (
    ",".join(f"u{offset:+d}" for offset in range(-10, 4))
)

# What a broken export puts in a cell.
HOSTILE_CELLS = [
    "",
    " ",
    "nan",
    "inf",
    "-inf",
    "-1",
    "1e308",
    "1e999",
    "101",
    "abc",
    "0x10",
    "1_000",
    "\x00",
    '"quoted, with comma"',
    '"two\nlines"',
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59",
    "9999-12-31T23:59:59-01:00",
    "1e20",
    "-1e20",
    "253402300800",
    "2024-13-45T99:99",
    "☃",
    "i-0abc",
    "true",
]
cells = st.one_of(st.sampled_from(HOSTILE_CELLS), st.text(max_size=8))
good_rows = st.builds(
    lambda n, gpu, util: f"i-{n},{EPOCH + 60 * n},{gpu},{util},100,",
    st.integers(0, 30),
    st.integers(0, 3),
    st.integers(0, 100),
)


def _row(values: list[str]) -> str:
    return ",".join(values)


rows = st.one_of(
    good_rows,
    st.lists(cells, min_size=1, max_size=8).map(_row),
)
headers = st.sampled_from([BACKTEST_HEADER, PHILLY_MINUTES_HEADER, PHILLY_WINDOWS_HEADER])


def _write(tmp_path: Path, content: bytes, name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def _replay(path: Path) -> TraceError | None:
    """What ``guardian backtest --trace`` does: read, then replay through the real policy."""
    try:
        replay(read_trace(path), CONFIG)
    except TraceError as exc:
        return exc
    return None


def _assert_one_line(error: TraceError, path: Path) -> None:
    message = str(error)
    assert "\n" not in message, message
    assert "\r" not in message, message
    assert str(path) in message, message


@FUZZ
@given(header=headers, body=st.lists(rows, max_size=8))
@example(header=BACKTEST_HEADER, body=["i-1,9999-12-31T23:59:59,0,0,,"])
@example(header=BACKTEST_HEADER, body=["i-1,0001-01-01T00:00:00+01:00,0,0,,"])
@example(header=PHILLY_WINDOWS_HEADER, body=["j,m,0,9999-12-31T23:59:00,true" + ",0" * 14])
@example(header=PHILLY_MINUTES_HEADER, body=["m,0,253402300799,5"])
@example(header=BACKTEST_HEADER, body=[f"i-1,{EPOCH},0,5,,", f'i-1,"{EPOCH + 60}",0,"\x00",,'])
def test_any_trace_replays_or_is_one_line_naming_the_file(
    tmp_path: Path, header: str, body: list[str]
) -> None:
    path = _write(tmp_path, "\n".join([header, *body, ""]).encode("utf-8", "surrogatepass"))
    error = _replay(path)
    if error is not None:
        _assert_one_line(error, path)


@FUZZ
@given(
    before=st.integers(0, 4),
    multiline=st.booleans(),
    bad=st.sampled_from(["nan", "-1", "abc", "1e999", "101", "\x00"]),
)
def test_a_bad_row_is_named_by_its_line_in_the_file(
    tmp_path: Path, before: int, multiline: bool, bad: str
) -> None:
    """The line is the file's, as an editor counts it, also after a quoted cell that spans
    lines (csv counts records, not lines)."""
    lines = [BACKTEST_HEADER, *(f"i-{n},{EPOCH},0,5,," for n in range(before))]
    if multiline:
        lines += [f'"i-\nsplit",{EPOCH},0,5,,']
    lines.append(f"i-bad,{EPOCH},0,{bad},,")
    path = _write(tmp_path, "\n".join([*lines, ""]).encode())
    error = _replay(path)
    assert error is not None
    _assert_one_line(error, path)
    bad_line = "\n".join(lines).count("\n") + 1
    assert re.search(rf"\bline {bad_line}\b", str(error)), (bad_line, str(error))


@FUZZ
@given(junk=st.binary(max_size=200), gzipped=st.booleans(), cut=st.integers(0, 64))
@example(junk=b"\x1f\x8b\x08\x00garbage", gzipped=False, cut=0)
@example(junk=(BACKTEST_HEADER + f"\ni-1,{EPOCH},0,5,,\n").encode(), gzipped=True, cut=20)
@example(junk=b"\xff\xfe" + BACKTEST_HEADER.encode("utf-16-le"), gzipped=False, cut=0)
@example(
    junk=(BACKTEST_HEADER + f"\ni-1,{EPOCH},0,5,,\xff\n").encode("latin-1"), gzipped=False, cut=0
)
def test_binary_junk_and_broken_gzip_are_one_line(
    tmp_path: Path, junk: bytes, gzipped: bool, cut: int
) -> None:
    content = gzip.compress(junk) if gzipped else junk
    if cut:
        content = content[: max(1, len(content) - cut)]  # a download cut short
    path = _write(tmp_path, content)
    error = _replay(path)
    if error is not None:
        _assert_one_line(error, path)


def test_an_empty_file_a_directory_and_a_missing_file(tmp_path: Path) -> None:
    for path in (_write(tmp_path, b"", "empty.csv"), tmp_path, tmp_path / "absent.csv"):
        error = _replay(path)
        assert error is not None, path
        _assert_one_line(error, path)


# -- the real command line: exit 2 and one line on stderr -------------------------------------

CLI_CASES: dict[str, bytes] = {
    "not_a_number": (
        BACKTEST_HEADER + f"\ni-1,{EPOCH},0,5,,\ni-1,{EPOCH + 60},0,lots,,\n"
    ).encode(),
    "far_future": (BACKTEST_HEADER + "\ni-1,9999-12-31T23:59:59,0,0,,\n").encode(),
    "binary": b"\x89PNG\r\n\x1a\n\x00\xff",
    "truncated_gzip": gzip.compress((BACKTEST_HEADER + f"\ni-1,{EPOCH},0,5,,\n").encode())[:-12],
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_backtest_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    path = _write(tmp_path, CLI_CASES[case])
    config = _write(tmp_path, f"state_dir: {tmp_path / 'state'}\n".encode(), "guardian.yaml")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "guardian",
            "backtest",
            "--trace",
            str(path),
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GUARDIAN_CONFIG": ""},
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("guardian: error: "), lines[0]
    assert str(path) in lines[0]
