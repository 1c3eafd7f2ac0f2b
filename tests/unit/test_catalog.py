"""The embedded price catalogs and ``catalog.load_catalog``: schema, coverage, plausibility."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import guardian.prices.catalog as catalog_module
from guardian.prices.assessment import TypePrice, cpu_equivalent
from guardian.prices.catalog import (
    CACHE_FILENAME,
    CatalogError,
    PriceCache,
    RegionPrices,
    _parse_embedded,
    embedded_as_of,
    load_catalog,
    load_embedded,
    read_cache,
    regions,
    source_date,
    write_cache,
)
from tests.clock import DAY, at

DATA = Path(catalog_module.__file__).parent / "data"
FETCHED = at(23)  # late in the day: the source is labelled with this UTC day
MONTHS_AGO = (DAY - timedelta(days=150)).date()


def _doc(provider: str) -> dict[str, Any]:
    return json.loads((DATA / f"prices-{provider}.json").read_text())


# ---------------------------------------------------------------- the files themselves


@pytest.mark.parametrize("provider", ["aws", "gcp"])
def test_file_is_dated_sourced_and_well_formed(provider: str) -> None:
    doc = _doc(provider)
    assert doc["schema_version"] == 1
    assert doc["provider"] == provider
    assert doc["currency"] == "USD"
    assert doc["unit"] == "hour"
    assert "Linux" in doc["source"] or "Compute Engine" in doc["source"]
    as_of = date.fromisoformat(doc["as_of"])
    assert date(2024, 1, 1) <= as_of <= datetime.now(UTC).date()
    assert embedded_as_of()[provider] == as_of
    for region, prices in doc["prices"].items():
        assert prices, region
        for name, usd in prices.items():
            shape = doc["shapes"][name]  # every priced type has a shape
            assert isinstance(usd, float | int), (region, name)
            assert usd > 0, (region, name)
            assert shape["vcpus"] > 0, name
            assert shape["memory_gib"] > 0, name
            if shape.get("gpus"):
                assert isinstance(shape["gpus"], int)
                assert shape["gpus"] > 0
                assert shape["gpu_model"], name
                assert shape["gpu_memory_gib"] > 0, name
    # No shape is dead weight: each one is priced somewhere.
    priced = {name for prices in doc["prices"].values() for name in prices}
    assert set(doc["shapes"]) == priced


@pytest.mark.parametrize("provider", ["aws", "gcp"])
def test_loader_accepts_the_shipped_files(provider: str) -> None:
    parsed = _parse_embedded(_doc(provider), provider)
    assert parsed.label == f"catalog {_doc(provider)['as_of']}"
    assert sum(len(by_type) for by_type in parsed.types.values()) > 100


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schema_version=2), "schema_version"),
        (lambda d: d.update(as_of="last week"), "as_of"),
        (lambda d: d.pop("source"), "source"),
        (lambda d: d["prices"]["us-east-1"].update({"g5.xlarge": 0}), "positive"),
        (lambda d: d["prices"]["us-east-1"].update({"g5.xlarge": -1.0}), "positive"),
        (lambda d: d["prices"]["us-east-1"].update({"g5.xlarge": True}), "positive"),
        (lambda d: d["prices"]["us-east-1"].update({"x9.huge": 1.0}), "no entry in shapes"),
        (lambda d: d["shapes"]["g5.xlarge"].update(vcpus=0), "vcpus"),
        (lambda d: d["shapes"]["g5.xlarge"].update(gpus=-1), "gpus"),
        (lambda d: d["shapes"]["g5.xlarge"].pop("memory_gib"), "memory_gib"),
    ],
)
def test_loader_rejects_broken_documents(mutate: Any, message: str) -> None:
    doc = _doc("aws")
    mutate(doc)
    with pytest.raises(CatalogError, match=message):
        _parse_embedded(doc, "aws")


AWS_GPU_FAMILIES = {"g4dn", "g4ad", "g5", "g5g", "g6", "g6e", "gr6", "p3", "p3dn", "p4d", "p5"}
AWS_CPU_SIZES = {
    "m6i": ["large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge",
            "24xlarge", "32xlarge", "metal"],
    "m7i": ["large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge",
            "24xlarge", "48xlarge", "metal-24xl", "metal-48xl"],
}  # fmt: skip
AWS_CPU_SIZES |= {"c6i": AWS_CPU_SIZES["m6i"], "r6i": AWS_CPU_SIZES["m6i"]}
AWS_CPU_SIZES |= {"c7i": AWS_CPU_SIZES["m7i"], "r7i": AWS_CPU_SIZES["m7i"]}


def test_aws_covers_the_gpu_families_and_every_size_of_the_cpu_families() -> None:
    catalog = load_embedded()
    aws = catalog.types["aws"]
    assert {"us-east-1", "us-west-2", "eu-west-1"} <= set(aws)
    families = {name.split(".")[0] for name in aws["us-east-1"] if aws["us-east-1"][name].gpus}
    assert families >= AWS_GPU_FAMILIES
    for region in ("us-east-1", "us-west-2", "eu-west-1"):
        for family, sizes in AWS_CPU_SIZES.items():
            for size in sizes:
                assert f"{family}.{size}" in aws[region], (region, family, size)
    # Known shapes, spot-checked against the EC2 documentation.
    assert aws["us-east-1"]["p5.48xlarge"].vcpus == 192
    assert aws["us-east-1"]["p5.48xlarge"].memory_gib == 2048
    assert aws["us-east-1"]["g4dn.12xlarge"].gpus == 4
    assert aws["us-east-1"]["g6e.xlarge"].memory_gib == 32


def test_aws_cpu_families_are_priced_linearly_by_size() -> None:
    # EC2 prices sizes of a family in proportion to vCPUs; a typo in one size breaks this.
    for region, by_type in load_embedded().types["aws"].items():
        per_vcpu: dict[str, set[float]] = {}
        for name, entry in by_type.items():
            family = name.split(".")[0]
            if entry.gpus or family not in AWS_CPU_SIZES:
                continue
            assert entry.hourly_usd is not None
            per_vcpu.setdefault(family, set()).add(round(entry.hourly_usd / entry.vcpus, 7))
        for family, rates in per_vcpu.items():
            assert len(rates) == 1, (region, family, rates)


def test_gcp_covers_accelerator_types_n1_shapes_and_cpu_families() -> None:
    gcp = load_embedded().types["gcp"]
    assert {"us-central1", "us-east1"} <= set(gcp)
    central = gcp["us-central1"]
    for name in ("a2-highgpu-1g", "a2-highgpu-8g", "a2-megagpu-16g", "g2-standard-4",
                 "g2-standard-96", "n1-standard-1", "n1-highmem-96", "n1-highcpu-2"):  # fmt: skip
        assert name in central, name
    for region in ("us-central1", "us-east1"):
        families = {name.rsplit("-", 1)[0] for name in gcp[region]}
        for family in ("n1-standard", "n1-highmem", "n1-highcpu"):
            assert family in families
        for family in ("n2", "n2d", "c3", "e2"):
            for kind in ("standard", "highmem", "highcpu"):
                assert f"{family}-{kind}" in families, (region, family, kind)
        assert all(not gcp[region][n].gpus for n in gcp[region] if n.startswith("n1-"))
    accelerators = load_embedded().accelerators["gcp"]
    assert {"nvidia-tesla-t4", "nvidia-tesla-v100", "nvidia-tesla-p100", "nvidia-tesla-p4",
            "nvidia-tesla-a100", "nvidia-l4"} <= set(accelerators["us-central1"])  # fmt: skip
    assert {"nvidia-tesla-t4", "nvidia-tesla-v100"} <= set(accelerators["us-east1"])
    # Shared-core E2 types burst on a fraction of a vCPU: no equivalent for sustained work.
    assert not {"e2-micro", "e2-small", "e2-medium"} & set(central)


def test_gcp_predefined_types_follow_the_unit_rates() -> None:
    doc = _doc("gcp")
    for region, rates in doc["unit_rates"].items():
        for name, usd in doc["prices"][region].items():
            family = name.split("-")[0]
            if family not in rates:
                continue
            shape = doc["shapes"][name]
            expected = (
                shape["vcpus"] * rates[family]["vcpu"]
                + shape["memory_gib"] * rates[family]["memory_gib"]
            )
            assert usd == pytest.approx(expected, abs=1e-5), (region, name)
    # A2 bundles its A100s: its price is the A100s plus vCPU and memory at the N1 rates.
    a100 = doc["accelerators"]["us-central1"]["nvidia-tesla-a100"]
    n1 = doc["unit_rates"]["us-central1"]["n1"]
    for name in ("a2-highgpu-1g", "a2-highgpu-8g", "a2-megagpu-16g"):
        shape = doc["shapes"][name]
        bundled = (
            shape["gpus"] * a100
            + shape["vcpus"] * n1["vcpu"]
            + shape["memory_gib"] * n1["memory_gib"]
        )
        assert doc["prices"]["us-central1"][name] == pytest.approx(bundled, abs=1e-5)


@pytest.mark.parametrize("provider", ["aws", "gcp"])
def test_every_gpu_type_finds_a_cpu_equivalent(provider: str) -> None:
    catalog = load_embedded()
    for region, by_type in catalog.types[provider].items():
        for entry in by_type.values():
            if not entry.gpus:
                continue
            equivalent = cpu_equivalent(catalog, provider, region, entry.vcpus, entry.memory_gib)
            assert equivalent is not None, (region, entry.instance_type)
            chosen = catalog.lookup(provider, region, equivalent.instance_type)
            assert chosen is not None
            assert chosen.gpus == 0
            assert chosen.vcpus >= entry.vcpus
            assert chosen.memory_gib >= entry.memory_gib
            assert entry.hourly_usd is not None
            premium = entry.hourly_usd / equivalent.hourly_price
            # A GPU type can be cheaper per vCPU than a CPU type (g5g vs c6i), never half price.
            assert 1.0 <= premium <= 12.0, (region, entry.instance_type, premium)


def test_g5_xlarge_premium_is_plausible_in_every_region() -> None:
    catalog = load_embedded()
    seen = 0
    for region, by_type in catalog.types["aws"].items():
        g5 = by_type.get("g5.xlarge")
        if g5 is None or g5.hourly_usd is None:
            continue
        seen += 1
        equivalent = cpu_equivalent(catalog, "aws", region, g5.vcpus, g5.memory_gib)
        assert equivalent is not None
        assert 2.0 <= g5.hourly_usd / equivalent.hourly_price <= 6.0, region
    assert seen >= 3


def test_regions_and_source_dates() -> None:
    catalog = load_embedded()
    assert "us-east-1" in regions(catalog, "aws")
    assert "us-central1" in regions(catalog, "gcp")
    assert regions(catalog, "azure") == []
    assert source_date(f"catalog {MONTHS_AGO:%Y-%m-%d}") == MONTHS_AGO
    assert source_date(f"aws-pricing-api {DAY:%Y-%m-%d}") == DAY.date()
    assert source_date("hand-made") is None
    assert source_date(None) is None


# ---------------------------------------------------------------- load_catalog and the cache


def _block(region: str = "us-east-1", **types: TypePrice) -> RegionPrices:
    return RegionPrices("aws", region, "aws-pricing-api", FETCHED, types)


def test_without_a_state_dir_or_cache_the_embedded_catalog_is_used(tmp_path: Path) -> None:
    for state_dir in (None, tmp_path, tmp_path / "missing"):
        catalog = load_catalog(state_dir)
        as_of = embedded_as_of()["aws"].isoformat()
        assert catalog.source["aws"] == f"catalog {as_of}"
        assert catalog.source_of("aws", "us-east-1", "g5.xlarge") == f"catalog {as_of}"
        assert catalog.lookup("aws", "us-east-1", "g5.xlarge") is not None


def test_cache_overrides_type_by_type_and_says_so(tmp_path: Path) -> None:
    embedded = load_embedded()
    write_cache(
        tmp_path / CACHE_FILENAME,
        PriceCache(
            {
                ("aws", "us-east-1"): _block(
                    **{
                        "g5.xlarge": TypePrice("g5.xlarge", 4, 16, 1, None, 0.9),
                        "p5en.48xlarge": TypePrice("p5en.48xlarge", 192, 2048, 8, None, 63.3),
                    }
                ),
                ("aws", "ap-south-1"): _block(
                    "ap-south-1", **{"m6i.large": TypePrice("m6i.large", 2, 8, 0, None, 0.101)}
                ),
            }
        ),
    )
    catalog = load_catalog(tmp_path)
    g5 = catalog.lookup("aws", "us-east-1", "g5.xlarge")
    assert g5 is not None
    assert g5.hourly_usd == 0.9
    # The Pricing API names no GPU model; the embedded one is kept for a known type.
    assert g5.gpu_model == "NVIDIA A10G"
    assert g5.gpu_memory_gib == 24
    assert catalog.source_of("aws", "us-east-1", "g5.xlarge") == f"aws-pricing-api {DAY.date()}"
    # Types the cache does not list keep their embedded price and source.
    g6 = catalog.lookup("aws", "us-east-1", "g6.xlarge")
    assert g6 == embedded.lookup("aws", "us-east-1", "g6.xlarge")
    assert catalog.source_of("aws", "us-east-1", "g6.xlarge") == embedded.source["aws"]
    new = catalog.lookup("aws", "us-east-1", "p5en.48xlarge")
    assert new is not None
    assert new.gpu_model is None
    assert new.gpus == 8
    assert "ap-south-1" in regions(catalog, "aws")
    assert catalog.lookup("gcp", "us-central1", "g2-standard-4") is not None


def test_the_loaded_catalog_follows_a_rewritten_cache(tmp_path: Path) -> None:
    path = tmp_path / CACHE_FILENAME
    one = {"g5.xlarge": TypePrice("g5.xlarge", 4, 16, 1, None, 0.9)}
    write_cache(path, PriceCache({("aws", "us-east-1"): _block(**one)}))
    first = load_catalog(tmp_path)
    assert load_catalog(tmp_path) is first  # unchanged file: not parsed again
    two = {"g5.xlarge": TypePrice("g5.xlarge", 4, 16, 1, None, 0.8)}
    write_cache(path, PriceCache({("aws", "us-east-1"): _block(**two)}))
    second = load_catalog(tmp_path)
    entry = second.lookup("aws", "us-east-1", "g5.xlarge")
    assert entry is not None
    assert entry.hourly_usd == 0.8


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        json.dumps({"schema_version": 99, "providers": {}}),
        json.dumps(
            {
                "schema_version": 1,
                "providers": {
                    "aws": {
                        "us-east-1": {
                            "source": "aws-pricing-api",
                            "fetched_at": f"{DAY:%Y-%m-%d}T00:00:00Z",
                            "types": {
                                "g5.xlarge": {
                                    "vcpus": 4,
                                    "memory_gib": 16,
                                    "gpus": 1,
                                    "usd_per_hour": -3,
                                }
                            },
                        }
                    }
                },
            }
        ),
        json.dumps(
            {
                "schema_version": 1,
                "providers": {
                    "aws": {
                        "us-east-1": {"source": "x", "fetched_at": f"{DAY:%Y-%m-%d}", "types": {}}
                    }
                },
            }
        ),
    ],
)
def test_a_corrupt_cache_is_one_warning_and_is_left_alone(tmp_path: Path, content: str) -> None:
    path = tmp_path / CACHE_FILENAME
    path.write_text(content)
    with capture_logs() as logs:
        catalog = load_catalog(tmp_path)
    assert catalog.lookup("aws", "us-east-1", "g5.xlarge") == load_embedded().lookup(
        "aws", "us-east-1", "g5.xlarge"
    )
    warnings = [e for e in logs if e["event"] == "price_cache_ignored"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert "\n" not in warnings[0]["error"]
    assert path.read_text() == content  # nothing deleted or rewritten


def test_an_unreadable_cache_falls_back_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / CACHE_FILENAME).mkdir()  # reading it fails even as root
    with capture_logs() as logs:
        catalog = load_catalog(tmp_path)
    assert catalog.lookup("aws", "us-east-1", "g5.xlarge") is not None
    assert [e["event"] for e in logs] == ["price_cache_ignored"]


def test_cache_round_trip_and_atomic_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sub" / CACHE_FILENAME
    cache = PriceCache(
        {
            ("aws", "us-east-1"): _block(
                **{"g5.xlarge": TypePrice("g5.xlarge", 4, 16, 1, "A10G", 1.006, 24.0)}
            ),
            ("gcp", "us-central1"): RegionPrices(
                "gcp",
                "us-central1",
                "cloud-billing-catalog",
                FETCHED,
                {"n1-standard-8": TypePrice("n1-standard-8", 8, 30, 0, None, 0.38)},
                {"nvidia-tesla-t4": 0.35},
            ),
        }
    )
    write_cache(path, cache)
    assert read_cache(path) == cache
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    before = path.read_text()

    def fail(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        write_cache(path, PriceCache())
    assert path.read_text() == before  # the old file is intact
    assert sorted(p.name for p in path.parent.iterdir()) == [CACHE_FILENAME]  # no temp left


def test_loading_takes_under_50_ms(tmp_path: Path) -> None:
    write_cache(
        tmp_path / CACHE_FILENAME,
        PriceCache({("aws", "us-east-1"): _block(**{
            f"m6i.x{i}": TypePrice(f"m6i.x{i}", 2, 8, 0, None, 0.1) for i in range(300)})}),
    )  # fmt: skip
    timings = []
    for _ in range(5):
        catalog_module._embedded.cache_clear()
        catalog_module._load.cache_clear()
        start = time.perf_counter()
        load_catalog(tmp_path)
        timings.append(time.perf_counter() - start)
    # The minimum of five cold loads: robust to a busy shared machine, still a real bound.
    assert min(timings) < 0.050, timings
