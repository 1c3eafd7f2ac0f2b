"""Refresh the price cache from a provider's price API: today the AWS Price List API.

A ``PriceSource`` returns every price of one region; ``refresh`` asks it region by region and
writes the cache once, atomically. A region is all or nothing: if any page of it fails, that
region keeps its old cached prices (or the embedded ones), and the regions that succeeded are
still written. Access denied stops the whole refresh before anything is written: it would fail
the same way for every region. GCP (Cloud Billing Catalog) plugs in as a second ``PriceSource``
in ``source_for``.

boto3 is imported inside functions, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from guardian.errors import AuthError, GuardianError, ProviderError, Throttled, Unavailable
from guardian.prices.assessment import TypePrice
from guardian.prices.catalog import (
    CatalogError,
    PriceCache,
    RegionPrices,
    cache_path,
    load_embedded,
    merge,
    read_cache,
    regions,
    write_cache,
)

if TYPE_CHECKING:
    from mypy_boto3_pricing import PricingClient
    from mypy_boto3_pricing.type_defs import FilterTypeDef

    from guardian.config import Config

__all__ = [
    "AwsPricingSource",
    "PriceChange",
    "PriceSource",
    "RefreshReport",
    "RegionOutcome",
    "default_regions",
    "parse_ec2_product",
    "refresh",
    "source_for",
]

log = structlog.get_logger(__name__)

# The Price List API's own filter values for "Linux on-demand, shared tenancy, no extra
# software, a normal running instance" (capacitystatus Used excludes capacity reservations).
EC2_FILTERS: tuple[tuple[str, str], ...] = (
    ("operatingSystem", "Linux"),
    ("tenancy", "Shared"),
    ("preInstalledSw", "NA"),
    ("capacitystatus", "Used"),
)
PRICING_REGION = "us-east-1"  # the Price List API is served from us-east-1 (and two others)
PAGE_SIZE = 100  # GetProducts' maximum


class PriceSource(Protocol):
    """Every on-demand price of one region of one provider, read from that provider's API."""

    provider: str
    name: str

    def fetch_region(self, region: str, now: datetime) -> RegionPrices:
        """All prices of ``region``; raises a ``ProviderError`` if any part fails."""
        ...


# ---------------------------------------------------------------- AWS Price List API


def _gib(text: str) -> float | None:
    """``"1,152 GiB"`` → 1152.0; ``"NA"`` → None."""
    number = text.replace(",", "").split(" ", 1)[0]
    try:
        value = float(number)
    except ValueError:
        return None
    return value if value > 0 else None


def _hourly_usd(terms: Mapping[str, Any]) -> float | None:
    for offer in (terms.get("OnDemand") or {}).values():
        for dimension in (offer.get("priceDimensions") or {}).values():
            if dimension.get("unit") != "Hrs" or str(dimension.get("beginRange", "0")) != "0":
                continue
            try:
                usd = float(dimension["pricePerUnit"]["USD"])
            except (KeyError, TypeError, ValueError):
                continue
            if usd > 0:
                return usd
    return None


def parse_ec2_product(item: str | Mapping[str, Any]) -> TypePrice | None:
    """One PriceList document → the type's shape and on-demand Linux price, or None.

    None for anything that is not a plain running Linux on-demand instance hour (the server
    filters already exclude most; these checks keep a loosened filter from mixing prices in).
    """
    doc = json.loads(item) if isinstance(item, str) else item
    product = doc.get("product") or {}
    attributes: Mapping[str, str] = product.get("attributes") or {}
    if not str(product.get("productFamily", "")).startswith("Compute Instance"):
        return None
    expected = dict(EC2_FILTERS)
    if any(attributes.get(key) != value for key, value in expected.items()):
        return None
    if attributes.get("operation", "RunInstances") != "RunInstances":
        return None  # e.g. RunInstances:0004 is Linux with SQL Server: another price
    if attributes.get("marketoption", "OnDemand") != "OnDemand":
        return None
    name = attributes.get("instanceType")
    memory = _gib(attributes.get("memory", ""))
    try:
        vcpus = float(attributes.get("vcpu", ""))
    except ValueError:
        return None
    usd = _hourly_usd(doc.get("terms") or {})
    if not name or memory is None or vcpus <= 0 or usd is None:
        return None
    try:
        gpu_value = float(attributes.get("gpu", "0") or 0)
    except ValueError:
        gpu_value = 0.0
    # A fractional GPU (g6f) is still a GPU type: it must never count as a CPU equivalent.
    gpus = math.ceil(gpu_value) if gpu_value > 0 else 0
    return TypePrice(name, vcpus, memory, gpus, None, round(usd, 6))


def _family(instance_type: str) -> str:
    return instance_type.split(".", 1)[0]


