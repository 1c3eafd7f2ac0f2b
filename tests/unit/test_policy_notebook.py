"""The notebook shortcut in ``policy.decide``: it shortens the wait only with the agent's evidence
(every GPU-holding process an idle kernel, no browser connected), never without it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardian.config import Config, apply_overrides, parse_config
from guardian.errors import ConfigError
from guardian.model import GpuSample, GpuUtilisation, InstanceMetric, Point, Verdict
from guardian.policy import decide
from guardian.policy.notebook import notebook_idle_s
from tests.fake_provider import NOW, flat_samples, make_instance
from tests.unit.test_policy_properties import PRICE, SETTINGS, configs, histories

INSTANCE = make_instance()
FEWER = settings(SETTINGS, max_examples=50)  # each example decides twice: keep the suite quick


def config(*overrides: str) -> Config:
    return parse_config(apply_overrides({"mode": "enforce"}, overrides))


def bursty(idle_minutes: int) -> tuple[GpuSample, ...]:
    """A notebook's day: six cells of 5 busy minutes with 30-minute think pauses between them
    (memory held), the last cell ending ``idle_minutes`` before NOW."""
    samples = flat_samples(1.0, idle_minutes)
    end = NOW - timedelta(minutes=idle_minutes)
    for _ in range(6):
        samples = flat_samples(90.0, 5, end=end) + samples
        end -= timedelta(minutes=5)
        samples = flat_samples(1.0, 30, end=end) + samples
        end -= timedelta(minutes=30)
    return samples


def signal(
    samples: tuple[GpuSample, ...], idle_s: float | None, *, lag: timedelta = timedelta(0)
) -> GpuUtilisation:
    """The GPU history with the notebook signal's newest point ``lag`` before the newest
    sample (as a provider or the agent would give it)."""
    series: dict[InstanceMetric, tuple[Point, ...]] = {}
    if idle_s is not None:
        series[InstanceMetric.NOTEBOOK_IDLE_S] = ((samples[-1].at - lag, idle_s),)
    return GpuUtilisation(samples, 60, 1, instance_series=series)


def test_bursty_notebook_waits_four_hours_without_the_signal() -> None:
    decision = decide(INSTANCE, signal(bursty(70), None), PRICE, config(), NOW)
    assert decision.verdict is not Verdict.IDLE
    assert any("waiting 240 min" in r for r in decision.reasons)


def test_the_signal_makes_it_idle_after_window_notebook() -> None:
    decision = decide(INSTANCE, signal(bursty(70), 70 * 60.0), PRICE, config(), NOW)
    assert decision.verdict is Verdict.IDLE
    assert decision.action == "stop"
    assert decision.idle_window_minutes == 60
    assert decision.notebook_idle_minutes == 70
    assert decision.reasons[0].startswith(
        "notebook kernel idle for 70 min, no browser connected (every GPU under 5% for 70 min"
    )


def test_the_signal_needs_both_the_kernels_and_the_gpus_idle_for_the_window() -> None:
    # The kernel has been quiet for 70 minutes, the GPUs only for 40: a thread may have worked.
    decision = decide(INSTANCE, signal(bursty(40), 70 * 60.0), PRICE, config(), NOW)
    assert decision.verdict is not Verdict.IDLE
    # The GPUs idle 70 minutes, the kernels only 50 (a browser closed 50 minutes after a cell).
    decision = decide(INSTANCE, signal(bursty(70), 50 * 60.0), PRICE, config(), NOW)
    assert decision.verdict is not Verdict.IDLE


def test_a_signal_older_than_the_newest_sample_says_nothing_about_now() -> None:
    # The agent stopped sending it a minute ago: a browser reconnected or a cell ran.
    stale = signal(bursty(70), 69 * 60.0, lag=timedelta(minutes=1))
    assert decide(INSTANCE, stale, PRICE, config(), NOW).verdict is not Verdict.IDLE
    assert notebook_idle_s(stale, stale.samples[-1].at, NOW) is None


def test_a_point_from_after_the_decision_is_not_seen() -> None:
    samples = bursty(70)
    future = GpuUtilisation(
        samples,
        60,
        1,
        instance_series={InstanceMetric.NOTEBOOK_IDLE_S: ((NOW + timedelta(minutes=1), 4e3),)},
    )
    assert notebook_idle_s(future, samples[-1].at, NOW) is None


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_a_signal_that_is_not_a_number_of_seconds_is_ignored(bad: float) -> None:
    decision = decide(INSTANCE, signal(bursty(70), bad), PRICE, config(), NOW)
    assert decision.verdict is not Verdict.IDLE


def test_window_notebook_zero_switches_it_off_and_a_longer_one_waits() -> None:
    util = signal(bursty(70), 70 * 60.0)
    off = decide(INSTANCE, util, PRICE, config("idle.window_notebook=0s"), NOW)
    assert off.verdict is not Verdict.IDLE
    longer = decide(INSTANCE, util, PRICE, config("idle.window_notebook=2h"), NOW)
    assert longer.verdict is not Verdict.IDLE


def test_keep_tags_and_uptime_still_win() -> None:
    util = signal(bursty(70), 70 * 60.0)
    kept = make_instance(tags={"guardian:keep-until": (NOW + timedelta(hours=1)).isoformat()})
    assert decide(kept, util, PRICE, config(), NOW).verdict is Verdict.PROTECTED
    young = make_instance(launch_time=NOW - timedelta(minutes=10))
    assert decide(young, util, PRICE, config(), NOW).verdict is not Verdict.IDLE


@pytest.mark.parametrize("value", ["5m", "9m", "8d"])
def test_window_notebook_is_bounded_with_a_reason(value: str) -> None:
    with pytest.raises(ConfigError) as error:
        config(f"idle.window_notebook={value}")
    expected = f"idle.window_notebook: {value} is not between 10m and 7d (or 0s, off)"
    assert expected in str(error.value)
    assert "reading between two cells" in str(error.value)


# -- properties ----------------------------------------------------------------------------------


@st.composite
def idle_tails(draw: st.DrawFn) -> tuple[GpuSample, ...]:
    """Any history, mostly followed by a quiet stretch of up to 2.5 hours up to NOW:
    the shape in which the notebook shortcut can matter."""
    before = draw(histories(max_minutes=180))
    tail = draw(st.sampled_from([0, 59, 60, 61, 75, 150]))
    if not tail:
        return before
    shift = timedelta(minutes=tail)
    quiet = tuple(
        GpuSample(NOW - timedelta(minutes=m), draw(st.sampled_from([0.0, 1.0, 4.9])), 20000.0)
        for m in range(tail - 1, -1, -1)
    )
    return (
        tuple(GpuSample(s.at - shift, s.gpu_util_pct, s.mem_used_mib, s.complete) for s in before)
        + quiet
    )


@st.composite
def notebook_points(draw: st.DrawFn, samples: tuple[GpuSample, ...]) -> tuple[Point, ...]:
    """A notebook series at some of the samples' times (the rest absent), any values."""
    rng = draw(st.randoms(use_true_random=False))
    share = draw(st.sampled_from([0.0, 0.5, 1.0, 1.0]))
    return tuple(
        (s.at, rng.choice([0.0, 59 * 60.0, 3600.0, 7200.0, rng.uniform(0, 20 * 3600)]))
        for s in samples
        if rng.random() < share
    )


