"""GCP prices from the Cloud Billing Catalog API, as a ``price_refresh.PriceSource``.

Compute Engine prices most machine types by parts, and the catalogue lists the parts: a
per-vCPU-hour and a per-GiB-hour SKU for each machine family and region, and a per-GPU-hour SKU
for each accelerator. A type's price is rebuilt here exactly as Google bills it::

    vCPUs × family vCPU rate + GiB × family memory rate (+ GPUs × accelerator rate for A2/G2/A3)

for every machine shape the embedded catalog knows (``guardian/prices/data/prices-gcp.json``). N1
types stay GPU-free: an N1 VM with attached GPUs is priced by ``pricing.assess`` from the
accelerator prices refreshed here. A part that is missing leaves the type unpriced (unknown),
never guessed.

The SKU list (a few thousand entries) is read once per refresh and then cut by region.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from guardian.errors import ProviderError
from guardian.prices.assessment import TypePrice
from guardian.prices.catalog import RegionPrices, load_embedded
from guardian.prices.refresh import RefreshReport, default_regions, refresh
from guardian.providers.gcp.errors import map_google_error

if TYPE_CHECKING:
    from guardian.config import Config, GcpConfig
    from guardian.providers import Caller

__all__ = [
    "COMPUTE_ENGINE",
    "SOURCE_NAME",
    "GcpCatalogSource",
    "SkuRates",
    "accelerator_name",
    "parse_skus",
    "price_types",
    "refresh_gcp",
]

log = structlog.get_logger(__name__)

COMPUTE_ENGINE = "Compute Engine"
SOURCE_NAME = "gcp-billing-catalog"

# "N1 Predefined Instance Core running in Americas", "N2D AMD Instance Ram running in Iowa".
# Spot, commitment, custom, sole-tenant and extended-memory SKUs do not start this way.
_PART = re.compile(
    r"^(?P<family>[A-Z][A-Z0-9]*)(?: AMD| Intel| Arm)?(?: Predefined)? Instance "
    r"(?P<part>Core|Ram) running in "
)
_GPU = re.compile(r"^Nvidia (?P<model>.+?) GPU running in ")
# Catalogue wording → accelerator type name, where lowercasing and dashes do not give it.
_GPU_NAMES = {
    "H100 80GB": "nvidia-h100-80gb",
    "H100 80GB Mega": "nvidia-h100-mega-80gb",
    "H200 141GB": "nvidia-h200-141gb",
    "A100 80GB": "nvidia-a100-80gb",
    "Tesla A100": "nvidia-tesla-a100",
    "Tesla A100 80GB": "nvidia-a100-80gb",
}
# Memory SKUs are per GiB-hour; anything else would be mis-scaled, so it is skipped.
_UNITS = {"Core": "h", "Ram": "GiBy.h", "GPU": "h"}


def accelerator_name(model: str) -> str:
    """``Tesla T4`` → ``nvidia-tesla-t4``; ``L4`` → ``nvidia-l4``."""
    return _GPU_NAMES.get(model) or "nvidia-" + "-".join(model.lower().split())


@dataclass
class SkuRates:
    """On-demand USD rates by region: family vCPU-hour, family GiB-hour, GPU-hour."""

    vcpu: dict[str, dict[str, float]] = field(default_factory=dict)  # region → family → usd
    memory_gib: dict[str, dict[str, float]] = field(default_factory=dict)
    gpu: dict[str, dict[str, float]] = field(default_factory=dict)  # region → accelerator → usd
    skus_read: int = 0

    def regions(self) -> set[str]:
        return set(self.vcpu) | set(self.memory_gib) | set(self.gpu)


def _unit_price(sku: Any) -> tuple[str, float] | None:
    """(usage unit, USD per unit) of the SKU's current first tier; None if not usable."""
    if not sku.pricing_info:
        return None
    expression = sku.pricing_info[0].pricing_expression
    tiers = sorted(expression.tiered_rates, key=lambda t: t.start_usage_amount)
    if not tiers:
        return None
    money = tiers[0].unit_price
    if money.currency_code and money.currency_code != "USD":
        return None
    usd = round(money.units + money.nanos / 1e9, 9)
    return (expression.usage_unit, usd) if usd > 0 else None


def parse_skus(skus: Iterable[Any]) -> SkuRates:
    """Keep the on-demand per-vCPU, per-GiB and per-GPU Compute SKUs, by region."""
    rates = SkuRates()
    for sku in skus:
        rates.skus_read += 1
        category = sku.category
        if category.resource_family != "Compute" or category.usage_type != "OnDemand":
            continue
        description = sku.description
        part_match = _PART.match(description)
        gpu_match = _GPU.match(description) if category.resource_group == "GPU" else None
        if part_match:
            part, key = part_match["part"], part_match["family"].lower()
            table = rates.vcpu if part == "Core" else rates.memory_gib
        elif gpu_match and "Workstation" not in gpu_match["model"]:
            part, key, table = "GPU", accelerator_name(gpu_match["model"]), rates.gpu
        else:
            continue
        priced = _unit_price(sku)
        if priced is None or priced[0] != _UNITS[part]:
            log.debug("gcp_sku_skipped", description=description, unit=priced and priced[0])
            continue
        for region in sku.service_regions:
            table.setdefault(region, {})[key] = priced[1]
    return rates