def _cpu_families() -> frozenset[str]:
    """The CPU families the embedded AWS catalog uses as equivalents (m6i, c7i, ...)."""
    catalog = load_embedded()
    return frozenset(
        _family(name)
        for by_type in catalog.types.get("aws", {}).values()
        for name, entry in by_type.items()
        if not entry.gpus
    )


def _map_aws_error(exc: Exception, region: str) -> ProviderError:
    """botocore's exceptions → ours, one line each (the CLI prints the message)."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
    )

    where = f"AWS Price List API ({region})"
    kwargs = {"provider": "aws", "operation": "pricing:GetProducts"}
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", "")).splitlines()[0] if error.get("Message") else code
        if code in {
            "AccessDeniedException",
            "AccessDenied",
            "UnrecognizedClientException",
            "InvalidClientTokenId",
            "ExpiredToken",
            "ExpiredTokenException",
        }:
            return AuthError(f"{where}: {code}: {message} (needs pricing:GetProducts)", **kwargs)
        if code in {"ThrottlingException", "Throttling", "TooManyRequestsException"}:
            return Throttled(f"{where}: throttled: {message}", **kwargs)
        if code in {"InternalErrorException", "ServiceUnavailable", "InternalFailure"}:
            return Unavailable(f"{where}: {code}: {message}", **kwargs)
        return ProviderError(f"{where}: {code}: {message}", **kwargs)
    if isinstance(exc, NoCredentialsError):
        return AuthError(f"{where}: no AWS credentials found", **kwargs)
    if isinstance(exc, EndpointConnectionError):
        return Unavailable(f"{where}: cannot reach {exc.kwargs.get('endpoint_url')}", **kwargs)
    if isinstance(exc, BotoCoreError):
        return Unavailable(f"{where}: {exc}", **kwargs)
    return ProviderError(f"{where}: {type(exc).__name__}: {exc}", **kwargs)


@dataclass
class AwsPricingSource:
    """EC2 on-demand Linux prices from ``pricing:GetProducts``, one region per call.

    Keeps every type with a GPU (so new GPU families arrive without a code change) and the
    CPU families used as equivalents; everything else in the region is dropped.
    """

    client: PricingClient
    cpu_families: frozenset[str] = field(default_factory=_cpu_families)
    provider: str = "aws"
    name: str = "aws-pricing-api"

    @classmethod
    def from_environment(cls) -> AwsPricingSource:
        """A client from the standard AWS credential chain (``AWS_ENDPOINT_URL`` honoured)."""
        import boto3
        from botocore.config import Config as BotoConfig

        client = boto3.session.Session().client(
            "pricing",
            region_name=PRICING_REGION,
            config=BotoConfig(retries={"mode": "standard", "max_attempts": 5}, read_timeout=60),
        )
        return cls(client)

    def fetch_region(self, region: str, now: datetime) -> RegionPrices:
        filters: list[FilterTypeDef] = [
            {"Type": "TERM_MATCH", "Field": "regionCode", "Value": region}
        ]
        filters += [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in EC2_FILTERS]
        types: dict[str, TypePrice] = {}
        try:
            pages = self.client.get_paginator("get_products").paginate(
                ServiceCode="AmazonEC2",
                Filters=filters,
                FormatVersion="aws_v1",
                PaginationConfig={"PageSize": PAGE_SIZE},
            )
            for page in pages:
                for item in page.get("PriceList", []):
                    self._keep(types, parse_ec2_product(item))
        except Exception as exc:  # mapped to ours right here, at the edge
            if isinstance(exc, GuardianError):
                raise
            raise _map_aws_error(exc, region) from exc
        if not types:
            raise ProviderError(
                f"AWS Price List API ({region}): no EC2 Linux on-demand prices; "
                "is it a region code such as us-east-1?",
                provider="aws",
                operation="pricing:GetProducts",
            )
        return RegionPrices("aws", region, self.name, now, types)

    def _keep(self, types: dict[str, TypePrice], entry: TypePrice | None) -> None:
        if entry is None:
            return
        if not entry.gpus and _family(entry.instance_type) not in self.cpu_families:
            return
        previous = types.get(entry.instance_type)
        if previous is not None and previous.hourly_usd != entry.hourly_usd:
            # Two offers for one type should not survive the filters; keep the lower so the
            # premium is never overstated, and say so.
            log.warning(
                "price_ambiguous",
                instance_type=entry.instance_type,
                prices=[previous.hourly_usd, entry.hourly_usd],
            )
            if (previous.hourly_usd or 0.0) <= (entry.hourly_usd or 0.0):
                return
        types[entry.instance_type] = entry


# ---------------------------------------------------------------- choosing and running


def source_for(provider: str, config: Config) -> PriceSource:
    """The price API of ``provider``, built from the config (credentials, endpoints).

    GCP's is the Cloud Billing Catalog (``gcp.credentials``, ``gcp.billing_endpoint``).
    """
    if provider == "aws":
        return AwsPricingSource.from_environment()
    if provider == "gcp":
        from guardian.prices.refresh_gcp import GcpCatalogSource

        return GcpCatalogSource.from_config(config.gcp)
    raise GuardianError(f"prices refresh: unknown provider {provider!r}; use aws or gcp")


def default_regions(provider: str, config: Config, state_dir: Path | None) -> list[str]:
    """The configured AWS regions; with ``all`` (or for GCP) every region the catalog knows."""
    if provider == "aws" and isinstance(config.aws.regions, list):
        return list(config.aws.regions)
    known = set(regions(load_embedded(), provider))
    if state_dir is not None:
        try:
            cached = read_cache(cache_path(state_dir))
        except (OSError, CatalogError):
            cached = PriceCache()
        known |= {region for (p, region) in cached.regions if p == provider}
    return sorted(known)


@dataclass(frozen=True)
class PriceChange:
    provider: str
    region: str
    instance_type: str
    old_usd: float | None  # None: the type had no price before
    new_usd: float

    @property
    def relative(self) -> float | None:
        return None if self.old_usd is None else (self.new_usd - self.old_usd) / self.old_usd


@dataclass(frozen=True)
class RegionOutcome:
    region: str
    types: int
    new: int
    changed: int

    @property
    def unchanged(self) -> int:
        return self.types - self.new - self.changed


@dataclass(frozen=True)
class RefreshReport:
    provider: str
    source: str
    cache_path: Path
    outcomes: tuple[RegionOutcome, ...]
    changes: tuple[PriceChange, ...]
    failures: Mapping[str, str] = field(default_factory=dict)  # region → one-line reason
    moved_aside: Path | None = None  # an unreadable old cache, kept rather than overwritten

    def biggest_moves(self, limit: int = 5) -> list[PriceChange]:
        moved = [c for c in self.changes if c.relative is not None]
        moved.sort(key=lambda c: (-abs(c.relative or 0.0), c.region, c.instance_type))
        return moved[:limit]


def _check_writable(state_dir: Path) -> None:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GuardianError(
            f"cannot create the state dir {state_dir} for the price cache: "
            f"{exc.strerror or exc}; set state_dir in the config to a writable folder"
        ) from exc
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise GuardianError(
            f"cannot write the price cache in {state_dir}: permission denied; "
            "set state_dir in the config to a writable folder"
        )


def refresh(
    source: PriceSource, region_names: Sequence[str], state_dir: Path, now: datetime
) -> RefreshReport:
    """Fetch every region, then write the regions that succeeded into the cache at once."""
    path = cache_path(state_dir)
    _check_writable(state_dir)  # before any API call: fail fast, spend nothing
    moved_aside: Path | None = None
    try:
        old = read_cache(path)
        unreadable = False
    except CatalogError as exc:
        log.warning("price_cache_unreadable", path=str(path), error=str(exc))
        old, unreadable = PriceCache(), True
    except OSError as exc:
        raise GuardianError(f"cannot read the price cache {path}: {exc.strerror or exc}") from exc
    before = merge(old)

    fetched: dict[str, RegionPrices] = {}
    failures: dict[str, str] = {}
    for region in _unique(region_names):
        try:
            fetched[region] = source.fetch_region(region, now)
        except AuthError:
            raise  # the same for every region: stop before writing anything
        except ProviderError as exc:
            log.warning("price_refresh_failed", provider=source.provider, region=region)
            failures[region] = str(exc)

    outcomes: list[RegionOutcome] = []
    changes: list[PriceChange] = []
    for region, block in fetched.items():
        new = changed = 0
        for name, entry in sorted(block.types.items()):
            previous = before.lookup(source.provider, region, name)
            old_usd = previous.hourly_usd if previous is not None else None
            new_usd = entry.hourly_usd or 0.0
            if old_usd is None:
                new += 1
                changes.append(PriceChange(source.provider, region, name, None, new_usd))
            elif abs(old_usd - new_usd) > 1e-6:
                changed += 1
                changes.append(PriceChange(source.provider, region, name, old_usd, new_usd))
        outcomes.append(RegionOutcome(region, len(block.types), new, changed))

    if fetched:
        if unreadable:
            moved_aside = path.with_name(f"{path.name}.unreadable-{now:%Y%m%dT%H%M%SZ}")
            os.replace(path, moved_aside)  # keep it for a person to look at, never delete
        blocks = dict(old.regions)
        blocks.update({(source.provider, region): b for region, b in fetched.items()})
        write_cache(path, PriceCache(blocks))
    return RefreshReport(
        source.provider,
        source.name,
        path,
        tuple(outcomes),
        tuple(changes),
        failures,
        moved_aside,
    )


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