@FEWER
@given(st.data(), idle_tails(), configs())
def test_without_the_signal_at_the_newest_sample_nothing_changes(
    data: st.DataObject, samples: tuple[GpuSample, ...], cfg: Config
) -> None:
    """Where the newest sample has no notebook point (a browser connected, a job beside the
    kernel...), adding the column never changes the decision."""
    points = data.draw(notebook_points(samples))
    if points and points[-1][0] == samples[-1].at:
        points = points[:-1]
    plain = GpuUtilisation(samples, 60, 1)
    with_points = GpuUtilisation(
        samples, 60, 1, instance_series={InstanceMetric.NOTEBOOK_IDLE_S: points}
    )
    assert decide(INSTANCE, with_points, PRICE, cfg, NOW) == decide(
        INSTANCE, plain, PRICE, cfg, NOW
    )


@FEWER
@given(st.data(), idle_tails(), configs())
def test_the_signal_never_stops_gpus_that_worked_within_window_notebook(
    data: st.DataObject, samples: tuple[GpuSample, ...], cfg: Config
) -> None:
    """With any notebook series, a working (or unreported) sample inside window_notebook keeps
    the verdict from resting on the notebook shortcut."""
    points = data.draw(notebook_points(samples))
    util = GpuUtilisation(samples, 60, 1, instance_series={InstanceMetric.NOTEBOOK_IDLE_S: points})
    decision = decide(INSTANCE, util, PRICE, cfg, NOW)
    if decision.notebook_idle_minutes is None:
        return
    window = cfg.idle.window_notebook
    recent = [s for s in samples if s.at > NOW - window]
    assert all(s.complete and s.gpu_util_pct < cfg.idle.gpu_util_below for s in recent)
    assert decision.notebook_idle_minutes * 60 >= window.total_seconds() - 3  # rounding
