"""Prices and the 2–3× rule, pure: a catalog in, a ``PriceAssessment`` out.

The catalog itself is loaded by ``guardian.catalog`` (embedded dated JSON, overridden by a
refreshed cache). CPU equivalent: the cheapest type in the same region with no accelerator and
at least the GPU instance's vCPUs and memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from guardian.model import CpuEquivalent, GpuInstance, PriceAssessment

__all__ = ["PriceCatalog", "TypePrice", "assess", "cpu_equivalent"]


@dataclass(frozen=True)
class TypePrice:
    """One instance/machine type in one region: shape and on-demand Linux USD per hour."""

    instance_type: str
    vcpus: float
    memory_gib: float
    gpus: int = 0
    gpu_model: str | None = None
    hourly_usd: float | None = None  # None: shape known, price not (e.g. N1 priced per part)


@dataclass(frozen=True)
class PriceCatalog:
    """provider → region → type → TypePrice, plus GCP per-GPU attachment prices."""

    types: Mapping[str, Mapping[str, Mapping[str, TypePrice]]]
    # provider → region → accelerator type (e.g. nvidia-tesla-t4) → USD per GPU-hour
    accelerators: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=dict)
    source: Mapping[str, str] = field(default_factory=dict)  # provider → "catalog 2026-11-01"

    def lookup(self, provider: str, region: str, instance_type: str) -> TypePrice | None:
        return self.types.get(provider, {}).get(region, {}).get(instance_type)


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
    source = catalog.source.get(instance.provider)
    entry = catalog.lookup(instance.provider, instance.region, instance.instance_type)
    if entry is None:
        return PriceAssessment(
            None,
            None,
            None,
            None,
            f"no price for {instance.instance_type} in {instance.region} in the catalog",
        )
    hourly = _instance_hourly(catalog, instance, entry)
    if hourly is None:
        return PriceAssessment(
            None,
            None,
            None,
            None,
            f"no price for {instance.gpu_model or 'its GPU'} in {instance.region} in the catalog",
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
