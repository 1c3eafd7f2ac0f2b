"""The gRPC Cloud Billing Catalog fake (see ``guardian.simulated.gcp_billing_fake``)."""

from guardian.simulated.gcp_billing_fake import (
    COMPUTE_ENGINE_SERVICE_ID,
    FakeBillingServer,
    FakeBillingState,
    FakeSku,
    default_compute_skus,
)

__all__ = [
    "COMPUTE_ENGINE_SERVICE_ID",
    "FakeBillingServer",
    "FakeBillingState",
    "FakeSku",
    "default_compute_skus",
]
