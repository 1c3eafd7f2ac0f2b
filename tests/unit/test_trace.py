"""trace.read_trace: the backtest CSV and the two Philly layouts, plain or gzipped, and errors."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from guardian.backtest.trace import SEGMENT_GAP, TraceDefaults, TraceError, read_trace
from tests.clock import NOW

T0 = NOW  # 12:00 UTC: the rows below write the time of day out


def write(tmp_path: Path, text: str, name: str = "trace.csv", *, gz: bool = False) -> Path:
    path = tmp_path / name
    data = text.strip().encode() + b"\n"
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_backtest_format_rows_in_any_order_reduce_over_gpus(tmp_path: Path) -> None:
    unix = int(T0.timestamp())
    day = f"{T0:%Y-%m-%d}"
    path = write(
        tmp_path,
        f"""
instance_id,timestamp,gpu_index,gpu_util,gpu_mem_used_mib,instance_type,region
i-b,{unix + 120},1,0,100,,
i-a,{day}T12:01:00Z,0,7.5,300,p4d.24xlarge,us-west-2
i-a,{day}T12:00:00Z,1,80,30000,,
i-b,{unix},0,0,100,,
i-a,{day}T12:00:00Z,0,20,29000,,
i-a,{day}T12:01:00+00:00,1,2.5,,,
i-b,{unix + 120},0,1,50,,
i-b,{unix},1,3,200,,
i-a,{day} 12:02:00,0,1,10,,
""",
    )
    series = read_trace(path, TraceDefaults(instance_type="g5.xlarge"))
    assert [s.instance.instance_id for s in series] == ["i-a", "i-b"]
    a, b = series
    assert a.instance.instance_type == "p4d.24xlarge"
    assert a.instance.region == "us-west-2"
    assert a.instance.gpu_count == 2
    assert a.instance.launch_time == T0
    assert [s.at for s in a.samples] == [T0 + timedelta(minutes=m) for m in range(3)]
    assert [s.gpu_util_pct for s in a.samples] == [80, 7.5, 1]
    assert a.samples[0].mem_used_mib == 30000
    assert a.samples[1].mem_used_mib is None  # GPU 1 did not report memory at 12:01
    assert [s.complete for s in a.samples] == [True, True, False]  # GPU 1 missing at 12:02
    assert a.period_s == 60
    assert b.instance.instance_type == "g5.xlarge"  # the default fills the gap
    assert b.instance.region == "us-east-1"
    assert [s.gpu_util_pct for s in b.samples] == [3, 1]
    assert b.samples[1].mem_used_mib == 100
    assert b.period_s == 120


def test_gzip_is_recognised_by_content_not_name(tmp_path: Path) -> None:
    text = "instance_id,timestamp,gpu_index,gpu_util\ni-1,0,0,5\ni-1,60,0,6\n"
    for name, gz in (("a.csv", True), ("b.csv.gz", True), ("c.csv", False)):
        series = read_trace(write(tmp_path, text, name, gz=gz))
        assert [s.gpu_util_pct for s in series[0].samples] == [5, 6]


def test_a_blank_reading_leaves_the_timestamp_incomplete(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
instance_id,timestamp,gpu_index,gpu_util
i-1,0,0,1
i-1,0,1,
i-1,60,0,1
i-1,60,1,2
""",
    )
    samples = read_trace(path)[0].samples
    assert [s.complete for s in samples] == [False, True]