def _family(machine_type: str) -> str:
    return machine_type.split("-", 1)[0]


def price_types(
    shapes: Mapping[str, TypePrice], rates: SkuRates, region: str
) -> dict[str, TypePrice]:
    """Every shape whose parts all have a rate in ``region``, priced as Google bills it."""
    vcpu, memory, gpu = (
        rates.vcpu.get(region, {}),
        rates.memory_gib.get(region, {}),
        rates.gpu.get(region, {}),
    )
    priced: dict[str, TypePrice] = {}
    for name, shape in shapes.items():
        family = _family(name)
        if family not in vcpu or family not in memory:
            continue
        usd = shape.vcpus * vcpu[family] + shape.memory_gib * memory[family]
        if shape.gpus:
            per_gpu = gpu.get((shape.gpu_model or "").lower())
            if per_gpu is None:
                continue  # its GPUs' price is unknown here: leave the type unpriced
            usd += shape.gpus * per_gpu
        priced[name] = TypePrice(
            name,
            shape.vcpus,
            shape.memory_gib,
            shape.gpus,
            shape.gpu_model,
            round(usd, 6),
            shape.gpu_memory_gib,
        )
    return priced


def _embedded_shapes() -> dict[str, TypePrice]:
    catalog = load_embedded()
    return {
        name: entry
        for by_type in catalog.types.get("gcp", {}).values()
        for name, entry in by_type.items()
    }


class GcpCatalogSource:
    """``PriceSource`` for GCP: the Compute Engine SKUs of the Cloud Billing Catalog API."""

    provider = "gcp"
    name = SOURCE_NAME

    def __init__(
        self,
        client: Any,
        shapes: Mapping[str, TypePrice] | None = None,
        close: Callable[[], None] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self._client = client
        self._close = close
        self._timeout_s = timeout_s  # one page's deadline; None: the library's default
        self._shapes = dict(shapes) if shapes is not None else _embedded_shapes()
        self._rates: SkuRates | None = None
        self.api_calls = 0

    @classmethod
    def from_config(cls, gcp: GcpConfig, caller: Caller = "interactive") -> GcpCatalogSource:
        """A CloudCatalogClient from ``gcp.credentials`` and ``gcp.billing_endpoint``."""
        from guardian.providers.gcp.clients import PATIENCE, GcpClients, resolve_credentials

        credentials, _ = resolve_credentials(gcp)
        clients = GcpClients(gcp, credentials)
        patience = PATIENCE[caller]
        return cls(
            clients.catalog(),
            close=clients.close,
            timeout_s=patience.connect_s + patience.read_s,
        )

    def close(self) -> None:
        if self._close is not None:
            self._close()

    def _timeout(self) -> dict[str, float]:
        return {} if self._timeout_s is None else {"timeout": self._timeout_s}

    def _service_name(self) -> str:
        services = self._client.list_services(request={"page_size": 200}, **self._timeout())
        for page in services.pages:
            self.api_calls += 1
            for service in page.services:
                if service.display_name == COMPUTE_ENGINE:
                    return str(service.name)
        raise ProviderError(
            f"Cloud Billing Catalog: no '{COMPUTE_ENGINE}' service is listed",
            provider="gcp",
            operation="cloudbilling.services.list",
        )

    def _all_rates(self) -> SkuRates:
        if self._rates is None:
            try:
                parent = self._service_name()
                pager = self._client.list_skus(
                    request={"parent": parent, "currency_code": "USD", "page_size": 5000},
                    **self._timeout(),
                )

                def skus() -> Iterable[Any]:
                    for page in pager.pages:
                        self.api_calls += 1
                        yield from page.skus

                self._rates = parse_skus(skus())
            except ProviderError:
                raise
            except Exception as exc:
                raise map_google_error(exc, "cloudbilling.skus.list") from exc
            log.info(
                "gcp_skus_read", skus=self._rates.skus_read, regions=len(self._rates.regions())
            )
        return self._rates

    def fetch_region(self, region: str, now: datetime) -> RegionPrices:
        rates = self._all_rates()
        types = price_types(self._shapes, rates, region)
        accelerators = dict(rates.gpu.get(region, {}))
        if not types and not accelerators:
            raise ProviderError(
                f"Cloud Billing Catalog: no on-demand Compute Engine prices for region {region}",
                provider="gcp",
                operation="cloudbilling.skus.list",
            )
        return RegionPrices("gcp", region, self.name, now, types, accelerators)


def refresh_gcp(
    config: Config,
    region_names: Sequence[str] | None,
    state_dir: Path,
    now: datetime,
    source: GcpCatalogSource | None = None,
) -> RefreshReport:
    """``prices refresh --provider gcp``: the shared ``refresh`` with our source."""
    wanted = list(region_names or default_regions("gcp", config, state_dir))
    if source is not None:
        return refresh(source, wanted, state_dir, now)
    own = GcpCatalogSource.from_config(config.gcp)
    try:
        return refresh(own, wanted, state_dir, now)
    finally:
        own.close()
