"""Right-sizing's pure rule (guardian.prices.rightsize) against the embedded catalog: the cases
that must hold, and the properties that must hold for any measurement (hypothesis)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardian.config import Config, parse_config
from guardian.errors import ConfigError
from guardian.model import (
    Controller,
    Decision,
    GpuInstance,
    GpuSummary,
    GpuUtilisation,
    InstanceMetric,
    ManagedBy,
    Point,
    Verdict,
)
from guardian.prices import assess
from guardian.prices.assessment import PriceCatalog, TypePrice
from guardian.prices.catalog import load_embedded
from guardian.prices.gpu_models import GpuModelsError, parse_gpu_models
from guardian.prices.rightsize import HOURS_PER_MONTH, host_arch, measure_need, rightsize
from guardian.series import percentile, summarise_gpus
from tests.fake_provider import NOW

CATALOG = load_embedded()
LOOKBACK = timedelta(hours=2)
CONFIG = Config.model_validate({"cost": {"lookback": "2h"}})
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def instance(instance_type: str, provider: str = "aws", region: str = "us-east-1") -> GpuInstance:
    entry = CATALOG.lookup(provider, region, instance_type)
    assert entry is not None, instance_type
    return GpuInstance(
        provider=provider,
        account="123456789012" if provider == "aws" else "proj",
        region=region,
        zone=f"{region}a",
        instance_id=f"i-{instance_type}",
        instance_type=instance_type,
        launch_time=NOW - timedelta(days=3),
        gpu_count=entry.gpus,
        gpu_model=entry.gpu_model,
        name=instance_type,
    )


def decision(verdict: Verdict = Verdict.BUSY, coverage: float | None = 1.0) -> Decision:
    return Decision(
        verdict=verdict,
        reasons=(),
        action="none",
        idle_minutes=0.0,
        wasted_usd=0.0,
        gpu_util_mean=50.0,
        gpu_util_max=90.0,
        gpu_mem_used_max_mib=1000.0,
        metric_coverage=coverage,
        newest_sample_age_s=30.0,
        required_speedup=30.0 if verdict is Verdict.UNDERUSED else 2.0,
    )


def host(pct: float, step: timedelta = timedelta(minutes=5)) -> tuple[Point, ...]:
    count = int(LOOKBACK / step)
    return tuple((NOW - step * i, pct) for i in reversed(range(count)))


def measured(
    gpus: list[tuple[float | None, float | None]],
    cpu: float | None = None,
    mem: float | None = None,
) -> GpuUtilisation:
    """Per-GPU (p95, peak MiB) as the providers summarise them, and the host's percent."""
    series: dict[InstanceMetric, tuple[Point, ...]] = {}
    if cpu is not None:
        series[InstanceMetric.HOST_CPU_PCT] = host(cpu)
    if mem is not None:
        series[InstanceMetric.HOST_MEM_PCT] = host(mem, timedelta(minutes=1))
    return GpuUtilisation(
        gpus_reporting=len(gpus),
        instance_series=series,
        gpus=tuple(
            GpuSummary(str(i), p95, peak, 120 if p95 is not None else 0)
            for i, (p95, peak) in enumerate(gpus)
        ),
    )


def size(
    inst: GpuInstance,
    utilisation: GpuUtilisation,
    verdict: Verdict = Verdict.BUSY,
    config: Config = CONFIG,
    catalog: PriceCatalog = CATALOG,
) -> tuple[str | None, str | None]:
    sizing = rightsize(
        inst,
        utilisation,
        price=assess(catalog, inst),
        decision=decision(verdict),
        catalog=catalog,
        config=config,
        now=NOW,
    )
    rec = sizing.recommendation
    return (rec.instance_type if rec else None), sizing.note


# -- the measurement -------------------------------------------------------------------------


def test_percentile_is_nearest_rank_over_finite_values() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 95) == 95.0
    assert percentile([3.0, math.nan, 1.0, 2.0], 50) == 2.0
    assert percentile([math.nan], 95) is None
    assert percentile([7.0], 99.5) == 7.0


def test_each_gpu_is_summarised_while_reducing() -> None:
    t0 = NOW - timedelta(minutes=100)
    busy = [(t0 + timedelta(minutes=m), 90.0 if m < 96 else 0.0) for m in range(100)]
    quiet = [(t0 + timedelta(minutes=m), 3.0) for m in range(100)]
    mem = [(t0, 1000.0), (t0 + timedelta(minutes=1), 20_000.0)]
    summaries = summarise_gpus({"10": quiet, "2": busy}, {"2": mem})
    assert [s.gpu for s in summaries] == ["2", "10"]  # GPU order, not text order
    assert summaries[0] == GpuSummary("2", 90.0, 20_000.0, 100)
    assert summaries[1] == GpuSummary("10", 3.0, None, 100)


