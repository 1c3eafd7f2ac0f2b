"""Which ``PriceSource`` serves a provider: the one place that knows both price APIs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from guardian.errors import GuardianError

if TYPE_CHECKING:
    from guardian.config import Config
    from guardian.prices.refresh import PriceSource
    from guardian.providers import Caller

__all__ = ["source_for"]


def source_for(provider: str, config: Config, caller: Caller = "interactive") -> PriceSource:
    """The price API of ``provider``, built from the config (credentials, endpoints), with the
    cloud's timeouts for ``caller``.

    GCP's is the Cloud Billing Catalog (``gcp.credentials``, ``gcp.billing_endpoint``).
    """
    if provider == "aws":
        from guardian.prices.refresh_aws import AwsPricingSource

        return AwsPricingSource.from_environment(caller)
    if provider == "gcp":
        from guardian.prices.refresh_gcp import GcpCatalogSource

        return GcpCatalogSource.from_config(config.gcp, caller)
    raise GuardianError(f"prices refresh: unknown provider {provider!r}; use aws or gcp")
