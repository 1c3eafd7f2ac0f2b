"""backtest: the replay clock, the ladder, the scores, the synthetic fleet, cloud history, CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from guardian.backtest.cloud_traces import history_from_providers
from guardian.backtest.replay import backtest_json, replay
from guardian.backtest.synthetic import training_rows, training_series, write_trace
from guardian.backtest.trace import TraceSeries
from guardian.cli import app
from guardian.config import Config, apply_overrides, parse_config
from guardian.errors import GuardianError
from guardian.model import GpuInstance, GpuSample, PriceAssessment
from guardian.providers import UnitError
from tests.clock import MONDAY
from tests.fake_provider import FakeProvider, make_instance

T0 = MONDAY + timedelta(hours=8)  # a Monday morning
HELD, RELEASED = 20000.0, 0.0
SCORE_KEYS = {
    "idle_tail_hours",
    "reclaimed_hours",
    "interrupted",
    "saved_usd",
    "reclaimed_fraction",
}


def series(
    instance_id: str, *phases: tuple[int, float, float], job_running: bool | None = None
) -> TraceSeries:
    """Phases of (minutes, util %, memory MiB) from T0, one sample a minute."""
    samples = []
    minute = 0
    for minutes, util, mem in phases:
        for _ in range(minutes):
            samples.append(GpuSample(T0 + timedelta(minutes=minute), util, mem))
            minute += 1
    instance = make_instance(instance_id, launch_time=T0, instance_type="g5.xlarge")
    return TraceSeries(instance, tuple(samples), 60, job_running)


def config(*overrides: str) -> Config:
    return parse_config(apply_overrides({}, overrides))


def price(instance: GpuInstance) -> PriceAssessment:
    return PriceAssessment(2.0, "test", None, None, "no CPU equivalent")


def test_a_finished_job_is_warned_then_stopped_and_scored() -> None:
    # Busy 120 min, then memory released. At the 12:10 poll the released run is 11 min
    # (>= 10): warn; 15 min grace: stop at 12:25. The series ends at 13:40.
    result = replay([series("done", (120, 90.0, HELD), (100, 0.0, RELEASED))], config())
    (outcome,) = result.outcomes
    assert outcome.warnings == 1
    assert outcome.stopped_at == T0 + timedelta(minutes=145)
    assert "the job has ended" in outcome.stop_reasons[0]
    assert outcome.idle_tail_hours == pytest.approx(100 / 60)
    assert outcome.reclaimed_hours == pytest.approx(75 / 60)
    assert outcome.reclaimed_fraction == pytest.approx(0.75)
    assert outcome.interrupted == 0
    assert outcome.saved_usd is None  # no price given
    assert outcome.polls == 30  # 08:00 .. 10:25 every 5 minutes


def test_a_stop_followed_by_work_is_an_interruption() -> None:
    # A 100-minute pause holding memory: warned at 61 idle minutes, stopped 15 later, then the
    # work came back: an interruption that reclaimed nothing.
    result = replay(
        [series("paused", (120, 90.0, HELD), (100, 1.0, HELD), (10, 90.0, HELD))],
        config(),
        price_for=price,
    )
    (outcome,) = result.outcomes
    assert outcome.stopped_at == T0 + timedelta(minutes=195)
    assert outcome.interrupted == 1
    assert outcome.reclaimed_hours == 0
    assert outcome.saved_usd == 0
    assert outcome.idle_tail_hours == 0  # it ended working


def test_work_during_the_grace_withdraws_the_warning() -> None:
    result = replay(
        [series("back", (120, 90.0, HELD), (70, 1.0, HELD), (30, 90.0, HELD))], config()
    )
    (outcome,) = result.outcomes
    assert (outcome.warnings, outcome.warnings_withdrawn) == (1, 1)
    assert outcome.stopped_at is None
    assert outcome.interrupted == 0


def test_never_worked_is_stopped_after_the_window_and_priced() -> None:
    result = replay([series("unused", (200, 0.0, HELD))], config(), price_for=price)
    (outcome,) = result.outcomes
    assert outcome.never_worked
    assert outcome.stopped_at == T0 + timedelta(minutes=75)  # 61 idle min at 60, + 15 grace
    assert outcome.idle_tail_hours == pytest.approx(200 / 60)
    assert outcome.reclaimed_hours == pytest.approx(125 / 60)
    assert outcome.saved_usd == pytest.approx(125 / 60 * 2.0)
    totals = result.totals
    assert (totals.never_worked, totals.never_worked_stopped) == (1, 1)


def test_ground_truth_running_makes_any_stop_an_interruption() -> None:
    # The trace says the job still held the GPUs: the pause is not an idle tail, whatever the
    # samples after the stop show (here: none, it is the end of the excerpt).
    running = series("job/m1", (30, 90.0, HELD), (40, 0.0, HELD), job_running=True)
    ended = series("job/m2", (30, 90.0, HELD), (40, 0.0, HELD), job_running=False)
    result = replay([running, ended], config("idle.window=10m", "idle.grace=0s"))
    by_id = {o.instance_id: o for o in result.outcomes}
    assert by_id["job/m1"].stopped_at is not None
    assert by_id["job/m1"].interrupted == 1
    assert by_id["job/m1"].idle_tail_hours == 0
    assert by_id["job/m2"].interrupted == 0
    assert by_id["job/m2"].reclaimed_hours > 0


def test_one_poll_grid_for_the_whole_fleet() -> None:
    # Like one daemon, the replay polls every instance at the same moments, from the earliest
    # sample in the trace: an instance that starts 2 minutes later is polled at :05, :10 ...
    early = series("early", (200, 0.0, HELD))
    late_samples = tuple(
        GpuSample(s.at + timedelta(minutes=2), s.gpu_util_pct, s.mem_used_mib)
        for s in early.samples
    )
    late = TraceSeries(
        make_instance("late", launch_time=T0 + timedelta(minutes=2)), late_samples, 60
    )
    by_id = {o.instance_id: o for o in replay([late, early], config()).outcomes}
    assert by_id["early"].stopped_at == T0 + timedelta(minutes=75)
    assert by_id["late"].stopped_at == T0 + timedelta(minutes=80)  # 63 idle min at :65, + 15
    assert by_id["late"].polls == 16  # :05 .. :80


def test_totals_and_json_keys() -> None:
    result = replay(
        [
            series("a", (120, 90.0, HELD), (100, 0.0, RELEASED)),
            series("b", (120, 90.0, HELD), (100, 1.0, HELD), (10, 90.0, HELD)),
        ],
        config(),
        price_for=price,
    )
    document = backtest_json(result)
    assert set(document["totals"]) >= SCORE_KEYS
    for row in document["instances"]:
        assert SCORE_KEYS | {"instance_id"} <= set(row)
    totals = document["totals"]
    assert totals["interrupted"] == 1
    assert totals["stops"] == 2
    assert totals["reclaimed_hours"] == pytest.approx(1.25)
    assert totals["idle_tail_hours"] == pytest.approx(1.667, abs=1e-3)
    assert totals["reclaimed_fraction"] == pytest.approx(0.75)
    assert totals["saved_usd"] == 2.5


def test_synthetic_training_is_deterministic() -> None:
    first = list(training_rows(seed=3, instances=2))
    assert first == list(training_rows(seed=3, instances=2))
    assert first != list(training_rows(seed=4, instances=2))


def test_training_histories_meet_the_goals_at_the_default_config() -> None:
    fleet = training_series(seed=7, instances=16)
    cfg = config()
    result = replay(fleet, cfg)
    assert result.totals.interrupted == 0
    delay = cfg.idle.window_released + cfg.idle.grace + cfg.poll_interval
    beyond = sum(
        max(0.0, o.idle_tail_hours - delay.total_seconds() / 3600) for o in result.outcomes
    )
    assert beyond > 20  # hours of forgotten machines to win back
    assert result.totals.reclaimed_hours >= 0.9 * beyond
    # The same fleet under a window shorter than its stalls: the goal is not met by accident.
    tight = replay(fleet, config("idle.window=15m", "idle.history_margin=0"))
    assert tight.totals.interrupted > 0


def test_cloud_history_is_pulled_day_by_day_through_the_provider() -> None:
    end = MONDAY + timedelta(days=4, hours=12)  # a Friday noon
    start = end - timedelta(days=3)
    working = make_instance("i-work", launch_time=start - timedelta(days=1))
    quiet = make_instance("i-quiet", launch_time=start - timedelta(days=1))
    protected = make_instance("i-keep", tags={"guardian:protect": "true"}, launch_time=start)
    blind = make_instance("i-blind")
    minutes = int((end - start).total_seconds() // 60)

    def samples(util: float, first_minute: int = 0) -> tuple[GpuSample, ...]:
        return tuple(
            GpuSample(start + timedelta(minutes=m), util if m < 600 else 0.0, HELD)
            for m in range(first_minute, minutes + 1)
        )

    provider = FakeProvider(
        [working, quiet, protected, blind],
        samples={
            working.key: samples(90.0),
            quiet.key: samples(90.0, first_minute=2 * 24 * 60),  # only the last day
            protected.key: samples(90.0),
        },
    )
    history = history_from_providers([provider], start, end)
    assert provider.utilisation_calls == 3  # one per day
    assert [s.instance.instance_id for s in history.series] == ["i-keep", "i-quiet", "i-work"]
    assert [key for key, _ in history.skipped] == [blind.key]
    assert [key for key, _ in history.partial] == [quiet.key]
    work = next(s for s in history.series if s.instance.instance_id == "i-work")
    assert len(work.samples) == minutes + 1  # chunk edges not doubled
    result = replay(history.series, config())
    by_id = {o.instance_id: o for o in result.outcomes}
    assert by_id["i-work"].stopped_at is not None
    assert by_id["i-keep"].stopped_at is None  # protected: the tag is honoured in replay
    assert by_id["i-keep"].warnings == 0


# ---- the command line ----------------------------------------------------------------------


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["backtest", *args], catch_exceptions=True)


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.csv.gz"
    write_trace(training_rows(seed=5, instances=4), path)
    return path


@pytest.fixture(autouse=True)
def _no_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GUARDIAN_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)


def test_cli_json_document(trace_file: Path, tmp_path: Path) -> None:
    result = invoke(
        "--trace",
        str(trace_file),
        "--instance-type",
        "g5.12xlarge",
        "--format",
        "json",
        "--set",
        "idle.window=30m",
        "--set",
        f"state_dir={tmp_path}",
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["config"]["idle"]["window"] == "30m"
    assert document["busy_above"] == 10.0
    assert set(document["totals"]) >= SCORE_KEYS
    assert len(document["instances"]) == 4
    for row in document["instances"]:
        assert set(row) >= SCORE_KEYS
        assert row["instance_type"] == "g5.12xlarge"
        assert row["hourly_price"] > 0  # priced from the embedded catalog
    assert document["totals"]["saved_usd"] > 0
    assert document["totals"]["interrupted"] == 0


def test_cli_table(trace_file: Path) -> None:
    result = invoke("--trace", str(trace_file), "--busy-above", "20", "--top", "2")
    assert result.exit_code == 0, result.output
    assert "train-0" in result.stdout
    assert "… 2 more instance(s)" in result.stdout
    assert "4 instances:" in result.stdout
    assert "interrupted" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "choose one source"),
        (("--synthetic", "--from-cloudwatch"), "choose one source"),
        (("--synthetic", "--days", "0"), "--days must be between"),
        (("--synthetic", "--busy-above", "0"), "--busy-above must be"),
        (("--synthetic", "--set", "idle.window=soon"), "idle.window: not a duration"),
        (("--trace", "missing.csv"), "cannot read trace"),
    ],
)
def test_cli_mistakes_are_one_line_errors(args: tuple[str, ...], message: str) -> None:
    result = invoke(*args)
    assert isinstance(result.exception, GuardianError), result.output
    assert message in str(result.exception)
    assert "\n" not in str(result.exception)


@pytest.mark.parametrize(
    ("flag", "cloud", "source"),
    [("--from-cloudwatch", "aws", "CloudWatch"), ("--from-gcp", "gcp", "Cloud Monitoring")],
)
def test_cli_from_the_cloud_replays_the_provider_history(
    monkeypatch: pytest.MonkeyPatch, flag: str, cloud: str, source: str
) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    instance = make_instance("i-forgotten", launch_time=now - timedelta(days=3))
    samples = tuple(
        GpuSample(now - timedelta(minutes=m), 0.0 if m < 300 else 95.0, HELD)
        for m in reversed(range(2 * 24 * 60))
    )
    provider = FakeProvider([instance], samples={instance.key: samples})
    built: list[Config] = []
    series: list[bool] = []

    def build(cfg: Config, *, instance_series: bool = True) -> list[FakeProvider]:
        built.append(cfg)
        series.append(instance_series)
        return [provider]

    monkeypatch.setattr("guardian.providers.factory.build_providers", build)
    result = invoke(flag, "--days", "2", "--format", "json")
    assert result.exit_code == 0, result.output
    assert built[0].aws.enabled is (cloud == "aws")  # only the cloud asked for
    assert built[0].gcp.enabled is (cloud == "gcp")
    assert series == [False]  # a history needs the GPUs' series only, no host series
    assert provider.utilisation_calls == 2
    document = json.loads(result.stdout)
    assert document["source"] == f"{source}, last 2 day(s)"
    (row,) = document["instances"]
    assert row["instance_id"] == "i-forgotten"
    assert row["stopped_at"] is not None
    assert row["reclaimed_hours"] > 3


def test_cli_from_the_cloud_without_credentials_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # It used to end with "no GPU history to replay": the cause is the credentials (issue 12).
    denied = UnitError("aws", "default", "*", "sts:GetCallerIdentity", "no AWS credentials found")
    provider = FakeProvider([], errors=[denied])
    monkeypatch.setattr("guardian.providers.factory.build_providers", lambda cfg, **_: [provider])
    result = invoke("--from-cloudwatch", "--days", "2")
    assert isinstance(result.exception, GuardianError), result.output
    assert str(result.exception) == (
        "no GPU history could be read from aws: aws *: no AWS credentials found"
    )
