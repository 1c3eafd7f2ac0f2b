"""Build the configured providers. The cloud SDKs are imported here, only when enabled."""

from __future__ import annotations

from collections.abc import Sequence

from guardian.config import Config, is_aws_region
from guardian.providers import Caller, Provider

__all__ = ["build_providers", "restrict_regions"]


def restrict_regions(config: Config, regions: Sequence[str]) -> Config:
    """The config narrowed to ``regions`` (``--region`` on the CLI): AWS names (``us-east-1``)
    become ``aws.regions``, the others are GCP's. A cloud none of them names is not asked at
    all (``--region us-central1`` used to send us-central1 to EC2 too)."""
    if not regions:
        return config
    wanted = list(dict.fromkeys(regions))
    aws_regions = [r for r in wanted if is_aws_region(r)]
    aws = config.aws.model_copy(
        update={"regions": aws_regions} if aws_regions else {"enabled": False}
    )
    gcp = config.gcp
    if len(aws_regions) == len(wanted):
        gcp = gcp.model_copy(update={"enabled": False})
    return config.model_copy(update={"aws": aws, "gcp": gcp})


def build_providers(config: Config, caller: Caller = "interactive") -> list[Provider]:
    """The enabled providers; ``caller`` sets how long their API calls may wait (``Patience``)."""
    providers: list[Provider] = []
    if config.aws.enabled:
        from guardian.providers.aws.provider import AwsProvider

        providers.append(AwsProvider(config, caller=caller, keep_types_on_disk=True))
    if config.gcp.enabled:
        from guardian.providers.gcp.provider import GcpProvider

        providers.append(GcpProvider(config, caller=caller))
    return providers