def test_a_gpu_that_sent_nothing_counts_as_used_and_hides_the_peak() -> None:
    inst = instance("g5.12xlarge")
    need = measure_need(inst, measured([(95.0, 9000.0), (0.0, 0.0), (0.0, 0.0)]), CONFIG, NOW)
    assert need.gpus_used == 2  # one busy, one silent
    assert need.peak_gpu_mem_mib is None
    assert need.gpu_work_pct is None
    assert need.notes == ("1 GPU(s) sent no utilisation: counted as used",)


def test_host_series_too_sparse_is_not_measured() -> None:
    inst = instance("g5.12xlarge")
    sparse = GpuUtilisation(
        gpus=(GpuSummary("0", 95.0, 9000.0, 120),),
        instance_series={InstanceMetric.HOST_CPU_PCT: ((NOW - timedelta(minutes=5), 3.0),)},
    )
    assert measure_need(inst, sparse, CONFIG, NOW).host_cpu_pct is None
    dense = measured([(95.0, 9000.0)], cpu=10.0, mem=20.0)
    need = measure_need(inst, dense, CONFIG, NOW)
    assert (need.host_cpu_pct, need.host_mem_pct) == (10.0, 20.0)


# -- the rule ---------------------------------------------------------------------------------


def test_without_host_metrics_the_host_size_is_kept_and_said() -> None:
    inst = instance("g5.12xlarge")
    one_busy = measured([(90.0, 12_000.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)])
    sizing = rightsize(
        inst,
        one_busy,
        price=assess(CATALOG, inst),
        decision=decision(),
        catalog=CATALOG,
        config=CONFIG,
        now=NOW,
    )
    rec = sizing.recommendation
    assert rec is not None
    # 48 vCPUs and 192 GiB kept: the smallest one-GPU g5 with that much is a g5.16xlarge.
    assert rec.instance_type == "g5.16xlarge"
    assert rec.not_measured == (
        "host CPU not measured: kept 48 vCPUs",
        "host memory not measured: kept 192 GiB",
    )
    assert "host memory not measured: kept 192 GiB" in rec.reason
    assert rec.saves_usd_month == round((5.672 - 4.096) * HOURS_PER_MONTH, 2)
    assert rec.window_hours == 2.0


def test_never_to_another_host_architecture_nor_an_older_gpu() -> None:
    # A T4 at 5 %: the Graviton g5g.xlarge (T4G) is cheaper, but arm64.
    assert host_arch("aws", "g5g.xlarge") == "arm64"
    assert host_arch("aws", "g4dn.xlarge") == "x86_64"
    assert host_arch("aws", "m7i-flex.large") == "x86_64"
    assert host_arch("gcp", "c4a-standard-8") == "arm64"
    chosen, _ = size(instance("g4dn.2xlarge"), measured([(5.0, 2000.0)], cpu=5.0, mem=10.0))
    assert chosen == "g4dn.xlarge"
    # An L40S barely working would fit a T4's throughput, but a T4 is an older architecture.
    chosen, _ = size(instance("g6e.2xlarge"), measured([(5.0, 2000.0)], cpu=5.0, mem=10.0))
    assert chosen == "g6.xlarge"


def test_busy_work_stays_on_a_gpu_that_can_carry_it() -> None:
    # 90 % of an L40S is more than an L4 or an A10G can do: nothing cheaper fits.
    chosen, note = size(instance("g6e.xlarge"), measured([(90.0, 10_000.0)], cpu=50.0, mem=50.0))
    assert chosen is None
    assert note is not None
    assert note.startswith("no cheaper type in us-east-1 has 1+ GPUs")


@pytest.mark.parametrize(
    ("tags", "verdict", "coverage", "note"),
    [
        ({"guardian:protect": "true"}, Verdict.PROTECTED, None, "protected: not sized"),
        ({}, Verdict.UNMEASURED, 0.9, "no usable GPU metrics: not sized"),
        ({}, Verdict.BUSY, 0.3, "GPU metrics cover 30% of the lookback (need 50%)"),
    ],
)
def test_who_is_not_sized_is_marked(
    tags: dict[str, str], verdict: Verdict, coverage: float | None, note: str
) -> None:
    inst = replace(instance("g5.12xlarge"), tags=tags)
    sizing = rightsize(
        inst,
        measured([(90.0, 1000.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)]),
        price=assess(CATALOG, inst),
        decision=decision(verdict, coverage),
        catalog=CATALOG,
        config=CONFIG,
        now=NOW,
    )
    assert sizing.recommendation is None
    assert sizing.note == note


