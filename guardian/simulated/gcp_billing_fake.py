"""A gRPC fake of the Cloud Billing Catalog API (``CloudCatalog.ListServices`` / ``ListSkus``).

Serves a small but realistic Compute Engine SKU list — per-vCPU and per-GiB SKUs by machine
family, per-GPU SKUs, and the SKUs a parser must skip (Spot, commitments, custom, sole tenancy,
licences) — with paging, to the real ``google-cloud-billing`` client over an insecure channel.
Prices are the public us-central1 list prices the embedded catalog was compiled from.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from guardian.simulated.gcp_grpc import FakeGrpcServer, unary

__all__ = [
    "COMPUTE_ENGINE_SERVICE_ID",
    "FakeBillingServer",
    "FakeBillingState",
    "FakeSku",
    "default_compute_skus",
]

COMPUTE_ENGINE_SERVICE_ID = "6F81-5844-456A"
AMERICAS = ("us-central1", "us-east1", "us-east4", "us-west1")


@dataclass(frozen=True)
class FakeSku:
    description: str
    resource_group: str  # CPU, RAM, GPU, N1Standard, ...
    usage_unit: str  # h, GiBy.h
    usd: float
    regions: tuple[str, ...] = AMERICAS
    usage_type: str = "OnDemand"  # OnDemand, Preemptible, Commit1Yr
    resource_family: str = "Compute"
    sku_id: str = ""


def _core_ram(family: str, vcpu: float, gib: float, group: str, amd: bool = False) -> list[FakeSku]:
    infix = " AMD" if amd else ""
    name = f"{family}{infix}" + (" Predefined" if family == "N1" else "")
    return [
        FakeSku(f"{name} Instance Core running in Americas", group, "h", vcpu),
        FakeSku(f"{name} Instance Ram running in Americas", group, "GiBy.h", gib),
    ]


def default_compute_skus() -> list[FakeSku]:
    skus = [
        *_core_ram("N1", 0.031611, 0.004237, "N1Standard"),
        *_core_ram("N2", 0.031611, 0.004237, "CPU"),
        *_core_ram("N2D", 0.027502, 0.003686, "CPU", amd=True),
        *_core_ram("E2", 0.021811, 0.002923, "CPU"),
        *_core_ram("C3", 0.03398, 0.00455, "CPU"),
        *_core_ram("A2", 0.031611, 0.004237, "CPU"),
        *_core_ram("G2", 0.02495, 0.00292688, "CPU"),
        FakeSku("Nvidia Tesla T4 GPU running in Americas", "GPU", "h", 0.35),
        FakeSku("Nvidia Tesla V100 GPU running in Americas", "GPU", "h", 2.48),
        FakeSku("Nvidia Tesla P100 GPU running in Americas", "GPU", "h", 1.46),
        FakeSku("Nvidia Tesla P4 GPU running in Americas", "GPU", "h", 0.60),
        FakeSku("Nvidia Tesla A100 GPU running in Americas", "GPU", "h", 2.933908),
        FakeSku("Nvidia L4 GPU running in Americas", "GPU", "h", 0.5602),
        FakeSku("Nvidia H100 80GB GPU running in Americas", "GPU", "h", 9.7965, ("us-central1",)),
        # What a parser must not take for an on-demand price:
        FakeSku(
            "Spot Preemptible Nvidia Tesla T4 GPU running in Americas",
            "GPU",
            "h",
            0.14,
            usage_type="Preemptible",
        ),
        FakeSku("Nvidia Tesla T4 Virtual Workstation GPU running in Americas", "GPU", "h", 0.55),
        FakeSku(
            "Commitment v1: Nvidia Tesla T4 GPU running in Americas for 1 Year",
            "GPU",
            "h",
            0.22,
            usage_type="Commit1Yr",
        ),
        FakeSku(
            "Spot Preemptible N1 Predefined Instance Core running in Americas",
            "N1Standard",
            "h",
            0.00698,
            usage_type="Preemptible",
        ),
        FakeSku("Custom Instance Core running in Americas", "CPU", "h", 0.033174),
        FakeSku("Sole Tenancy Instance Core running in Americas", "CPU", "h", 0.034773),
        FakeSku(
            "Licensing Fee for Windows Server 2022 on VM with 8 VCPU",
            "",
            "h",
            0.368,
            resource_family="License",
        ),
        FakeSku(
            "Network Internet Egress from Americas to Americas",
            "PremiumInternetEgress",
            "GiBy",
            0.12,
            resource_family="Network",
        ),
        # Europe: only N1 and T4, so a region without a family stays unpriced, not guessed.
        FakeSku(
            "N1 Predefined Instance Core running in Netherlands",
            "N1Standard",
            "h",
            0.034773,
            ("europe-west4",),
        ),
        FakeSku(
            "N1 Predefined Instance Ram running in Netherlands",
            "N1Standard",
            "GiBy.h",
            0.004661,
            ("europe-west4",),
        ),
        FakeSku("Nvidia Tesla T4 GPU running in Netherlands", "GPU", "h", 0.35, ("europe-west4",)),
    ]
    return [
        FakeSku(**{**sku.__dict__, "sku_id": sku.sku_id or f"{index:04X}-{index * 7:04X}-F00D"})
        for index, sku in enumerate(skus, start=1)
    ]


@dataclass(frozen=True)
class RecordedCall:
    method: str
    parent: str
    page_token: str
    page_size: int
    currency_code: str


@dataclass
class FakeBillingState:
    skus: list[FakeSku] = field(default_factory=default_compute_skus)
    other_services: tuple[tuple[str, str], ...] = (
        ("95FF-2EF5-5EA1", "Cloud Storage"),
        ("58CD-E7C3-72CA", "Cloud Monitoring"),
    )
    page_size: int = 10
    fail: tuple[str, str] | None = None  # (grpc StatusCode name, message) for every call
    calls: list[RecordedCall] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _money(usd: float) -> dict[str, Any]:
    units = int(usd)
    return {"currency_code": "USD", "units": units, "nanos": round((usd - units) * 1e9)}


def _page(items: Sequence[Any], token: str, requested: int, cap: int) -> tuple[Sequence[Any], str]:
    size = min(cap, requested or cap)
    start = int(token or 0)
    end = start + size
    return items[start:end], (str(end) if end < len(items) else "")


class _CloudCatalog:
    def __init__(self, state: FakeBillingState) -> None:
        self.state = state

    def _record(self, method: str, request: Any, parent: str, context: Any) -> None:
        import grpc

        with self.state.lock:
            self.state.calls.append(
                RecordedCall(
                    method,
                    parent,
                    request.page_token,
                    request.page_size,
                    getattr(request, "currency_code", ""),
                )
            )
        if self.state.fail is not None:
            code, message = self.state.fail
            context.abort(getattr(grpc.StatusCode, code), message)

    def list_services(self, request: Any, context: Any) -> Any:
        from google.cloud import billing_v1

        self._record("ListServices", request, "", context)
        services = [
            billing_v1.Service(
                name=f"services/{sid}", service_id=sid, display_name=name, business_entity_name=""
            )
            for sid, name in (
                *self.state.other_services,
                (COMPUTE_ENGINE_SERVICE_ID, "Compute Engine"),  # on the second page
            )
        ]
        page, token = _page(services, request.page_token, request.page_size, 2)
        return billing_v1.ListServicesResponse(services=list(page), next_page_token=token)

    def list_skus(self, request: Any, context: Any) -> Any:
        import grpc
        from google.cloud import billing_v1

        self._record("ListSkus", request, request.parent, context)
        if request.parent != f"services/{COMPUTE_ENGINE_SERVICE_ID}":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no service {request.parent}")
        page, token = _page(
            self.state.skus, request.page_token, request.page_size, self.state.page_size
        )
        return billing_v1.ListSkusResponse(
            skus=[self._sku(sku) for sku in page], next_page_token=token
        )

    @staticmethod
    def _sku(sku: FakeSku) -> Any:
        from google.cloud import billing_v1

        return billing_v1.Sku(
            name=f"services/{COMPUTE_ENGINE_SERVICE_ID}/skus/{sku.sku_id}",
            sku_id=sku.sku_id,
            description=sku.description,
            category=billing_v1.Category(
                service_display_name="Compute Engine",
                resource_family=sku.resource_family,
                resource_group=sku.resource_group,
                usage_type=sku.usage_type,
            ),
            service_regions=list(sku.regions),
            pricing_info=[
                billing_v1.PricingInfo(
                    summary="",
                    pricing_expression=billing_v1.PricingExpression(
                        usage_unit=sku.usage_unit,
                        display_quantity=1,
                        tiered_rates=[
                            billing_v1.PricingExpression.TierRate(
                                start_usage_amount=0, unit_price=_money(sku.usd)
                            )
                        ],
                    ),
                    currency_conversion_rate=1.0,
                )
            ],
            service_provider_name="Google",
        )


class FakeBillingServer(FakeGrpcServer):
    """The CloudCatalog fake on a free local port."""

    def __init__(self, state: FakeBillingState | None = None) -> None:
        from google.cloud import billing_v1

        self.state = state or FakeBillingState()
        service = _CloudCatalog(self.state)
        super().__init__(
            "google.cloud.billing.v1.CloudCatalog",
            {
                "ListServices": unary(
                    service.list_services,
                    billing_v1.ListServicesRequest,
                    billing_v1.ListServicesResponse,
                ),
                "ListSkus": unary(
                    service.list_skus, billing_v1.ListSkusRequest, billing_v1.ListSkusResponse
                ),
            },
        )
