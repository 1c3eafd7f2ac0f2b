"""The verdict rules of DESIGN.md as one pure function, ``decide``.

No clock (``now`` is an argument), no I/O, no cloud SDK: the daemon, the audit, the agent, the
demo and the backtest all call this same function, so a backtest tests the real policy. The
instance's own history (``guardian.policy.history``) may lengthen the idle wait, never shorten it;
what shortens it is evidence: memory released (the job has ended), or the agent's notebook signal
(``guardian.policy.notebook``: only idle notebook kernels hold the GPUs, no browser connected).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from operator import attrgetter, is_not

from guardian.config import Config, Mode
from guardian.model import (
    Decision,
    GpuInstance,
    GpuSample,
    GpuUtilisation,
    PriceAssessment,
    Verdict,
)
from guardian.policy.history import IdleWaits, idle_waits, pause_history, released
from guardian.policy.notebook import notebook_idle_s
from guardian.policy.tags import protection, speedup_override

__all__ = ["IdleRun", "decide", "trailing_idle_run"]

_MODE_ACTION = {Mode.AUDIT: "report", Mode.NOTIFY: "notify", Mode.ENFORCE: "stop"}
_AT = attrgetter("at")
_UTIL = attrgetter("gpu_util_pct")
_MEM = attrgetter("mem_used_mib")
_KNOWN = partial(is_not, None)


@dataclass(frozen=True)
class IdleRun:
    """The trailing stretch of samples under the threshold, up to the newest sample."""

    held: timedelta  # every GPU under the threshold
    released: timedelta  # ... and GPU memory released (or no compute process) throughout
    samples: int = 0  # samples in the held run, to tell a measured stretch from a sparse one


def trailing_idle_run(
    samples: Sequence[GpuSample],
    *,
    threshold_pct: float,
    released_below_mib: float,
    period: timedelta,
    max_gap: timedelta,
) -> IdleRun:
    """How long every GPU has been under the threshold, counting back from the newest sample.

    The run stops at a sample at or above the threshold, at an incomplete sample (a GPU did not
    report: it may have been working), at a value that is not a percentage (NaN, negative), at
    samples out of time order and at a gap longer than ``max_gap`` (no data is not idle).
    Each sample stands for one ``period``, so ten one-minute samples are ten idle minutes.
    """
    if not samples:
        return IdleRun(timedelta(0), timedelta(0))
    newest = samples[-1].at
    held_start: datetime | None = None
    released_start: datetime | None = None
    released_open = True
    later: datetime | None = None
    count = 0
    for sample in reversed(samples):
        if later is not None and not timedelta(0) <= later - sample.at <= max_gap:
            break
        # Written so that NaN fails the test: NaN compares false with everything.
        if not sample.complete or not 0.0 <= sample.gpu_util_pct < threshold_pct:
            break
        held_start = sample.at
        count += 1
        if released_open and released(sample, released_below_mib):
            released_start = sample.at
        else:
            released_open = False
        later = sample.at
    held = newest - held_start + period if held_start is not None else timedelta(0)
    released_run = newest - released_start + period if released_start is not None else timedelta(0)
    return IdleRun(held, released_run, count)


def _in_lookback(
    samples: tuple[GpuSample, ...], start: datetime, end: datetime
) -> tuple[GpuSample, ...]:
    """The samples with ``start <= at <= end``, oldest first.

    Providers deliver samples oldest first; checking that costs C-level passes, after which two
    bisections replace a Python-level filter (this runs once per instance per poll).
    """
    times = list(map(_AT, samples))
    ordered = sorted(times)  # timsort on sorted input is one pass of comparisons
    if ordered != times:
        samples = tuple(sorted(samples, key=_AT))
        times = ordered
    return samples[bisect_left(times, start) : bisect_right(times, end)]


def _waits(samples: Sequence[GpuSample], config: Config) -> IdleWaits:
    """The idle waits for this instance: the configured ones, lengthened by its own history."""
    idle = config.idle
    history = pause_history(
        samples, threshold_pct=idle.gpu_util_below, released_below_mib=idle.released_below_mib
    )
    return idle_waits(history, idle)


def _minutes(delta: timedelta) -> float:
    return round(delta.total_seconds() / 60, 1)


def _unmeasured(
    reason: str, *, age_s: float | None = None, coverage: float | None = None
) -> Decision:
    return Decision(
        verdict=Verdict.UNMEASURED,
        reasons=(reason,),
        action="report",
        idle_minutes=None,
        wasted_usd=None,
        gpu_util_mean=None,
        gpu_util_max=None,
        gpu_mem_used_max_mib=None,
        metric_coverage=coverage,
        newest_sample_age_s=age_s,
        required_speedup=None,
    )


def decide(
    instance: GpuInstance,
    utilisation: GpuUtilisation,
    price: PriceAssessment,
    config: Config,
    now: datetime,
) -> Decision:
    """The verdict for one instance at ``now``, with reasons a person can check."""
    idle_cfg, cost_cfg = config.idle, config.cost
    guard = protection(instance.tags, now)
    if guard.protected:
        protected_reasons = tuple(r for r in (guard.reason, guard.problem) if r)
        return Decision(
            verdict=Verdict.PROTECTED,
            reasons=protected_reasons,
            action="none",
            idle_minutes=None,
            wasted_usd=None,
            gpu_util_mean=None,
            gpu_util_max=None,
            gpu_mem_used_max_mib=None,
            metric_coverage=None,
            newest_sample_age_s=None,
            required_speedup=None,
        )

    if utilisation.error:
        return _unmeasured(utilisation.error)
    lookback_start = now - cost_cfg.lookback
    samples = _in_lookback(utilisation.samples, lookback_start, now)
    if not samples:
        return _unmeasured(
            "no GPU metrics in the lookback: is the GPU agent (CloudWatch agent nvidia_smi, "
            "Ops Agent, or guardian agent) running?"
        )
    period = timedelta(seconds=utilisation.period_s)
    age = now - samples[-1].at
    uptime = now - instance.launch_time
    # Coverage is the density of samples from when measuring began (the lookback start, the
    # launch, or an agent installed later) to now: gaps lower it, a recent install does not.
    began = max(lookback_start, instance.launch_time, samples[0].at)
    span = max(now - began + period, period)
    coverage = min(1.0, round(len(samples) * period / span, 3))
    if age > idle_cfg.max_staleness:
        return _unmeasured(
            f"newest GPU sample is {_minutes(age):g} min old (max_staleness "
            f"{_minutes(idle_cfg.max_staleness):g} min)",
            age_s=age.total_seconds(),
            coverage=coverage,
        )
    if coverage < idle_cfg.min_coverage:
        return _unmeasured(
            f"GPU metrics cover {coverage:.0%} of the last {_minutes(span):g} min "
            f"(need {idle_cfg.min_coverage:.0%})",
            age_s=age.total_seconds(),
            coverage=coverage,
        )

    # map/attrgetter/filter keep these passes in C: decide runs per instance per poll.
    utils = list(map(_UTIL, samples))
    total = sum(utils)
    if not math.isfinite(total):  # a NaN or infinite reading is no reading: keep it out of means
        utils = [u for u in utils if math.isfinite(u)]
        if not utils:
            return _unmeasured(
                "no GPU reading in the lookback is a number (NaN or infinite values only)",
                age_s=age.total_seconds(),
                coverage=coverage,
            )
        total = sum(utils)
    mems = list(map(_MEM, samples))
    mem_max = max(mems) if None not in mems else max(filter(_KNOWN, mems), default=None)
    mean_util = round(total / len(utils), 2)
    threshold_pct = idle_cfg.gpu_util_below
    run = trailing_idle_run(
        samples,
        threshold_pct=threshold_pct,
        released_below_mib=idle_cfg.released_below_mib,
        period=period,
        max_gap=max(idle_cfg.max_staleness, period * 2),
    )
    idle_minutes = _minutes(run.held)
    hourly = price.hourly_price
    wasted = round(run.held.total_seconds() / 3600 * hourly, 2) if hourly is not None else None

    reasons: list[str] = []
    if guard.problem:
        reasons.append(guard.problem)
    required_speedup: float | None = None
    if price.premium is not None and mean_util > 0:
        required_speedup = round(price.premium / (mean_util / 100), 2)

    def build(
        verdict: Verdict,
        action: str,
        window: timedelta | None = None,
        notebook_minutes: float | None = None,
    ) -> Decision:
        return Decision(
            verdict=verdict,
            reasons=tuple(reasons),
            action=action,
            idle_minutes=idle_minutes,
            wasted_usd=wasted,
            gpu_util_mean=mean_util,
            gpu_util_max=max(utils),
            gpu_mem_used_max_mib=mem_max,
            metric_coverage=coverage,
            newest_sample_age_s=age.total_seconds(),
            required_speedup=required_speedup,
            idle_window_minutes=_minutes(window) if window is not None else None,
            notebook_idle_minutes=notebook_minutes,
        )

    threshold = f"{threshold_pct:g}%"
    # History only lengthens the waits, so below the configured ones it cannot matter: skip
    # reading it (most polls of most instances end here).
    # window_released: 0s switches the released-memory shortcut off (never "stop at once").
    use_released = idle_cfg.window_released > timedelta(0) and run.released > timedelta(0)
    shortest = min(idle_cfg.window_released, idle_cfg.window) if use_released else idle_cfg.window
    # Each sample stands for one period; a stretch with fewer samples than the coverage rule
    # asks for is a guess, not a measurement (one datapoint per 10 minutes is not "idle for an
    # hour").
    run_coverage = run.samples * period / run.held if run.held > timedelta(0) else 0.0
    measured = run_coverage >= idle_cfg.min_coverage and uptime >= idle_cfg.min_uptime
    # The agent's evidence that a person left a notebook: every GPU-holding process an idle
    # kernel, no browser connected. It overrides the waits history would lengthen, never the
    # GPUs' own idle run: they must have been idle as long as the kernels.
    notebook_window = idle_cfg.window_notebook
    notebook_s = (
        notebook_idle_s(utilisation, samples[-1].at, now)
        if notebook_window > timedelta(0) and run.held >= notebook_window and measured
        else None
    )
    if notebook_s is not None and notebook_s >= notebook_window.total_seconds():
        notebook_minutes = round(notebook_s / 60, 1)
        reasons.append(
            f"notebook kernel idle for {notebook_minutes:.0f} min, no browser connected "
            f"(every GPU under {threshold} for {idle_minutes:g} min; "
            f"wait {_minutes(notebook_window):g} min)"
        )
        return build(Verdict.IDLE, _MODE_ACTION[config.mode], notebook_window, notebook_minutes)
    if timedelta(0) < run.held < shortest:
        reasons.append(
            f"GPUs under {threshold} for the last {idle_minutes:g} min "
            f"(not yet idle: wait at least {_minutes(shortest):g} min)"
        )
    elif run.held > timedelta(0):
        waits = _waits(samples, config)
        released_ok = use_released and run.released >= waits.released
        held_ok = run.held >= waits.held
        if (released_ok or held_ok) and run_coverage < idle_cfg.min_coverage:
            reasons.append(
                f"GPUs under {threshold} for {idle_minutes:g} min, but only {run_coverage:.0%} "
                f"of that stretch has samples (need {idle_cfg.min_coverage:.0%})"
            )
        elif (released_ok or held_ok) and uptime < idle_cfg.min_uptime:
            reasons.append(
                f"GPUs under {threshold} for {idle_minutes:g} min, but up only "
                f"{_minutes(uptime):g} min (min_uptime {_minutes(idle_cfg.min_uptime):g} min)"
            )
        elif released_ok or held_ok:
            if released_ok:
                window = waits.released
                reasons.append(
                    f"every GPU under {threshold} with memory released for "
                    f"{_minutes(run.released):g} min (wait {_minutes(window):g} min): "
                    "the job has ended"
                )
            else:
                window = waits.held
                reasons.append(
                    f"every GPU under {threshold} for {idle_minutes:g} min "
                    f"(wait {_minutes(window):g} min)"
                )
            reasons.extend(waits.reasons)
            return build(Verdict.IDLE, _MODE_ACTION[config.mode], window)
        else:
            wait = waits.released if use_released else waits.held
            reasons.append(
                f"GPUs under {threshold} for the last {idle_minutes:g} min "
                f"(not yet idle: wait {_minutes(min(wait, waits.held)):g} min)"
            )
            reasons.extend(waits.reasons)

    expected, tag_problem = speedup_override(instance.tags)
    if tag_problem:
        reasons.append(tag_problem)
    expected_speedup = expected if expected is not None else cost_cfg.expected_speedup
    if price.premium is None:
        reasons.append(f"cannot judge underuse: {price.reason or 'no price or CPU equivalent'}")
        return build(Verdict.BUSY, "none")
    low, high = cost_cfg.rule_of_thumb
    needs = (
        f"premium {price.premium:.2f}x over {price.cpu_equivalent.instance_type}"
        if price.cpu_equivalent
        else f"premium {price.premium:.2f}x"
    )
    if mean_util <= 0:
        reasons.append(f"GPU unused over the lookback; {needs} buys nothing")
        return build(Verdict.UNDERUSED, "report")
    assert required_speedup is not None  # premium and mean_util > 0 are known here
    if required_speedup > expected_speedup:
        reasons.append(
            f"mean GPU utilisation {mean_util:g}%: with {needs} the GPU must be "
            f"{required_speedup:g}x faster than CPU to pay off, more than the expected "
            f"{expected_speedup:g}x"
        )
        return build(Verdict.UNDERUSED, "report")
    reasons.append(
        f"mean GPU utilisation {mean_util:g}%, required speedup {required_speedup:g}x "
        f"(rule of thumb {low:g}-{high:g}x premium)"
    )
    return build(Verdict.BUSY, "none")