@pytest.mark.parametrize(
    ("changes", "note"),
    [
        (
            {"managed_by": ManagedBy(Controller.AUTOSCALING_GROUP, "gpu-pool")},
            "managed by Auto Scaling group gpu-pool: size it there, not here",
        ),
        (
            {"reservation": "cr-0abc"},
            "in reserved capacity: its type is the reservation's, not sized",
        ),
    ],
)
def test_owned_and_reserved_instances_are_marked_not_sized(
    changes: dict[str, object], note: str
) -> None:
    # The same one-GPU-of-four box that is sized to a g5.2xlarge when it is nobody else's.
    inst = replace(instance("g5.12xlarge"), **changes)  # type: ignore[arg-type]
    sizing = rightsize(
        inst,
        measured([(90.0, 1000.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)], cpu=5.0, mem=10.0),
        price=assess(CATALOG, inst),
        decision=decision(),
        catalog=CATALOG,
        config=CONFIG,
        now=NOW,
    )
    assert sizing.recommendation is None
    assert sizing.note == note


def test_an_n1_vm_with_attached_gpus_gets_only_the_cpu_move() -> None:
    entry = CATALOG.lookup("gcp", "us-central1", "n1-standard-8")
    assert entry is not None
    inst = GpuInstance(
        "gcp",
        "proj",
        "us-central1",
        "us-central1-a",
        "123",
        "n1-standard-8",
        NOW - timedelta(days=3),
        1,
        "nvidia-tesla-t4",
        name="nb",
    )
    price = assess(CATALOG, inst)
    sizing = rightsize(
        inst,
        measured([(20.0, 3000.0)]),
        price=price,
        decision=decision(Verdict.UNDERUSED),
        catalog=CATALOG,
        config=CONFIG,
        now=NOW,
    )
    rec = sizing.recommendation
    assert rec is not None
    assert price.cpu_equivalent is not None
    assert (rec.move, rec.instance_type) == ("cpu", price.cpu_equivalent.instance_type)
    assert "N1 VM's GPUs are attached per VM" in rec.reason
    # Busy, it earns its premium: nothing to offer.
    assert size(inst, measured([(20.0, 3000.0)]))[0] is None


# -- properties -------------------------------------------------------------------------------

GPU_TYPES = sorted(
    (provider, region, name)
    for provider, region in (("aws", "us-east-1"), ("gcp", "us-central1"))
    for name, entry in CATALOG.types[provider][region].items()
    if entry.gpus and entry.hourly_usd is not None
)


@st.composite
def cases(draw: st.DrawFn) -> tuple[GpuInstance, GpuUtilisation, Config, Verdict]:
    provider, region, name = draw(st.sampled_from(GPU_TYPES))
    inst = instance(name, provider, region)
    entry = CATALOG.lookup(provider, region, name)
    assert entry is not None
    capacity = (entry.gpu_memory_gib or 24) * 1024
    per_gpu = st.tuples(
        st.one_of(st.none(), st.floats(0, 100), st.sampled_from([0.0, 9.99, 10.0, 100.0])),
        st.one_of(st.none(), st.floats(0, capacity)),
    )
    reporting = draw(st.integers(1, entry.gpus))
    gpus = draw(st.lists(per_gpu, min_size=reporting, max_size=reporting))
    cpu = draw(st.one_of(st.none(), st.floats(0, 100)))
    mem = draw(st.one_of(st.none(), st.floats(0, 100)))
    config = parse_config(
        {
            "cost": {"lookback": "2h"},
            "rightsize": {
                "headroom": draw(st.sampled_from([1.0, 1.25, 2.0, 3.0])),
                "gpu_busy_above": draw(st.sampled_from([1.0, 10.0, 50.0])),
            },
        }
    )
    verdict = draw(st.sampled_from([Verdict.BUSY, Verdict.UNDERUSED, Verdict.IDLE]))
    return inst, measured(gpus, cpu, mem), config, verdict


