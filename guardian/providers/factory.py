"""Build the configured providers. The cloud SDKs are imported here, only when enabled.

Each cloud's per-instance series (read beside the GPUs' in the same batched calls) are listed in
one function per cloud, ``aws_instance_series`` and ``gcp_instance_series``: add a series there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from guardian.config import Config, is_aws_region
from guardian.model import InstanceMetric
from guardian.providers import Caller, Provider

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
# Host series are read as the maximum over 5 minutes: AWS/EC2 basic monitoring stores one
# datapoint per 5 minutes anyway, a peak within them survives the Maximum, and a 5-minute query
# weighs a fifth of a 1-minute one in GetMetricData's datapoint budget per call.
HOST_PERIOD_S = 300


def aws_instance_series(config: Config) -> tuple[InstanceSeriesSpec, ...]:
    """The per-instance series the AWS provider packs into its GetMetricData calls, from
    config; one that is switched off, or that nothing would use, is not read (each listed one
    costs a ListMetrics per region and cycle):

    - the agent's notebook signal (``idle.window_notebook``) and local-disk use (read when
      ``enforce.local_disks: stop-if-unused``), in the agent's namespace, listed;
    - host CPU: ``AWS/EC2 CPUUtilization``, every instance has it with exactly {InstanceId}, so
      it is queried without a listing; host memory: the CloudWatch agent's
      ``mem_used_percent``, listed (append_dimensions vary). Not with
      ``rightsize.host_metrics: false``.
    """
    from guardian.providers.aws.metrics import NOTEBOOK_IDLE_METRIC, InstanceSeriesSpec

    metrics = config.aws.metrics
    specs: list[InstanceSeriesSpec] = []
    if config.idle.window_notebook:
        # Its Minimum: a minute in which a cell ran counts as that reset.
        specs.append(
            InstanceSeriesSpec(
                InstanceMetric.NOTEBOOK_IDLE_S,
                metrics.namespace,
                NOTEBOOK_IDLE_METRIC,
                stat="Minimum",
            )
        )
    if metrics.local_disk_used and config.enforce.local_disks == "stop-if-unused":
        # Instance store used beyond empty filesystems, Unit Megabytes (MiB), dimensions
        # exactly InstanceId; only agents on machines with local disks send it.
        specs.append(
            InstanceSeriesSpec(
                InstanceMetric.LOCAL_DISK_USED_MIB, metrics.namespace, metrics.local_disk_used
            )
        )
    if config.rightsize.host_metrics:
        period = max(HOST_PERIOD_S, metrics.period)
        specs.append(
            InstanceSeriesSpec(
                InstanceMetric.HOST_CPU_PCT,
                "AWS/EC2",
                "CPUUtilization",
                listed=False,
                period_s=period,
            )
        )
        specs.append(
            InstanceSeriesSpec(
                InstanceMetric.HOST_MEM_PCT,
                metrics.namespace,
                "mem_used_percent",
                listed=True,
                period_s=period,
            )
        )
    return tuple(specs)


def gcp_instance_series(config: Config) -> tuple[GcpInstanceSeriesSpec, ...]:
    """The per-instance series the GCP provider reads with one query per project each, from
    config (the same signals as on AWS): the agent's notebook signal and local-SSD use (bytes),
    host CPU (``compute.googleapis.com/instance/cpu/utilization``, a fraction: scale 100) and
    the Ops Agent's ``memory/percent_used`` (``state = used`` only)."""
    from guardian.providers.gcp.metrics import NOTEBOOK_IDLE_METRIC_TYPE, GcpInstanceSeriesSpec

    metrics = config.gcp.metrics
    specs: list[GcpInstanceSeriesSpec] = []
    if config.idle.window_notebook:
        specs.append(
            GcpInstanceSeriesSpec(InstanceMetric.NOTEBOOK_IDLE_S, NOTEBOOK_IDLE_METRIC_TYPE)
        )
    if metrics.local_disk_used and config.enforce.local_disks == "stop-if-unused":
        specs.append(
            GcpInstanceSeriesSpec(
                InstanceMetric.LOCAL_DISK_USED_MIB, metrics.local_disk_used, 1 / _MIB
            )
        )
    if config.rightsize.host_metrics:
        period = max(HOST_PERIOD_S, metrics.period)
        specs.append(
            GcpInstanceSeriesSpec(
                InstanceMetric.HOST_CPU_PCT,
                "compute.googleapis.com/instance/cpu/utilization",
                100.0,
                period_s=period,
            )
        )
        specs.append(
            GcpInstanceSeriesSpec(
                InstanceMetric.HOST_MEM_PCT,
                "agent.googleapis.com/memory/percent_used",
                labels=(("state", "used"),),
                period_s=period,
            )
        )
    return tuple(specs)


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


def build_providers(
    config: Config, caller: Caller = "interactive", *, instance_series: bool = True
) -> list[Provider]:
    """The enabled providers, each reading the per-instance series the config asks for;
    ``caller`` sets how long their API calls may wait (``Patience``); ``instance_series=False``
    reads the GPUs' series only (a backtest's history needs nothing else)."""
    providers: list[Provider] = []
    for cloud, enabled in (("aws", config.aws.enabled), ("gcp", config.gcp.enabled)):
        if enabled:
            options: dict[str, Any] = {"caller": caller}
            if cloud == "aws":
                options["keep_types_on_disk"] = True  # the next audit skips the type listing
            if not instance_series:
                options["instance_series"] = ()
            providers.append(build_provider(config, cloud, **options))
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
