"""Build the configured providers. The cloud SDKs are imported here, only when enabled."""

from __future__ import annotations

from collections.abc import Sequence

from guardian.config import Config
from guardian.providers import Caller, Provider

__all__ = ["build_providers", "restrict_regions"]


def restrict_regions(config: Config, regions: Sequence[str]) -> Config:
    """The config with ``aws.regions`` narrowed to ``regions`` (``--region`` on the CLI)."""
    if not regions:
        return config
    aws = config.aws.model_copy(update={"regions": list(dict.fromkeys(regions))})
    return config.model_copy(update={"aws": aws})


def build_providers(config: Config, caller: Caller = "interactive") -> list[Provider]:
    """The enabled providers; ``caller`` sets how long their API calls may wait (``Patience``)."""
    providers: list[Provider] = []
    if config.aws.enabled:
        from guardian.providers.aws.provider import AwsProvider

        providers.append(AwsProvider(config, caller=caller))
    if config.gcp.enabled:
        from guardian.providers.gcp.provider import GcpProvider

        providers.append(GcpProvider(config, caller=caller))
    return providers