def test_a_duplicated_row_cannot_make_a_timestamp_complete(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
instance_id,timestamp,gpu_index,gpu_util
i-1,0,0,4
i-1,0,0,4
i-1,0,1,1
i-1,60,0,1
i-1,60,0,1
""",
    )
    samples = read_trace(path)[0].samples
    assert samples[0].gpu_util_pct == 4  # the same reading twice is harmless
    assert [s.complete for s in samples] == [True, False]


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    # Excel's "CSV UTF-8" starts with one; it used to read as a missing instance_id column.
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfinstance_id,timestamp,gpu_index,gpu_util\r\ni-1,0,0,5\r\n")
    assert read_trace(path)[0].instance.instance_id == "i-1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("host,time,util\nx,0,1", r"missing column\(s\) instance_id, timestamp, gpu_index"),
        ("", "missing column"),
        ("instance_id,timestamp,gpu_index,gpu_util\ni-1,0,0,busy", "line 2: gpu_util 'busy'"),
        ("instance_id,timestamp,gpu_index,gpu_util\ni-1,0,0,1\ni-1,soon,0,1", "line 3: timest"),
        ("instance_id,timestamp,gpu_index,gpu_util\ni-1,0,0,140", "line 2: gpu_util 140 is not"),
        ("instance_id,timestamp,gpu_index,gpu_util\n,0,0,1", "line 2: instance_id is empty"),
        ("instance_id,timestamp,gpu_index,gpu_util\ni-1,0,0,", "no GPU readings"),
        (
            "instance_id,timestamp,gpu_index,gpu_util\ni-1,1e20,0,3",
            "line 2: timestamp .1e20. is out of range",
        ),
        # Accepted silently before issue 12:
        ("instance_id,timestamp,gpu_index,gpu_util\ni-1,0,x,3", "line 2: gpu_index 'x' is not"),
        ("instance_id,timestamp,gpu_index,gpu_util\ni-1,0", "line 2: 2 field.s., the header has 4"),
        ("instance_id,timestamp,gpu_index,gpu_util\ni-1,0,0,3,9", "line 2: 5 field.s., the head"),
        (
            "instance_id,timestamp,gpu_index,gpu_util\ni-1,0,0,nan",
            "line 2: gpu_util 'nan' is not a",
        ),
        (
            "instance_id,timestamp,gpu_index,gpu_util,gpu_mem_used_mib\ni-1,0,0,3,-5",
            "line 2: gpu_mem_used_mib -5 is negative",
        ),
        (
            "instance_id,timestamp,gpu_index,gpu_util\ni-1,0,0,3\ni-1,0,0,80",
            "line 3: gpu_util of i-1 GPU 0 at 1970-01-01T00:00:00.00:00 read twice with different",
        ),
        (
            "machine_id,gpu,timestamp_local,gpu_util\nm1,gpu0,2017-10-01 10:00:00,inf",
            "line 2: gpu_util 'inf' is not a reading",
        ),
    ],
)
def test_malformed_traces_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=message) as error:
        read_trace(path)
    assert "\n" not in str(error.value)
    assert str(path) in str(error.value)


def test_a_missing_or_corrupt_file_is_a_trace_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read trace"):
        read_trace(tmp_path / "nope.csv")
    corrupt = tmp_path / "corrupt.csv.gz"
    corrupt.write_bytes(gzip.compress(b"instance_id,timestamp,gpu_index,gpu_util\n" * 50)[:40])
    with pytest.raises(TraceError, match="cannot read trace"):
        read_trace(corrupt)


def test_philly_minutes_split_into_stretches_with_their_own_gpus(tmp_path: Path) -> None:
    rows = ["machine_id,gpu,timestamp_local,gpu_util"]
    start = datetime(2017, 10, 12, 19, 0, tzinfo=UTC)  # written without a zone, as Philly's
    for minute in range(14):  # one excerpt on GPUs 0 and 1
        for gpu in ("gpu0", "gpu1"):
            at = start + timedelta(minutes=minute)
            rows.append(f"m0,{gpu},{at:%Y-%m-%d %H:%M:%S},{50 if minute < 5 else 0}")
    later = start + timedelta(minutes=13) + SEGMENT_GAP + timedelta(minutes=1)
    for minute in range(3):  # a later excerpt on GPU 3 only, with one minute missing
        if minute != 1:
            at = later + timedelta(minutes=minute)
            rows.append(f"m0,gpu3,{at:%Y-%m-%d %H:%M:%S},1")
    series = read_trace(write(tmp_path, "\n".join(rows)))
    assert [s.instance.instance_id for s in series] == [
        "m0@2017-10-12T19:00",
        "m0@2017-10-12T19:24",
    ]
    first, second = series
    assert first.instance.gpu_count == 2
    assert len(first.samples) == 14
    assert first.samples[0].at == start  # the local clock is read as UTC
    assert second.instance.gpu_count == 1
    assert len(second.samples) == 2
    assert first.job_running is None


def test_philly_windows_group_job_gpus_and_keep_the_label(tmp_path: Path) -> None:
    values = ",".join(f"u{offset:+d}" for offset in range(-10, 4))
    header = (
        "job_id,status,runtime_min,job_start_utc,machine_id,gpu,window_start_local,"
        f"window_start_min_after_job_start,{values},job_running_whole_window,"
        "min_since_job_end_at_window_start"
    )
    busy = ",".join(["95"] * 14)
    pause = ",".join(["90"] * 4 + ["0"] * 10)
    blank = ",".join([""] * 14)
    job1 = "job1,Pass,500,2017-10-08 10:11:39,m1,{gpu},2017-10-08 10:01:00,410"
    job2 = "job2,Failed,100,2017-10-25 21:35:17,m2,gpu0,2017-10-25 21:25:00,410"
    job3 = "job3,Failed,100,2017-10-25 21:35:17,m3,gpu0,2017-10-25 21:25:00,410"
    text = "\n".join(
        [
            header,
            f"{job1.format(gpu='gpu0')},{busy},True,0.0",
            f"{job1.format(gpu='gpu1')},{pause},True,0.0",
            f"{job2},{pause},False,296",
            f"{job3},{blank},False,2",
        ]
    )
    series = read_trace(write(tmp_path, text))
    assert [s.instance.instance_id for s in series] == ["job1/m1", "job2/m2"]  # job3: no data
    job1, job2 = series
    assert job1.job_running is True
    assert job2.job_running is False
    assert job1.instance.gpu_count == 2
    assert len(job1.samples) == 14
    assert job1.samples[-1].at - job1.samples[0].at == timedelta(minutes=13)
    assert [s.gpu_util_pct for s in job1.samples] == [95.0] * 14  # max over the job's GPUs
    assert [s.gpu_util_pct for s in job2.samples][3:5] == [90.0, 0.0]
