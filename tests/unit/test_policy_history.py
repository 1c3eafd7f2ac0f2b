"""policy_history: what an instance's own pauses say, and how decide() uses it."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from guardian.config import Config, IdleConfig, apply_overrides, parse_config
from guardian.model import GpuSample, GpuUtilisation, PriceAssessment, Verdict
from guardian.policy import decide
from guardian.policy.history import PauseHistory, idle_waits, pause_history
from tests.fake_provider import NOW, make_instance

PRICE = PriceAssessment(1.0, "catalog", None, None, "no CPU equivalent")
INSTANCE = make_instance()
HELD, RELEASED = 20000.0, 50.0


def timeline(*phases: tuple[int, float, float | None], end: object = NOW) -> tuple[GpuSample, ...]:
    """Phases of (minutes, util %, memory MiB), one sample a minute, the last one at ``end``."""
    total = sum(minutes for minutes, _, _ in phases)
    samples = []
    minute = total - 1
    for minutes, util, mem in phases:
        for _ in range(minutes):
            samples.append(GpuSample(NOW - timedelta(minutes=minute), util, mem))
            minute -= 1
    return tuple(samples)


def history(samples: tuple[GpuSample, ...]) -> PauseHistory:
    return pause_history(samples, threshold_pct=5.0, released_below_mib=256.0)


def config(*overrides: str) -> Config:
    return parse_config(apply_overrides({}, ["mode=enforce", *overrides]))


def verdict(samples: tuple[GpuSample, ...], cfg: Config | None = None) -> Verdict:
    return decide(INSTANCE, GpuUtilisation(samples, 60, 1), PRICE, cfg or config(), NOW).verdict


def test_pause_history_counts_only_pauses_that_ended_in_work() -> None:
    samples = timeline(
        (30, 90.0, HELD),
        (12, 1.0, HELD),  # resumed, memory held
        (30, 90.0, HELD),
        (20, 0.0, RELEASED),  # resumed after releasing memory
        (10, 90.0, HELD),
        (5, 0.0, HELD),  # the trailing run: not (yet) followed by work
    )
    found = history(samples)
    assert found.resumed == 2
    assert found.longest_resumed == timedelta(minutes=20)
    assert found.longest_released == timedelta(minutes=20)
    assert found.long_pauses == 2
    assert found.active_share == pytest.approx(70 / 107)
    assert found.longest_resumed_at == NOW - timedelta(minutes=14)
    assert not found.bursty


def test_a_hole_or_nan_inside_a_pause_lengthens_it() -> None:
    before = timeline((30, 90.0, HELD), (10, 0.0, HELD), end=NOW)
    # Drop minutes 5..7 of the pause and poison one reading: the pause still spans 10 minutes
    # and does not split in two.
    pause_start = len(before) - 10
    holed = before[: pause_start + 5] + before[pause_start + 8 :]
    poisoned = list(holed)
    poisoned[pause_start + 2] = GpuSample(poisoned[pause_start + 2].at, math.nan, HELD)
    samples = (*poisoned, GpuSample(NOW + timedelta(minutes=1), 90.0, HELD))
    found = history(samples)
    assert found.resumed == 1
    assert found.longest_resumed == timedelta(minutes=10)  # NOW-9 .. the sample at NOW+1


def test_bursty_needs_repeated_long_pauses_and_mostly_waiting() -> None:
    service = timeline(*[(3, 80.0, HELD), (25, 0.0, HELD)] * 4, (3, 80.0, HELD))
    assert history(service).bursty
    training = timeline(*[(60, 95.0, HELD), (15, 0.0, HELD)] * 4, (3, 95.0, HELD))
    assert history(training).long_pauses == 4
    assert not history(training).bursty  # busy most of the time: a job with stalls


def test_idle_waits_lengthen_and_explain() -> None:
    idle = IdleConfig()
    plain = idle_waits(PauseHistory(), idle)
    assert (plain.held, plain.released, plain.reasons) == (idle.window, idle.window_released, ())
    came_back = PauseHistory(resumed=1, longest_resumed=timedelta(minutes=45))
    waits = idle_waits(came_back, idle)
    assert waits.held == timedelta(minutes=90)
    assert waits.released == idle.window_released
    assert "a 45 min pause ended in work" in waits.reasons[0]
    released_before = PauseHistory(
        resumed=1,
        longest_resumed=timedelta(minutes=8),
        longest_released=timedelta(minutes=8),
    )
    assert idle_waits(released_before, idle).released == timedelta(minutes=16)
    bursty = PauseHistory(
        resumed=9, longest_resumed=timedelta(minutes=50), long_pauses=9, active_share=0.2
    )
    waits = idle_waits(bursty, idle)
    assert waits.held == waits.released == timedelta(hours=4)
    assert "a service or notebook" in waits.reasons[-1]


def test_idle_waits_can_be_switched_off() -> None:
    idle = IdleConfig(history_margin=0, window_bursty=timedelta(0))
    everything = PauseHistory(
        resumed=9,
        longest_resumed=timedelta(hours=3),
        longest_released=timedelta(hours=1),
        long_pauses=9,
        active_share=0.1,
    )
    waits = idle_waits(everything, idle)
    assert (waits.held, waits.released) == (idle.window, idle.window_released)


def test_a_service_between_requests_is_not_stopped_by_the_fixed_window() -> None:
    bursts = [(4, 70.0, HELD), (35, 0.0, HELD)] * 12  # 8 hours of requests, 35-min lulls
    quiet_90 = timeline(*bursts, (4, 70.0, HELD), (90, 0.0, HELD))
    fixed = config("idle.history_margin=0", "idle.window_bursty=0s")
    assert verdict(quiet_90, fixed) is Verdict.IDLE  # what a fixed 60-minute window does
    decision = decide(INSTANCE, GpuUtilisation(quiet_90, 60, 1), PRICE, config(), NOW)
    assert decision.verdict is not Verdict.IDLE
    assert any("a service or notebook" in r for r in decision.reasons)
    quiet_5h = timeline(*bursts, (4, 70.0, HELD), (300, 0.0, HELD))
    decision = decide(INSTANCE, GpuUtilisation(quiet_5h, 60, 1), PRICE, config(), NOW)
    assert decision.verdict is Verdict.IDLE  # it still never serves again: stopped after 4 h
    assert decision.idle_window_minutes == 240


def test_a_service_that_unloads_its_model_is_not_taken_for_a_finished_job() -> None:
    bursts = [(4, 70.0, HELD), (30, 0.0, RELEASED)] * 10
    samples = timeline(*bursts, (4, 70.0, HELD), (40, 0.0, RELEASED))
    assert verdict(samples, config("idle.history_margin=0", "idle.window_bursty=0s")) is (
        Verdict.IDLE
    )
    assert verdict(samples) is not Verdict.IDLE


def test_a_finished_training_run_is_still_stopped_after_the_released_window() -> None:
    evals = [(55, 95.0, HELD), (5, 1.0, HELD)] * 8
    run = [*evals, (55, 95.0, HELD), (40, 0.0, HELD), (120, 95.0, HELD)]  # one 40-min stall
    exited = timeline(*run, (11, 0.0, RELEASED))
    decision = decide(INSTANCE, GpuUtilisation(exited, 60, 1), PRICE, config(), NOW)
    assert decision.verdict is Verdict.IDLE
    assert decision.idle_window_minutes == 10
    hung = timeline(*run, (70, 0.0, HELD))  # exited without releasing: the 40-min stall counts
    assert verdict(hung) is not Verdict.IDLE
    hung_longer = timeline(*run, (81, 0.0, HELD))
    decision = decide(INSTANCE, GpuUtilisation(hung_longer, 60, 1), PRICE, config(), NOW)
    assert decision.verdict is Verdict.IDLE
    assert decision.idle_window_minutes == 80
    assert any("a 40 min pause ended in work" in r for r in decision.reasons)
