"""The AWS Price List API as a ``PriceSource``: every Linux on-demand EC2 price of a region.

boto3 is imported inside functions, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from guardian.errors import AuthError, GuardianError, ProviderError, Throttled, Unavailable
from guardian.prices.assessment import TypePrice
from guardian.prices.catalog import RegionPrices, load_embedded

if TYPE_CHECKING:
    from mypy_boto3_pricing import PricingClient
    from mypy_boto3_pricing.type_defs import FilterTypeDef

    from guardian.providers import Caller

__all__ = ["AwsPricingSource", "parse_ec2_product"]

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
    def from_environment(cls, caller: Caller = "interactive") -> AwsPricingSource:
        """A client from the standard AWS credential chain (``AWS_ENDPOINT_URL`` honoured)."""
        import boto3

        from guardian.providers.aws.clients import PATIENCE, boto_config

        client = boto3.session.Session().client(
            "pricing", region_name=PRICING_REGION, config=boto_config(PATIENCE[caller])
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
