"""Properties of policy.decide that must hold for any history (hypothesis).

The safety rules of DESIGN.md, stated as properties: a working sample inside the window never
yields ``idle``; stale or missing data never does; protection always wins; and the history
signals only ever lengthen the wait.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardian.config import Config, apply_overrides, parse_config
from guardian.model import GpuSample, GpuUtilisation, PriceAssessment, Verdict
from guardian.policy import decide, format_keep_until
from guardian.policy.history import idle_waits, pause_history
from tests.fake_provider import NOW, make_instance

PRICE = PriceAssessment(2.0, "catalog", None, None, "no CPU equivalent")
INSTANCE = make_instance()
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Readings: mostly under the 5 % threshold, some exactly on it, some working.
utils = st.one_of(
    st.floats(0, 4.99), st.just(5.0), st.floats(5, 100), st.sampled_from([0.0, 0.0, 1.0])
)
mems = st.one_of(st.none(), st.sampled_from([0.0, 100.0, 255.0, 256.0, 20000.0]))


@st.composite
def histories(draw: st.DrawFn, max_minutes: int = 240) -> tuple[GpuSample, ...]:
    """One-minute samples ending at NOW, in runs of equal readings, with occasional holes."""
    samples: list[GpuSample] = []
    minute = 0
    total = draw(st.integers(1, max_minutes))
    while minute < total:
        length = draw(st.integers(1, 40))
        value, mem = draw(utils), draw(mems)
        complete = draw(st.booleans()) or draw(st.booleans()) or draw(st.booleans())
        for _ in range(min(length, total - minute)):
            samples.append(GpuSample(NOW - timedelta(minutes=minute), value, mem, complete))
            minute += 1
        minute += draw(st.sampled_from([0, 0, 0, 0, 3, 12]))  # a hole in the data now and then
    return tuple(reversed(samples))


@st.composite
def configs(draw: st.DrawFn) -> Config:
    window = draw(st.sampled_from(["5m", "20m", "60m", "2h"]))
    released = draw(st.sampled_from(["0s", "2m", "10m", "30m"]))
    history = draw(st.booleans())
    overrides = [
        "mode=enforce",
        f"idle.window={window}",
        f"idle.window_released={released}",
        f"idle.min_uptime={draw(st.sampled_from(['0s', '20m']))}",
        f"idle.min_coverage={draw(st.sampled_from([0.1, 0.5, 0.9]))}",
        f"idle.history_margin={2.0 if history else 0}",
        f"idle.window_bursty={'4h' if history else '0s'}",
    ]
    return parse_config(apply_overrides({}, overrides))


def utilisation(samples: tuple[GpuSample, ...]) -> GpuUtilisation:
    return GpuUtilisation(samples, 60, 1)


def without_history(config: Config) -> Config:
    idle = config.idle.model_copy(update={"history_margin": 0.0, "window_bursty": timedelta(0)})
    return config.model_copy(update={"idle": idle})


@SETTINGS
@given(histories(), configs())
def test_a_working_sample_inside_the_shorter_window_never_yields_idle(
    samples: tuple[GpuSample, ...], config: Config
) -> None:
    shortest = min(config.idle.window, config.idle.window_released or config.idle.window)
    working = [s for s in samples if s.gpu_util_pct >= config.idle.gpu_util_below]
    decision = decide(INSTANCE, utilisation(samples), PRICE, config, NOW)
    if working and NOW - working[-1].at < shortest:
        assert decision.verdict is not Verdict.IDLE


@SETTINGS
@given(histories(), configs())
def test_with_memory_held_a_working_sample_inside_the_window_never_yields_idle(
    samples: tuple[GpuSample, ...], config: Config
) -> None:
    held = tuple(replace(s, mem_used_mib=20000.0) for s in samples)
    working = [s for s in held if s.gpu_util_pct >= config.idle.gpu_util_below]
    decision = decide(INSTANCE, utilisation(held), PRICE, config, NOW)
    if working and NOW - working[-1].at < config.idle.window:
        assert decision.verdict is not Verdict.IDLE


@SETTINGS
@given(histories(), configs(), st.integers(1, 600))
def test_stale_data_never_yields_idle(
    samples: tuple[GpuSample, ...], config: Config, extra_s: int
) -> None:
    late = NOW + config.idle.max_staleness + timedelta(seconds=extra_s)
    decision = decide(INSTANCE, utilisation(samples), PRICE, config, late)
    assert decision.verdict is Verdict.UNMEASURED
    assert decision.action == "report"


@SETTINGS
@given(configs(), st.text(min_size=1, max_size=40))
def test_missing_data_never_yields_idle(config: Config, error: str) -> None:
    for missing in (GpuUtilisation(), GpuUtilisation(error=error)):
        assert decide(INSTANCE, missing, PRICE, config, NOW).verdict is Verdict.UNMEASURED


@SETTINGS
@given(histories(), configs())
def test_an_incomplete_newest_sample_never_yields_idle(
    samples: tuple[GpuSample, ...], config: Config
) -> None:
    partial = (*samples[:-1], replace(samples[-1], complete=False))
    assert decide(INSTANCE, utilisation(partial), PRICE, config, NOW).verdict is not Verdict.IDLE


@SETTINGS
@given(
    histories(),
    configs(),
    st.sampled_from(
        [
            {"guardian:protect": "true"},
            {"guardian-protect": "TRUE"},
            {"guardian:keep-until": format_keep_until(NOW + timedelta(days=365))},
            {"guardian-keep-until": format_keep_until(NOW + timedelta(days=1), label=True)},
            {"guardian:protect": "not-a-bool"},
            {"guardian:keep-until": "someday"},
        ]
    ),
    st.booleans(),
)
def test_protected_always_wins(
    samples: tuple[GpuSample, ...], config: Config, tags: dict[str, str], broken: bool
) -> None:
    data = GpuUtilisation(error="metrics API down") if broken else utilisation(samples)
    decision = decide(make_instance(tags=tags), data, PRICE, config, NOW)
    assert decision.verdict is Verdict.PROTECTED
    assert decision.action == "none"


@SETTINGS
@given(histories(max_minutes=600), configs())
def test_history_only_lengthens_the_wait(samples: tuple[GpuSample, ...], config: Config) -> None:
    with_history = decide(INSTANCE, utilisation(samples), PRICE, config, NOW)
    fixed = decide(INSTANCE, utilisation(samples), PRICE, without_history(config), NOW)
    if with_history.verdict is Verdict.IDLE:
        assert fixed.verdict is Verdict.IDLE
    history = pause_history(samples, threshold_pct=5.0, released_below_mib=256.0)
    waits = idle_waits(history, config.idle)
    assert waits.held >= config.idle.window
    assert waits.released >= config.idle.window_released


@SETTINGS
@given(histories(), configs())
def test_an_idle_verdict_carries_its_window_dollars_and_action(
    samples: tuple[GpuSample, ...], config: Config
) -> None:
    decision = decide(INSTANCE, utilisation(samples), PRICE, config, NOW)
    if decision.verdict is Verdict.IDLE:
        assert decision.action == "stop"
        assert decision.idle_minutes is not None
        assert decision.idle_window_minutes is not None
        assert decision.idle_minutes >= min(
            decision.idle_window_minutes, config.idle.window.total_seconds() / 60
        )
        assert decision.wasted_usd == round(decision.idle_minutes / 60 * 2.0, 2)
        assert decision.reasons
