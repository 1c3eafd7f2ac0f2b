"""Build the configured providers. The cloud SDKs are imported here, only when enabled."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from guardian.config import Config
from guardian.model import InstanceMetric
from guardian.providers import Provider

if TYPE_CHECKING:
    from guardian.providers.aws.metrics import InstanceSeriesSpec
    from guardian.providers.gcp.metrics import GcpInstanceSeriesSpec

__all__ = [
    "aws_instance_series",
    "build_provider",
    "build_providers",
    "gcp_instance_series",
    "restrict_regions",
]

_MIB = 1024 * 1024


def aws_instance_series(config: Config) -> tuple[InstanceSeriesSpec, ...]:
    """The per-instance series the daemon reads beside the GPUs' on AWS, from config: one entry
    per signal; one that is switched off ("") or that nothing would use is not read (each
    listed one costs a ListMetrics per region and cycle)."""
    from guardian.providers.aws.metrics import NOTEBOOK_IDLE_METRIC, InstanceSeriesSpec

    metrics = config.aws.metrics
    specs: list[InstanceSeriesSpec] = []
    if config.idle.window_notebook:
        # `guardian agent`: seconds since the GPU-holding notebook kernels' last activity, only
        # while no browser is connected. Its Minimum: a minute in which a cell ran counts as
        # that reset.
        specs.append(
            InstanceSeriesSpec(
                InstanceMetric.NOTEBOOK_IDLE_S,
                metrics.namespace,
                NOTEBOOK_IDLE_METRIC,
                stat="Minimum",
            )
        )
    if metrics.local_disk_used and config.enforce.local_disks == "stop-if-unused":
        # `guardian agent`: instance store used beyond empty filesystems, Unit Megabytes (MiB),
        # dimensions exactly InstanceId; only agents on machines with local disks send it.
        specs.append(
            InstanceSeriesSpec(
                InstanceMetric.LOCAL_DISK_USED_MIB, metrics.namespace, metrics.local_disk_used
            )
        )
    return tuple(specs)


def gcp_instance_series(config: Config) -> tuple[GcpInstanceSeriesSpec, ...]:
    """The per-instance series the daemon reads beside the GPUs' on GCP, from config: one more
    ListTimeSeries per project and signal, so one that is off or unused is not read."""
    from guardian.providers.gcp.metrics import NOTEBOOK_IDLE_METRIC_TYPE, GcpInstanceSeriesSpec

    metrics = config.gcp.metrics
    specs: list[GcpInstanceSeriesSpec] = []
    if config.idle.window_notebook:
        specs.append(
            GcpInstanceSeriesSpec(InstanceMetric.NOTEBOOK_IDLE_S, NOTEBOOK_IDLE_METRIC_TYPE)
        )
    if metrics.local_disk_used and config.enforce.local_disks == "stop-if-unused":
        # `guardian agent`: local SSD used beyond empty filesystems, in bytes.
        specs.append(
            GcpInstanceSeriesSpec(
                InstanceMetric.LOCAL_DISK_USED_MIB, metrics.local_disk_used, 1 / _MIB
            )
        )
    return tuple(specs)


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
    """One cloud's provider with its ``*_instance_series``; ``options`` go to its constructor
    (tests share a warmed-up catalog; the node agent reads no metrics)."""
    if cloud == "aws":
        from guardian.providers.aws.provider import AwsProvider

        options.setdefault("instance_series", aws_instance_series(config))
        return AwsProvider(config, **options)
    from guardian.providers.gcp.provider import GcpProvider

    options.setdefault("instance_series", gcp_instance_series(config))
    return GcpProvider(config, **options)
