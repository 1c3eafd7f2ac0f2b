"""Prices and the 2–3× rule, pure: a catalog in, a ``PriceAssessment`` out.

The catalog itself is loaded by ``guardian.prices.catalog`` (embedded dated JSON, overridden by a
refreshed cache). CPU equivalent: the cheapest type in the same region with no accelerator and
at least the GPU instance's vCPUs and memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from guardian.model import CpuEquivalent, GpuInstance, PriceAssessment

__all__ = [
    "GpuModel",
    "PriceCatalog",
    "RuleOfThumb",
    "TypePrice",
    "assess",
    "cpu_equivalent",
    "rule_of_thumb_reading",
]

RuleOfThumb = Literal["below", "within", "above"]


@dataclass(frozen=True)
class TypePrice:
    """One instance/machine type in one region: shape and on-demand Linux USD per hour."""

    instance_type: str
    vcpus: float
    memory_gib: float
    gpus: int = 0
    gpu_model: str | None = None
    hourly_usd: float | None = None  # None: shape known, price not (e.g. N1 priced per part)
    gpu_memory_gib: float | None = None  # per GPU; display only


@dataclass(frozen=True)
class GpuModel:
    """One GPU model's throughput from its datasheet (``data/gpu-models.json``)."""

    name: str
    fp16_dense_tflops: float
    memory_bandwidth_gbs: float
    compute_capability: float  # NVIDIA's; the major version is the architecture generation
    source: str


@dataclass(frozen=True)
class PriceCatalog:
    """provider → region → type → TypePrice, plus GCP per-GPU attachment prices."""

    types: Mapping[str, Mapping[str, Mapping[str, TypePrice]]]
    # provider → region → accelerator type (e.g. nvidia-tesla-t4) → USD per GPU-hour
    accelerators: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=dict)
    source: Mapping[str, str] = field(default_factory=dict)  # provider → "catalog 2026-11-01"
    # provider → region → type → source, where an entry came from elsewhere than ``source``
    # (a refreshed cache overrides the embedded catalog type by type).
    type_sources: Mapping[str, Mapping[str, Mapping[str, str]]] = field(default_factory=dict)
    # GPU model alias (lower case, e.g. "nvidia a10g", "nvidia-l4") → throughput, for moves
    # between models; a model not in it is only ever compared with itself.
    gpu_models: Mapping[str, GpuModel] = field(default_factory=dict)

    def lookup(self, provider: str, region: str, instance_type: str) -> TypePrice | None:
        return self.types.get(provider, {}).get(region, {}).get(instance_type)

    def gpu_model(self, name: str | None) -> GpuModel | None:
        return self.gpu_models.get(name.lower()) if name else None

    def source_of(self, provider: str, region: str, instance_type: str) -> str | None:
        """Where this one price came from: the entry's own source, else the provider's."""
        specific = self.type_sources.get(provider, {}).get(region, {}).get(instance_type)
        return specific or self.source.get(provider)


def cpu_equivalent(
    catalog: PriceCatalog, provider: str, region: str, vcpus: float, memory_gib: float
) -> CpuEquivalent | None:
    """The cheapest accelerator-free type with at least these vCPUs and this memory."""
    best: TypePrice | None = None
    for candidate in catalog.types.get(provider, {}).get(region, {}).values():
        if candidate.gpus or candidate.hourly_usd is None:
            continue
        if candidate.vcpus < vcpus or candidate.memory_gib < memory_gib:
            continue
        if best is None or (candidate.hourly_usd, candidate.instance_type) < (
            best.hourly_usd or 0.0,
            best.instance_type,
        ):
            best = candidate
    if best is None or best.hourly_usd is None:
        return None
    return CpuEquivalent(best.instance_type, best.hourly_usd)


def _instance_hourly(
    catalog: PriceCatalog, instance: GpuInstance, entry: TypePrice
) -> float | None:
    """The instance's own price: the type's, or (GCP N1 and friends) machine + attached GPUs."""
    if entry.gpus or entry.hourly_usd is None or instance.provider != "gcp":
        return entry.hourly_usd
    model = (instance.gpu_model or "").lower()
    per_gpu = catalog.accelerators.get(instance.provider, {}).get(instance.region, {}).get(model)
    if per_gpu is None:
        return None
    return round(entry.hourly_usd + per_gpu * instance.gpu_count, 4)


def assess(catalog: PriceCatalog, instance: GpuInstance) -> PriceAssessment:
    """Price, CPU equivalent and premium of one instance; None with a reason where unknown."""
    source = catalog.source_of(instance.provider, instance.region, instance.instance_type)
    entry = catalog.lookup(instance.provider, instance.region, instance.instance_type)
    if entry is None:
        known_region = instance.region in catalog.types.get(instance.provider, {})
        return PriceAssessment(
            None,
            None,
            None,
            None,
            f"no price for {instance.instance_type} in {instance.region} in the catalog"
            if known_region
            else f"no {instance.provider} prices for region {instance.region} in the catalog",
        )
    hourly = _instance_hourly(catalog, instance, entry)
    if hourly is None:
        missing = (
            instance.instance_type
            if entry.hourly_usd is None
            else (instance.gpu_model or "its GPU")
        )
        return PriceAssessment(
            None, None, None, None, f"no price for {missing} in {instance.region} in the catalog"
        )
    equivalent = cpu_equivalent(
        catalog, instance.provider, instance.region, entry.vcpus, entry.memory_gib
    )
    if equivalent is None:
        return PriceAssessment(
            hourly,
            source,
            None,
            None,
            f"no CPU type in {instance.region} with >= {entry.vcpus:g} vCPU and "
            f">= {entry.memory_gib:g} GiB",
        )
    premium = round(hourly / equivalent.hourly_price, 2)
    return PriceAssessment(hourly, source, equivalent, premium)


def rule_of_thumb_reading(premium: float | None, low: float, high: float) -> RuleOfThumb | None:
    """Where a premium falls against the 2–3× rule: below, within or above [low, high]."""
    if premium is None:
        return None
    if premium < low:
        return "below"
    return "within" if premium <= high else "above"
