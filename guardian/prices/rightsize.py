"""Right-sizing, pure: the cheaper machine that would do an instance's measured work.

The catalog is the only source of shapes, prices and GPU throughput; the measurement is the
instance's ``GpuUtilisation`` over ``cost.lookback`` (per-GPU summaries and host series); the
time is an argument. Nothing here acts: a recommendation is advice (docs/rightsize.md).

The rule, for an instance that may be sized (``rightsize_block``):

1. **Measured need** (``measure_need``): the GPUs used — p95 utilisation at or above
   ``rightsize.gpu_busy_above``; a GPU that sent no utilisation counts as used — the peak GPU
   memory of a used GPU, the busiest used GPU's p95 (its work), host CPU (p99.5 of the per-period
   maxima, as Compute Optimizer's default) and host memory (its peak), where measured.
2. **The cheapest fitting type** in the same provider and region, cheaper than the current one,
   on the same host architecture, with at least the GPUs used; per GPU at least the peak memory
   × ``rightsize.headroom`` (never more than the current GPU holds: the job already ran in it);
   vCPUs and memory at least the measured need × headroom, capped at the current size, or the
   current size where not measured. The same GPU model does the same work per GPU; another model
   only where the catalog carries both (``data/gpu-models.json``), never of an older
   architecture, and only when the busiest GPU's work × headroom fits the candidate's share of
   the current GPU's dense FP16 TFLOPS *and* memory bandwidth.
3. **Move to CPU**: when the GPU does not earn its premium (verdict ``underused``), the CPU
   equivalent is offered too — as the recommendation itself where no GPU type fits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import pairwise

from guardian.config import Config
from guardian.model import (
    CpuMove,
    Decision,
    GpuInstance,
    GpuUtilisation,
    InstanceMetric,
    Point,
    PriceAssessment,
    Recommendation,
    Verdict,
)
from guardian.policy.owners import controller_label
from guardian.policy.tags import protection
from guardian.prices.assessment import PriceCatalog, TypePrice
from guardian.series import percentile

__all__ = [
    "HOST_CPU_PERCENTILE",
    "HOURS_PER_MONTH",
    "MeasuredNeed",
    "Sizing",
    "host_arch",
    "measure_need",
    "rightsize",
    "rightsize_block",
]

HOURS_PER_MONTH = 730  # as guardian.report.document: AWS and GCP bill a month as 730 hours
# Compute Optimizer's default CPU threshold: a few short spikes in a day do not set the size.
HOST_CPU_PERCENTILE = 99.5
_MIB_PER_GIB = 1024


@dataclass(frozen=True)
class MeasuredNeed:
    """What the instance was seen to use over the evidence window; None = not measured."""

    gpus: int  # the instance's GPUs
    gpus_used: int
    peak_gpu_mem_mib: float | None  # the largest peak of a used GPU
    gpu_work_pct: float | None  # the busiest used GPU's p95 utilisation
    host_cpu_pct: float | None  # p99.5 of the host CPU's per-period maxima
    host_mem_pct: float | None  # the host memory's peak
    window: timedelta  # from when measuring began (lookback start or launch) to now
    notes: tuple[str, ...] = ()  # what could not be seen, and what was assumed instead


@dataclass(frozen=True)
class Sizing:
    """A recommendation, or why there is none (``note``; None where there is nothing to say)."""

    recommendation: Recommendation | None = None
    note: str | None = None


def rightsize_block(
    instance: GpuInstance, decision: Decision, config: Config, now: datetime
) -> str | None:
    """Why this instance may not get a recommendation at all, or None when it may.

    The one place that says who is sized: an instance someone protects, one a controller owns
    (its type is the controller's to change: the launch template, the node pool), one in
    reserved capacity (paid for whatever runs), or one whose metrics are missing or too sparse,
    is shown with this mark and never given a recommendation.
    """
    guard = protection(instance.tags, now)
    if guard.protected:
        return "protected: not sized"
    owner = instance.managed_by
    if owner is not None:
        return f"managed by {controller_label(owner.kind)} {owner.name}: size it there, not here"
    if instance.reserved:
        return "in reserved capacity: its type is the reservation's, not sized"
    if decision.verdict is Verdict.UNMEASURED:
        return "no usable GPU metrics: not sized"
    coverage = decision.metric_coverage
    if coverage is None or coverage < config.idle.min_coverage:
        shown = "unknown" if coverage is None else f"{coverage:.0%}"
        return f"GPU metrics cover {shown} of the lookback (need {config.idle.min_coverage:.0%})"
    return None


@lru_cache(maxsize=4096)  # a handful of names, asked for every candidate of every instance
def host_arch(provider: str, instance_type: str) -> str:
    """``arm64`` or ``x86_64`` by the clouds' naming: an AWS family with a ``g`` after its
    generation (g5g, c7gn, m6gd, im4gn) runs on Graviton; GCP's t2a, c4a and a4x are Arm."""
    if provider == "aws":
        match = re.fullmatch(r"[a-z]+\d+([a-z]*)(?:-.*)?", instance_type.split(".", 1)[0])
        return "arm64" if match and "g" in match.group(1) else "x86_64"
    return "arm64" if instance_type.split("-", 1)[0] in {"t2a", "c4a", "a4x"} else "x86_64"


def _in_window(points: Sequence[Point], start: datetime, end: datetime) -> list[Point]:
    return [(at, value) for at, value in points if start <= at <= end and math.isfinite(value)]


def _coverage(points: Sequence[Point], window: timedelta) -> float:
    """The share of the window the points stand for, each worth the smallest step seen."""
    if len(points) < 2 or window <= timedelta(0):
        return 0.0
    times = sorted(at for at, _ in points)
    steps = [b - a for a, b in pairwise(times) if b > a]
    if not steps:
        return 0.0
    return min(1.0, len(times) * min(steps) / window)


def measure_need(
    instance: GpuInstance, utilisation: GpuUtilisation, config: Config, now: datetime
) -> MeasuredNeed:
    """The instance's measured need over ``cost.lookback`` (see the module's rule, step 1)."""
    start = now - config.cost.lookback
    began = max(start, instance.launch_time)
    window = max(now - began, timedelta(0))
    notes: list[str] = []
    known = [g for g in utilisation.gpus if g.util_p95_pct is not None]
    busy = [g for g in known if (g.util_p95_pct or 0.0) >= config.rightsize.gpu_busy_above]
    silent = max(0, instance.gpu_count - len(known))
    if silent:
        notes.append(f"{silent} GPU(s) sent no utilisation: counted as used")
    # With no GPU over the threshold the need is still one GPU: the busiest, the fullest.
    sizing = busy or known
    memories = [g.mem_peak_mib for g in sizing]
    peak_mem: float | None = None
    if sizing and not silent and None not in memories:
        peak_mem = max(m for m in memories if m is not None)
    work = max((g.util_p95_pct or 0.0 for g in sizing), default=None) if not silent else None
    idle_unused = [
        g
        for g in known
        if g not in busy and g.mem_peak_mib and g.mem_peak_mib >= config.idle.released_below_mib
    ]
    if busy and idle_unused:
        held = ", ".join(f"GPU {g.gpu} held {g.mem_peak_mib:,.0f} MiB" for g in idle_unused)
        notes.append(f"counted as unused under {config.rightsize.gpu_busy_above:g}% p95: {held}")
    cpu_pct = mem_pct = None
    series = utilisation.instance_series
    cpu = _in_window(series.get(InstanceMetric.HOST_CPU_PCT, ()), began, now)
    if _coverage(cpu, window) >= config.idle.min_coverage:
        cpu_pct = percentile((v for _, v in cpu), HOST_CPU_PERCENTILE)
    mem = _in_window(series.get(InstanceMetric.HOST_MEM_PCT, ()), began, now)
    if _coverage(mem, window) >= config.idle.min_coverage:
        mem_pct = max(v for _, v in mem)
    return MeasuredNeed(
        gpus=instance.gpu_count,
        gpus_used=len(busy) + silent,
        peak_gpu_mem_mib=peak_mem,
        gpu_work_pct=work,
        host_cpu_pct=cpu_pct,
        host_mem_pct=mem_pct,
        window=window,
        notes=tuple(notes),
    )


@dataclass(frozen=True)
class _Bounds:
    """What a candidate must have, derived once from the need and the current type."""

    gpus: int
    gpu_mem_mib: float  # per GPU
    vcpus: float
    memory_gib: float
    work_pct: float | None  # of the current GPU, with headroom; None: no cross-model move
    notes: tuple[str, ...]


def _host(
    size: float, pct: float | None, headroom: float, what: str, unit: str
) -> tuple[float, str | None]:
    if pct is None:
        return size, f"{what} not measured: kept {size:g} {unit}"
    return min(size, size * pct / 100 * headroom), None


def _bounds(need: MeasuredNeed, current: TypePrice, config: Config) -> _Bounds | None:
    headroom = config.rightsize.headroom
    current_mib = current.gpu_memory_gib * _MIB_PER_GIB if current.gpu_memory_gib else None
    notes = list(need.notes)
    if need.peak_gpu_mem_mib is not None:
        wanted = need.peak_gpu_mem_mib * headroom
        # The job already ran in the current GPU's memory: never ask for more than that.
        gpu_mem = min(wanted, current_mib) if current_mib is not None else wanted
    elif current_mib is not None:
        gpu_mem = current_mib
        notes.append(f"GPU memory not measured: kept {current.gpu_memory_gib:g} GiB per GPU")
    else:
        return None
    vcpus, vcpu_note = _host(current.vcpus, need.host_cpu_pct, headroom, "host CPU", "vCPUs")
    memory, mem_note = _host(current.memory_gib, need.host_mem_pct, headroom, "host memory", "GiB")
    notes += [n for n in (vcpu_note, mem_note) if n]
    work = None if need.gpu_work_pct is None else need.gpu_work_pct * headroom
    return _Bounds(max(1, need.gpus_used), gpu_mem, vcpus, memory, work, tuple(notes))


def _gpu_fits(
    catalog: PriceCatalog, current: TypePrice, candidate: TypePrice, bounds: _Bounds
) -> str | None:
    """None if the candidate's GPUs do the work, else a word for why not."""
    if candidate.gpu_model is None or candidate.gpu_memory_gib is None:
        return "unknown GPU"
    if candidate.gpu_memory_gib * _MIB_PER_GIB < bounds.gpu_mem_mib:
        return "GPU memory"
    ours, theirs = catalog.gpu_model(current.gpu_model), catalog.gpu_model(candidate.gpu_model)
    same = (ours is not None and ours == theirs) or (
        (current.gpu_model or "").lower() == candidate.gpu_model.lower()
    )
    if same:
        return None
    if ours is None or theirs is None or bounds.work_pct is None:
        return "no throughput to compare"
    if math.floor(theirs.compute_capability) < math.floor(ours.compute_capability):
        return "older GPU architecture"
    share = min(
        theirs.fp16_dense_tflops / ours.fp16_dense_tflops,
        theirs.memory_bandwidth_gbs / ours.memory_bandwidth_gbs,
    )
    return None if bounds.work_pct / 100 <= share else "GPU throughput"


def _cheapest_fit(
    catalog: PriceCatalog,
    instance: GpuInstance,
    current: TypePrice,
    hourly: float,
    bounds: _Bounds,
) -> TypePrice | None:
    arch = host_arch(instance.provider, instance.instance_type)
    best: TypePrice | None = None
    for candidate in catalog.types.get(instance.provider, {}).get(instance.region, {}).values():
        price = candidate.hourly_usd
        if (
            price is None
            or price >= hourly
            or candidate.instance_type == current.instance_type
            or candidate.gpus < bounds.gpus
            or candidate.vcpus < bounds.vcpus
            or candidate.memory_gib < bounds.memory_gib
            or host_arch(instance.provider, candidate.instance_type) != arch
            or _gpu_fits(catalog, current, candidate, bounds) is not None
        ):
            continue
        if best is None or (price, candidate.instance_type) < (
            best.hourly_usd or 0.0,
            best.instance_type,
        ):
            best = candidate
    return best


def _mib(value: float | None) -> str:
    return "not measured" if value is None else f"{value:,.0f} MiB"


def _hours(window: timedelta) -> float:
    return round(window.total_seconds() / 3600, 1)


def _resize_reason(need: MeasuredNeed, current: TypePrice, target: TypePrice, busy: float) -> str:
    gpus = f"{target.gpus}× {target.gpu_model} {target.gpu_memory_gib:g} GiB"
    parts = [
        f"{need.gpus_used} of {need.gpus} GPUs used (p95 >= {busy:g}%), peak GPU memory "
        f"{_mib(need.peak_gpu_mem_mib)}",
        f"{target.instance_type} has {gpus}, {target.vcpus:g} vCPUs, {target.memory_gib:g} GiB",
    ]
    if need.host_cpu_pct is not None:
        parts.append(f"host CPU p99.5 {need.host_cpu_pct:.0f}% of {current.vcpus:g} vCPUs")
    if need.host_mem_pct is not None:
        parts.append(f"host memory peak {need.host_mem_pct:.0f}% of {current.memory_gib:g} GiB")
    if (current.gpu_model or "").lower() != (target.gpu_model or "").lower():
        parts.append(
            f"busiest GPU p95 {need.gpu_work_pct or 0:.0f}% of a {current.gpu_model} fits a "
            f"{target.gpu_model} with headroom"
        )
    parts.append(f"over {_hours(need.window):g} h")
    return "; ".join(parts)


def _saving(hourly: float, target: float) -> float:
    return round((hourly - target) * HOURS_PER_MONTH, 2)


def _cpu_move(
    price: PriceAssessment, decision: Decision, hourly: float
) -> tuple[CpuMove, str] | None:
    """The CPU equivalent, when the GPU does not earn its premium (verdict underused)."""
    equivalent = price.cpu_equivalent
    if decision.verdict is not Verdict.UNDERUSED or equivalent is None:
        return None
    if equivalent.hourly_price >= hourly:
        return None
    move = CpuMove(
        equivalent.instance_type,
        equivalent.hourly_price,
        _saving(hourly, equivalent.hourly_price),
    )
    needs = (
        f"needs {decision.required_speedup:g}x the CPU's speed to pay off"
        if decision.required_speedup is not None
        else "unused over the lookback"
    )
    why = (
        f"the GPU does not earn its premium ({needs}): move to CPU {equivalent.instance_type} "
        f"if the work runs there"
    )
    return move, why


def rightsize(
    instance: GpuInstance,
    utilisation: GpuUtilisation,
    *,
    price: PriceAssessment,
    decision: Decision,
    catalog: PriceCatalog,
    config: Config,
    now: datetime,
) -> Sizing:
    """The recommendation for one instance, or why there is none."""
    block = rightsize_block(instance, decision, config, now)
    if block:
        return Sizing(note=block)
    current = catalog.lookup(instance.provider, instance.region, instance.instance_type)
    hourly = price.hourly_price
    if current is None or hourly is None:
        return Sizing(note=price.reason or "no price for the current type: not sized")
    cpu = _cpu_move(price, decision, hourly)
    need = measure_need(instance, utilisation, config, now)
    target: TypePrice | None = None
    bounds: _Bounds | None = None
    why_not: str
    if not current.gpus:
        why_not = "an N1 VM's GPUs are attached per VM, not a type in the catalog: not sized"
    elif not utilisation.gpus:
        why_not = "no per-GPU measurement from this source: not sized"
    else:
        bounds = _bounds(need, current, config)
        if bounds is None:
            why_not = "GPU memory neither measured nor in the catalog: not sized"
        else:
            target = _cheapest_fit(catalog, instance, current, hourly, bounds)
            why_not = (
                f"no cheaper type in {instance.region} has {bounds.gpus}+ GPUs with "
                f"{bounds.gpu_mem_mib:,.0f}+ MiB each, {bounds.vcpus:g}+ vCPUs and "
                f"{bounds.memory_gib:g}+ GiB"
            )
    notes = bounds.notes if bounds is not None else need.notes
    window_h = _hours(need.window)
    if target is not None and target.hourly_usd is not None:
        target_hourly = target.hourly_usd  # a GPU type's price includes its GPUs
        reason = _resize_reason(need, current, target, config.rightsize.gpu_busy_above)
        return Sizing(
            Recommendation(
                move="resize",
                instance_type=target.instance_type,
                hourly_price=target_hourly,
                saves_usd_month=_saving(hourly, target_hourly),
                gpus_used=need.gpus_used,
                peak_gpu_mem_mib=need.peak_gpu_mem_mib,
                reason="; ".join([reason, *notes]),
                not_measured=notes,
                window_hours=window_h,
                move_to_cpu=cpu[0] if cpu else None,
            )
        )
    if cpu is not None:
        move, why = cpu
        return Sizing(
            Recommendation(
                move="cpu",
                instance_type=move.instance_type,
                hourly_price=move.hourly_price,
                saves_usd_month=move.saves_usd_month,
                gpus_used=need.gpus_used,
                peak_gpu_mem_mib=need.peak_gpu_mem_mib,
                reason=f"{why}; {why_not}; over {window_h:g} h",
                not_measured=notes,
                window_hours=window_h,
            )
        )
    return Sizing(note=why_not)
