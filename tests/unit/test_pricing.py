"""``guardian.prices.assessment``: the pure assessment, on hand-made and embedded catalogs."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardian.model import CpuEquivalent, GpuInstance
from guardian.prices.assessment import (
    PriceCatalog,
    TypePrice,
    assess,
    cpu_equivalent,
    rule_of_thumb_reading,
)
from guardian.prices.catalog import load_embedded
from tests.clock import NOW

# Two labels that differ: the embedded list's, months old, and a refresh of the day.
CATALOG_SOURCE = f"catalog {(NOW - timedelta(days=150)).date()}"
REFRESHED_SOURCE = f"aws-pricing-api {NOW.date()}"

SMALL = PriceCatalog(
    types={
        "aws": {
            "us-east-1": {
                "g5.xlarge": TypePrice("g5.xlarge", 4, 16, 1, "A10G", 1.0),
                "m6i.xlarge": TypePrice("m6i.xlarge", 4, 16, 0, None, 0.2),
                "a1.xlarge": TypePrice("a1.xlarge", 4, 16, 0, None, 0.2),  # tie: name decides
                "c6i.xlarge": TypePrice("c6i.xlarge", 4, 8, 0, None, 0.17),  # too little memory
                "g4dn.xlarge": TypePrice("g4dn.xlarge", 4, 16, 1, "T4", 0.5),  # a GPU: never
                "x.unpriced": TypePrice("x.unpriced", 64, 512, 0, None, None),
            }
        },
        "gcp": {
            "us-central1": {
                "n1-standard-8": TypePrice("n1-standard-8", 8, 30, 0, None, 0.38),
                "e2-standard-8": TypePrice("e2-standard-8", 8, 32, 0, None, 0.268),
                "a2-highgpu-1g": TypePrice("a2-highgpu-1g", 12, 85, 1, "nvidia-tesla-a100", 3.67),
                "n2d-highmem-16": TypePrice("n2d-highmem-16", 16, 128, 0, None, 0.91),
            }
        },
    },
    accelerators={"gcp": {"us-central1": {"nvidia-tesla-t4": 0.35}}},
    source={"aws": CATALOG_SOURCE, "gcp": CATALOG_SOURCE},
    type_sources={"aws": {"us-east-1": {"g5.xlarge": REFRESHED_SOURCE}}},
)


def instance(**changes: object) -> GpuInstance:
    base = GpuInstance(
        provider="aws",
        account="123456789012",
        region="us-east-1",
        zone="us-east-1a",
        instance_id="i-1",
        instance_type="g5.xlarge",
        launch_time=NOW,
        gpu_count=1,
        gpu_model="A10G",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_known_type_gets_price_equivalent_premium_and_its_own_source() -> None:
    result = assess(SMALL, instance())
    assert result.hourly_price == 1.0
    # m6i and a1 tie at $0.20: the name breaks the tie, so the choice is stable.
    assert result.cpu_equivalent == CpuEquivalent("a1.xlarge", 0.2)
    assert result.premium == 5.0
    assert result.price_source == REFRESHED_SOURCE
    assert result.reason is None
    g4dn = assess(SMALL, instance(instance_type="g4dn.xlarge"))
    assert g4dn.price_source == CATALOG_SOURCE


def test_the_equivalent_skips_gpu_types_unpriced_types_and_too_small_ones() -> None:
    equivalent = cpu_equivalent(SMALL, "aws", "us-east-1", 4, 16)
    assert equivalent is not None
    assert equivalent.instance_type not in {"g4dn.xlarge", "c6i.xlarge"}
    assert cpu_equivalent(SMALL, "aws", "us-east-1", 4, 8) == CpuEquivalent("c6i.xlarge", 0.17)
    # Only the unpriced type is big enough: no equivalent, never a guess.
    assert cpu_equivalent(SMALL, "aws", "us-east-1", 64, 512) is None
    assert cpu_equivalent(SMALL, "aws", "eu-north-1", 4, 16) is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"instance_type": "g9.mega"}, "no price for g9.mega in us-east-1"),
        ({"region": "eu-north-1"}, "no aws prices for region eu-north-1"),
        ({"provider": "azure"}, "no azure prices for region us-east-1"),
        ({"instance_type": "x.unpriced"}, "no price for x.unpriced in us-east-1"),
    ],
)
def test_unknown_type_or_region_is_null_with_a_reason(
    changes: dict[str, object], reason: str
) -> None:
    result = assess(SMALL, instance(**changes))
    assert result.hourly_price is None
    assert result.premium is None
    assert result.cpu_equivalent is None
    assert result.reason is not None
    assert reason in result.reason


def test_gcp_n1_with_attached_gpus_is_the_machine_plus_the_gpus() -> None:
    vm = instance(
        provider="gcp",
        region="us-central1",
        instance_type="n1-standard-8",
        gpu_count=2,
        gpu_model="NVIDIA-TESLA-T4",  # case from the API does not matter
    )
    result = assess(SMALL, vm)
    assert result.hourly_price == pytest.approx(0.38 + 2 * 0.35)
    # The N1 machine itself is a candidate but E2 is cheaper; either way the premium counts the
    # GPUs, because the instance's price includes them and the equivalent's does not.
    assert result.cpu_equivalent == CpuEquivalent("e2-standard-8", 0.268)
    assert result.premium == round((0.38 + 0.70) / 0.268, 2)


def test_gcp_attached_gpu_without_a_price_is_null_with_a_reason() -> None:
    unknown_model = instance(
        provider="gcp", region="us-central1", instance_type="n1-standard-8", gpu_model="nvidia-x9"
    )
    result = assess(SMALL, unknown_model)
    assert result.hourly_price is None
    assert result.premium is None
    assert result.reason == "no price for nvidia-x9 in us-central1 in the catalog"
    no_model = replace(unknown_model, gpu_model=None)
    assert assess(SMALL, no_model).reason == "no price for its GPU in us-central1 in the catalog"


def test_gcp_bundled_gpu_types_are_not_charged_twice() -> None:
    vm = instance(
        provider="gcp",
        region="us-central1",
        instance_type="a2-highgpu-1g",
        gpu_model="nvidia-tesla-t4",  # even with a priced accelerator name, A2 includes its GPU
    )
    result = assess(SMALL, vm)
    assert result.hourly_price == 3.67
    assert result.cpu_equivalent == CpuEquivalent("n2d-highmem-16", 0.91)


def test_embedded_catalog_n1_t4_is_never_its_own_equivalent() -> None:
    catalog = load_embedded()
    for region in ("us-central1", "us-east1"):
        for shape in ("n1-standard-4", "n1-standard-8", "n1-highmem-16", "n1-highcpu-32"):
            vm = instance(
                provider="gcp",
                region=region,
                instance_type=shape,
                gpu_count=1,
                gpu_model="nvidia-tesla-t4",
            )
            result = assess(catalog, vm)
            assert result.hourly_price is not None
            assert result.cpu_equivalent is not None
            assert not result.cpu_equivalent.instance_type.startswith("n1-"), (region, shape)
            assert result.premium is not None
            assert result.premium > 1.0


def test_embedded_catalog_prices_common_instances() -> None:
    catalog = load_embedded()
    g5 = assess(catalog, instance())
    assert g5.hourly_price == 1.006
    assert g5.cpu_equivalent == CpuEquivalent("m6i.xlarge", 0.192)
    assert g5.premium == 5.24
    assert g5.price_source is not None
    assert g5.price_source.startswith("catalog ")
    europe = assess(catalog, instance(region="eu-west-1"))
    assert europe.hourly_price is not None
    assert europe.hourly_price > g5.hourly_price


@pytest.mark.parametrize(
    ("premium", "reading"),
    [(None, None), (1.99, "below"), (2.0, "within"), (2.5, "within"), (3.0, "within"),
     (3.01, "above")],
)  # fmt: skip
def test_rule_of_thumb_reading(premium: float | None, reading: str | None) -> None:
    assert rule_of_thumb_reading(premium, 2.0, 3.0) == reading


shapes = st.builds(
    TypePrice,
    instance_type=st.text(alphabet="abcdefgh.", min_size=1, max_size=8),
    vcpus=st.integers(1, 256).map(float),
    memory_gib=st.integers(1, 4096).map(float),
    gpus=st.integers(0, 2),
    hourly_usd=st.one_of(st.none(), st.floats(0.01, 100.0)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(shapes, max_size=25), st.integers(1, 256), st.integers(1, 4096))
def test_the_equivalent_is_the_cheapest_fitting_cpu_type(
    types: list[TypePrice], vcpus: int, memory: int
) -> None:
    by_name = {t.instance_type: t for t in types}
    catalog = PriceCatalog({"aws": {"r": by_name}})
    found = cpu_equivalent(catalog, "aws", "r", vcpus, memory)
    fitting = [
        t
        for t in by_name.values()
        if not t.gpus and t.hourly_usd is not None and t.vcpus >= vcpus and t.memory_gib >= memory
    ]
    if not fitting:
        assert found is None
        return
    assert found is not None
    assert found.hourly_price == min(t.hourly_usd or 0.0 for t in fitting)
    chosen = by_name[found.instance_type]
    assert chosen.gpus == 0
    assert chosen.vcpus >= vcpus
    assert chosen.memory_gib >= memory