@SETTINGS
@given(cases())
def test_a_recommendation_is_cheaper_and_never_short_of_the_measured_need(
    case: tuple[GpuInstance, GpuUtilisation, Config, Verdict],
) -> None:
    inst, utilisation, config, verdict = case
    current = CATALOG.lookup(inst.provider, inst.region, inst.instance_type)
    price = assess(CATALOG, inst)
    assert current is not None
    assert price.hourly_price is not None
    sizing = rightsize(
        inst,
        utilisation,
        price=price,
        decision=decision(verdict),
        catalog=CATALOG,
        config=config,
        now=NOW,
    )
    rec = sizing.recommendation
    if rec is None:
        assert sizing.note
        return
    # Never more expensive, and the saving is the difference over a month.
    assert rec.hourly_price < price.hourly_price
    assert rec.saves_usd_month == round((price.hourly_price - rec.hourly_price) * 730, 2)
    busy = config.rightsize.gpu_busy_above
    used = sum(1 for g in utilisation.gpus if (g.util_p95_pct or 0) >= busy and g.util_p95_pct)
    assert rec.gpus_used >= used
    assert rec.gpus_used >= used + inst.gpu_count - len(utilisation.gpus)
    target = CATALOG.lookup(inst.provider, inst.region, rec.instance_type)
    assert target is not None
    if rec.move == "cpu":
        assert target.gpus == 0
        assert verdict is Verdict.UNDERUSED
        return
    headroom = config.rightsize.headroom
    # Never fewer GPUs than used; never less GPU memory than the peak with headroom, unless the
    # candidate holds as much per GPU as the current GPU did (which held the peak).
    assert target.gpus >= max(1, rec.gpus_used)
    assert target.gpu_memory_gib is not None
    assert current.gpu_memory_gib is not None
    target_mib, current_mib = target.gpu_memory_gib * 1024, current.gpu_memory_gib * 1024
    if rec.peak_gpu_mem_mib is not None:
        assert target_mib >= rec.peak_gpu_mem_mib * headroom or target_mib >= current_mib
    else:
        assert target_mib >= current_mib
    # Host: the measured need with headroom (at most the current size), else the current size.
    cpu = utilisation.instance_series.get(InstanceMetric.HOST_CPU_PCT)
    mem = utilisation.instance_series.get(InstanceMetric.HOST_MEM_PCT)
    need_cpu = current.vcpus * (min(1.0, cpu[0][1] / 100 * headroom) if cpu else 1.0)
    need_mem = current.memory_gib * (min(1.0, mem[0][1] / 100 * headroom) if mem else 1.0)
    assert target.vcpus >= need_cpu - 1e-9
    assert target.memory_gib >= need_mem - 1e-9
    assert host_arch(inst.provider, rec.instance_type) == host_arch(
        inst.provider, inst.instance_type
    )
    ours, theirs = CATALOG.gpu_model(current.gpu_model), CATALOG.gpu_model(target.gpu_model)
    if ours != theirs:
        assert ours is not None
        assert theirs is not None
        assert math.floor(theirs.compute_capability) >= math.floor(ours.compute_capability)


# -- the table and the config ------------------------------------------------------------------


def test_every_catalog_gpu_model_has_a_sourced_throughput_but_the_named_exceptions() -> None:
    models = {
        entry.gpu_model
        for provider in CATALOG.types.values()
        for region in provider.values()
        for entry in region.values()
        if entry.gpu_model
    }
    models |= set(CATALOG.accelerators.get("gcp", {}).get("us-central1", {}))
    missing = {m for m in models if CATALOG.gpu_model(m) is None}
    assert missing == {"AMD Radeon Pro V520", "nvidia-tesla-p4"}  # named in the file's notes
    assert all(m.source for m in CATALOG.gpu_models.values())


def test_a_bad_throughput_entry_names_itself() -> None:
    doc = {
        "schema_version": 1,
        "models": {"X1": {"aliases": [], "fp16_dense_tflops": -1, "source": "s"}},
    }
    with pytest.raises(GpuModelsError, match=r"models\.X1\.fp16_dense_tflops"):
        parse_gpu_models(json.loads(json.dumps(doc)))
    clash = {
        "schema_version": 1,
        "models": {
            name: {
                "aliases": ["NVIDIA Z"],
                "fp16_dense_tflops": 1,
                "memory_bandwidth_gbs": 1,
                "compute_capability": 8.0,
                "source": "s",
            }
            for name in ("A", "B")
        },
    }
    with pytest.raises(GpuModelsError, match="'NVIDIA Z' also names A"):
        parse_gpu_models(clash)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("headroom", 0.9, "rightsize.headroom: 0.9 is not between 1 and 3: a multiplier"),
        ("headroom", 3.5, "rightsize.headroom: 3.5 is not between 1 and 3"),
        ("gpu_busy_above", 0, "rightsize.gpu_busy_above: 0 is not between 1 and 100: percent"),
        ("gpu_busy_above", 101, "rightsize.gpu_busy_above: 101 is not between 1 and 100"),
        ("gpu_busy_above", "lots", "rightsize.gpu_busy_above: Input should be a valid number"),
        ("spare", 1, "rightsize.spare: unknown key"),
    ],
)
def test_rightsize_keys_are_bounded_with_a_reason(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"rightsize": {key: value}})
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_type_with_unknown_gpu_memory_is_never_a_candidate() -> None:
    region = dict(CATALOG.types["aws"]["us-east-1"])
    region["g9.xlarge"] = TypePrice("g9.xlarge", 64, 512, 4, "NVIDIA A10G", 0.01, None)
    catalog = replace(CATALOG, types={**CATALOG.types, "aws": {"us-east-1": region}})
    chosen, _ = size(
        instance("g5.12xlarge"),
        measured([(90.0, 1000.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)]),
        catalog=catalog,
    )
    assert chosen == "g5.16xlarge"
    assert datetime.min.replace(tzinfo=NOW.tzinfo) < NOW
