"""policy.decide: every verdict of DESIGN.md, both idle windows, reasons, dollars and actions."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import timedelta

import pytest

from guardian.config import Config, Mode, apply_overrides, parse_config
from guardian.model import (
    CpuEquivalent,
    GpuSample,
    GpuUtilisation,
    PriceAssessment,
    Verdict,
)
from guardian.policy import format_keep_until
from guardian.policy.rules import decide, trailing_idle_run
from tests.fake_provider import NOW, flat_samples, make_instance

PRICE = PriceAssessment(1.0, "catalog", CpuEquivalent("m7i.xlarge", 0.2), 5.0)
NO_PRICE = PriceAssessment(None, None, None, None, "no price for g9.huge in the catalog")
INSTANCE = make_instance()


def config(*overrides: str) -> Config:
    return parse_config(apply_overrides({}, overrides))


def util(samples: tuple[GpuSample, ...], period_s: int = 60) -> GpuUtilisation:
    return GpuUtilisation(samples, period_s, 1)


def busy_then_idle(
    idle_minutes: int, *, mem: float | None = 20000.0, busy_minutes: int = 600, busy: float = 90.0
) -> tuple[GpuSample, ...]:
    """``busy_minutes`` at ``busy`` % then ``idle_minutes`` at 1 %, ending at NOW."""
    idle = flat_samples(1.0, idle_minutes, mem_mib=mem) if idle_minutes else ()
    busy_end = NOW - timedelta(minutes=idle_minutes)
    return flat_samples(busy, busy_minutes, end=busy_end) + idle


def test_idle_after_the_held_window() -> None:
    decision = decide(INSTANCE, util(busy_then_idle(65)), PRICE, config("mode=enforce"), NOW)
    assert decision.verdict is Verdict.IDLE
    assert decision.action == "stop"
    assert decision.idle_minutes == 65
    assert decision.idle_window_minutes == 60
    assert decision.wasted_usd == round(65 / 60 * 1.0, 2)
    assert "every GPU under 5% for 65 min (wait 60 min)" in decision.reasons[0]


def test_not_idle_one_minute_short_of_the_window() -> None:
    decision = decide(INSTANCE, util(busy_then_idle(59)), PRICE, Config(), NOW)
    assert decision.verdict is not Verdict.IDLE
    assert any("not yet idle" in r for r in decision.reasons)


def test_released_memory_uses_the_short_window() -> None:
    decision = decide(INSTANCE, util(busy_then_idle(12, mem=40.0)), PRICE, Config(), NOW)
    assert decision.verdict is Verdict.IDLE
    assert decision.idle_window_minutes == 10
    assert "the job has ended" in decision.reasons[0]
    held = decide(INSTANCE, util(busy_then_idle(12)), PRICE, Config(), NOW)
    assert held.verdict is not Verdict.IDLE  # memory held: the long window applies


def test_unknown_memory_is_not_released() -> None:
    decision = decide(INSTANCE, util(busy_then_idle(30, mem=None)), PRICE, Config(), NOW)
    assert decision.verdict is not Verdict.IDLE


def test_agent_process_count_is_release_evidence() -> None:
    samples = tuple(
        replace(s, processes=0, mem_used_mib=None) if s.gpu_util_pct < 5 else s
        for s in busy_then_idle(12)
    )
    assert decide(INSTANCE, util(samples), PRICE, Config(), NOW).verdict is Verdict.IDLE
    holding = tuple(replace(s, processes=1) for s in samples)
    assert decide(INSTANCE, util(holding), PRICE, Config(), NOW).verdict is not Verdict.IDLE


def test_zero_released_window_does_not_make_everything_idle() -> None:
    # window_released: 0s must not turn a busy instance "released" (0 >= 0 was true).
    decision = decide(
        INSTANCE, util(flat_samples(90.0, 120)), PRICE, config("idle.window_released=0s"), NOW
    )
    assert decision.verdict is not Verdict.IDLE


def test_zero_released_window_switches_the_shortcut_off() -> None:
    # Released memory for 12 min is idle at the default 10 min; with 0s the full window applies.
    released = util(busy_then_idle(12, mem=40.0))
    off = config("idle.window_released=0s")
    assert decide(INSTANCE, released, PRICE, off, NOW).verdict is not Verdict.IDLE
    just_released = util(busy_then_idle(1, mem=40.0))
    assert decide(INSTANCE, just_released, PRICE, off, NOW).verdict is not Verdict.IDLE
    long_released = util(busy_then_idle(61, mem=40.0))
    assert decide(INSTANCE, long_released, PRICE, off, NOW).idle_window_minutes == 60


@pytest.mark.parametrize(("mode", "action"), [("audit", "report"), ("notify", "notify")])
def test_action_follows_the_mode(mode: str, action: str) -> None:
    decision = decide(INSTANCE, util(busy_then_idle(70)), PRICE, config(f"mode={mode}"), NOW)
    assert decision.verdict is Verdict.IDLE
    assert decision.action == action


def test_min_uptime_holds_back_a_fresh_instance() -> None:
    fresh = make_instance(launch_time=NOW - timedelta(minutes=15))
    samples = flat_samples(0.0, 15, mem_mib=0.0)
    decision = decide(fresh, util(samples), PRICE, Config(), NOW)
    assert decision.verdict is not Verdict.IDLE
    assert any("up only 15 min" in r for r in decision.reasons)


def test_stale_metrics_are_unmeasured() -> None:
    samples = busy_then_idle(120)[:-11]  # the newest sample is 11 minutes old
    decision = decide(INSTANCE, util(samples), PRICE, Config(), NOW)
    assert decision.verdict is Verdict.UNMEASURED
    assert decision.action == "report"
    assert "11 min old" in decision.reasons[0]


def test_missing_and_failed_metrics_are_unmeasured() -> None:
    assert decide(INSTANCE, util(()), PRICE, Config(), NOW).verdict is Verdict.UNMEASURED
    failed = GpuUtilisation(error="AccessDenied on GetMetricData")
    decision = decide(INSTANCE, failed, PRICE, Config(), NOW)
    assert decision.verdict is Verdict.UNMEASURED
    assert decision.reasons == ("AccessDenied on GetMetricData",)


def test_sparse_metrics_are_unmeasured() -> None:
    sparse = busy_then_idle(120)[::3]  # one sample in three
    decision = decide(INSTANCE, util(sparse), PRICE, Config(), NOW)
    assert decision.verdict is Verdict.UNMEASURED
    assert "cover" in decision.reasons[0]


def test_a_sparse_idle_stretch_is_not_idle() -> None:
    # Dense busy history, then one idle sample every 9 minutes: each gap is under max_gap
    # (10 min), but 8 samples do not measure 70 minutes.
    busy = flat_samples(90.0, 600, end=NOW - timedelta(minutes=63))
    idle = tuple(
        GpuSample(NOW - timedelta(minutes=9 * i), 0.0, 20000.0) for i in reversed(range(8))
    )
    decision = decide(INSTANCE, util(busy + idle), PRICE, Config(), NOW)
    assert decision.verdict is not Verdict.IDLE
    assert any("of that stretch has samples" in r for r in decision.reasons)


def test_a_hole_in_the_data_ends_the_idle_run() -> None:
    before = flat_samples(0.0, 60, end=NOW - timedelta(minutes=40))
    after = flat_samples(0.0, 25)  # 15 minutes without data in between
    run = trailing_idle_run(
        before + after,
        threshold_pct=5,
        released_below_mib=256,
        period=timedelta(minutes=1),
        max_gap=timedelta(minutes=10),
    )
    assert run.held == timedelta(minutes=25)
    assert run.samples == 25


def test_an_incomplete_sample_ends_the_idle_run() -> None:
    samples = list(busy_then_idle(90))
    samples[-30] = replace(samples[-30], complete=False)  # one GPU did not report
    decision = decide(INSTANCE, util(tuple(samples)), PRICE, Config(), NOW)
    assert decision.verdict is not Verdict.IDLE
    assert decision.idle_minutes == 29


@pytest.mark.parametrize("bad", [math.nan, -1.0, -math.inf])
def test_a_reading_that_is_not_a_percentage_is_not_idle(bad: float) -> None:
    samples = list(busy_then_idle(90))
    samples[-20] = replace(samples[-20], gpu_util_pct=bad)
    decision = decide(INSTANCE, util(tuple(samples)), PRICE, Config(), NOW)
    assert decision.verdict is not Verdict.IDLE
    assert decision.idle_minutes == 19
    assert decision.gpu_util_mean is not None
    assert math.isfinite(decision.gpu_util_mean)


def test_only_nan_readings_are_unmeasured_not_zero() -> None:
    samples = tuple(replace(s, gpu_util_pct=math.nan) for s in busy_then_idle(90))
    decision = decide(INSTANCE, util(samples), PRICE, Config(), NOW)
    assert decision.verdict is Verdict.UNMEASURED
    assert "NaN" in decision.reasons[0]


def test_samples_out_of_order_are_sorted_first() -> None:
    samples = list(busy_then_idle(90))
    busy = samples[0]
    # A busy sample from 30 minutes ago delivered first: read in list order, the last 90
    # minutes would look idle; in time order the run is 31 minutes.
    late = replace(busy, at=NOW - timedelta(minutes=30, seconds=30))
    shuffled = (late, *samples)
    decision = decide(INSTANCE, util(shuffled), PRICE, Config(), NOW)
    assert decision.verdict is not Verdict.IDLE
    assert decision.idle_minutes == 31  # NOW-30m .. NOW: 31 one-minute samples


def test_samples_outside_the_lookback_and_future_are_ignored() -> None:
    old = flat_samples(90.0, 60, end=NOW - timedelta(hours=30))
    future = flat_samples(90.0, 5, end=NOW + timedelta(minutes=5))
    samples = old + flat_samples(0.0, 24 * 60)[:-1] + (GpuSample(NOW, 0.0, 20000.0),) + future
    decision = decide(INSTANCE, util(samples), PRICE, Config(), NOW)
    assert decision.verdict is Verdict.IDLE
    assert decision.gpu_util_max == 0.0


@pytest.mark.parametrize(
    "tags",
    [
        {"guardian:protect": "true"},
        {"guardian-protect": "yes"},
        {"guardian:keep-until": format_keep_until(NOW + timedelta(days=365))},
        {"guardian:protect": "maybe"},  # malformed: protects, and says so
    ],
)
def test_protected_wins_over_everything(tags: dict[str, str]) -> None:
    instance = make_instance(tags=tags)
    for utilisation in (util(busy_then_idle(300, mem=0.0)), GpuUtilisation(error="down")):
        decision = decide(instance, utilisation, PRICE, config("mode=enforce"), NOW)
        assert decision.verdict is Verdict.PROTECTED
        assert decision.action == "none"
        assert decision.reasons


def test_expired_keep_until_does_not_protect() -> None:
    instance = make_instance(
        tags={"guardian:keep-until": format_keep_until(NOW - timedelta(days=1))}
    )
    decision = decide(instance, util(busy_then_idle(70)), PRICE, Config(), NOW)
    assert decision.verdict is Verdict.IDLE


def test_underused_when_the_gpu_does_not_earn_its_premium() -> None:
    # 30 % mean utilisation with a 5x premium needs a 16.7x speedup: more than the expected 10x.
    samples = flat_samples(30.0, 24 * 60)
    decision = decide(INSTANCE, util(samples), PRICE, Config(), NOW)
    assert decision.verdict is Verdict.UNDERUSED
    assert decision.required_speedup == pytest.approx(16.67)
    assert decision.action == "report"
    assert "m7i.xlarge" in decision.reasons[-1]


def test_busy_when_it_earns_its_premium_and_tag_overrides_speedup() -> None:
    samples = flat_samples(80.0, 24 * 60)
    decision = decide(INSTANCE, util(samples), PRICE, Config(), NOW)
    assert decision.verdict is Verdict.BUSY
    assert decision.required_speedup == 6.25
    tagged = make_instance(tags={"guardian:speedup": "4"})
    assert decide(tagged, util(samples), PRICE, Config(), NOW).verdict is Verdict.UNDERUSED


def test_without_a_price_it_cannot_be_underused_and_says_why() -> None:
    decision = decide(INSTANCE, util(flat_samples(30.0, 24 * 60)), NO_PRICE, Config(), NOW)
    assert decision.verdict is Verdict.BUSY
    assert decision.wasted_usd is None
    assert "cannot judge underuse: no price for g9.huge" in decision.reasons[-1]


def test_never_used_gpu_is_underused() -> None:
    samples = flat_samples(0.0, 50)  # idle, but not yet for the window
    decision = decide(INSTANCE, util(samples), PRICE, Config(), NOW)
    assert decision.verdict is Verdict.UNDERUSED
    assert "buys nothing" in decision.reasons[-1]


def test_enforce_mode_is_the_only_one_that_stops() -> None:
    samples = busy_then_idle(120)
    actions = {
        mode: decide(INSTANCE, util(samples), PRICE, config(f"mode={mode.value}"), NOW).action
        for mode in Mode
    }
    assert actions == {Mode.AUDIT: "report", Mode.NOTIFY: "notify", Mode.ENFORCE: "stop"}
