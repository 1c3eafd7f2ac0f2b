"""Build the configured providers. The cloud SDKs are imported here, only when enabled."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from guardian.config import Config
from guardian.model import InstanceMetric
from guardian.providers import Provider

if TYPE_CHECKING:
    from guardian.providers.aws.metrics import InstanceSeriesSpec
    from guardian.providers.gcp.metrics import GcpInstanceSeriesSpec

__all__ = ["aws_instance_series", "build_providers", "gcp_instance_series", "restrict_regions"]


def aws_instance_series(config: Config) -> tuple[InstanceSeriesSpec, ...]:
    """The per-instance series the daemon reads beside the GPUs' on AWS, from config."""
    from guardian.providers.aws.metrics import NOTEBOOK_IDLE_METRIC, InstanceSeriesSpec

    return (
        # The notebook signal's Minimum: a minute in which a cell ran counts as that reset.
        InstanceSeriesSpec(
            InstanceMetric.NOTEBOOK_IDLE_S,
            config.aws.metrics.namespace,
            NOTEBOOK_IDLE_METRIC,
            stat="Minimum",
        ),
    )


def gcp_instance_series(config: Config) -> tuple[GcpInstanceSeriesSpec, ...]:
    """The per-instance series the daemon reads beside the GPUs' on GCP, from config."""
    from guardian.providers.gcp.metrics import NOTEBOOK_IDLE_METRIC_TYPE, GcpInstanceSeriesSpec

    return (GcpInstanceSeriesSpec(InstanceMetric.NOTEBOOK_IDLE_S, NOTEBOOK_IDLE_METRIC_TYPE),)


def restrict_regions(config: Config, regions: Sequence[str]) -> Config:
    """The config with ``aws.regions`` narrowed to ``regions`` (``--region`` on the CLI)."""
    if not regions:
        return config
    aws = config.aws.model_copy(update={"regions": list(dict.fromkeys(regions))})
    return config.model_copy(update={"aws": aws})


def build_providers(config: Config) -> list[Provider]:
    providers: list[Provider] = []
    if config.aws.enabled:
        from guardian.providers.aws.provider import AwsProvider

        providers.append(AwsProvider(config, instance_series=aws_instance_series(config)))
    if config.gcp.enabled:
        from guardian.providers.gcp.provider import GcpProvider

        providers.append(GcpProvider(config, instance_series=gcp_instance_series(config)))
    return providers
