"""Build the configured providers. The cloud SDKs are imported here, only when enabled."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from guardian.config import Config
from guardian.providers import Provider

__all__ = ["build_provider", "build_providers", "restrict_regions"]


def restrict_regions(config: Config, regions: Sequence[str]) -> Config:
    """The config with ``aws.regions`` narrowed to ``regions`` (``--region`` on the CLI)."""
    if not regions:
        return config
    aws = config.aws.model_copy(update={"regions": list(dict.fromkeys(regions))})
    return config.model_copy(update={"aws": aws})


def build_providers(config: Config) -> list[Provider]:
    """The enabled providers, each reading the per-instance series the config asks for."""
    providers: list[Provider] = []
    if config.aws.enabled:
        providers.append(build_provider(config, "aws"))
    if config.gcp.enabled:
        providers.append(build_provider(config, "gcp"))
    return providers


def build_provider(config: Config, cloud: str, **options: Any) -> Provider:
    """One cloud's provider with the instance series of ``instance_series_specs`` (local disks,
    …); ``options`` go to its constructor (tests share a warmed-up catalog)."""
    if cloud == "aws":
        from guardian.providers.aws.metrics import instance_series_specs
        from guardian.providers.aws.provider import AwsProvider

        options.setdefault("instance_series", instance_series_specs(config))
        return AwsProvider(config, **options)
    from guardian.providers.gcp.metrics import instance_series_specs as gcp_series_specs
    from guardian.providers.gcp.provider import GcpProvider

    options.setdefault("instance_series", gcp_series_specs(config))
    return GcpProvider(config, **options)
