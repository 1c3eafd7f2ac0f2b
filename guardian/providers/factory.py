"""Build the configured providers. The cloud SDKs are imported here, only when enabled.

Each cloud's per-instance series (read beside the GPUs' in the same batched calls) are listed in
one function per cloud, ``aws_instance_series`` and ``gcp_instance_series``: add a series there.
"""

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

# Host series are read as the maximum over 5 minutes: AWS/EC2 basic monitoring stores one
# datapoint per 5 minutes anyway, a peak within them survives the Maximum, and a 5-minute query
# weighs a fifth of a 1-minute one in GetMetricData's datapoint budget per call.
HOST_PERIOD_S = 300


def restrict_regions(config: Config, regions: Sequence[str]) -> Config:
    """The config with ``aws.regions`` narrowed to ``regions`` (``--region`` on the CLI)."""
    if not regions:
        return config
    aws = config.aws.model_copy(update={"regions": list(dict.fromkeys(regions))})
    return config.model_copy(update={"aws": aws})


def aws_instance_series(config: Config) -> tuple[InstanceSeriesSpec, ...]:
    """The per-instance series the AWS provider packs into its GetMetricData calls.

    - host CPU: ``AWS/EC2 CPUUtilization``, every instance has it with exactly {InstanceId}, so
      it is queried without a listing;
    - host memory: the CloudWatch agent's ``mem_used_percent`` (its ``mem`` plugin), in the
      agent's namespace, listed once per region (append_dimensions vary).

    None of them with ``rightsize.host_metrics: false``.
    """
    from guardian.providers.aws.metrics import InstanceSeriesSpec

    if not config.rightsize.host_metrics:
        return ()
    period = max(HOST_PERIOD_S, config.aws.metrics.period)
    return (
        InstanceSeriesSpec(
            InstanceMetric.HOST_CPU_PCT, "AWS/EC2", "CPUUtilization", listed=False, period_s=period
        ),
        InstanceSeriesSpec(
            InstanceMetric.HOST_MEM_PCT,
            config.aws.metrics.namespace,
            "mem_used_percent",
            listed=True,
            period_s=period,
        ),
    )


def gcp_instance_series(config: Config) -> tuple[GcpInstanceSeriesSpec, ...]:
    """The per-instance series the GCP provider reads with one query per project each.

    - host CPU: ``compute.googleapis.com/instance/cpu/utilization`` (a fraction: scale 100),
      every VM has it without an agent;
    - host memory: the Ops Agent's ``agent.googleapis.com/memory/percent_used``, one series per
      ``state`` label: only ``used``.

    None of them with ``rightsize.host_metrics: false``.
    """
    from guardian.providers.gcp.metrics import GcpInstanceSeriesSpec

    if not config.rightsize.host_metrics:
        return ()
    period = max(HOST_PERIOD_S, config.gcp.metrics.period)
    return (
        GcpInstanceSeriesSpec(
            InstanceMetric.HOST_CPU_PCT,
            "compute.googleapis.com/instance/cpu/utilization",
            100.0,
            period_s=period,
        ),
        GcpInstanceSeriesSpec(
            InstanceMetric.HOST_MEM_PCT,
            "agent.googleapis.com/memory/percent_used",
            labels=(("state", "used"),),
            period_s=period,
        ),
    )


def build_providers(config: Config, *, instance_series: bool = True) -> list[Provider]:
    """The enabled providers; ``instance_series=False`` reads the GPUs' series only (a
    backtest's history needs nothing else)."""
    providers: list[Provider] = []
    if config.aws.enabled:
        from guardian.providers.aws.provider import AwsProvider

        aws_series = aws_instance_series(config) if instance_series else ()
        providers.append(AwsProvider(config, instance_series=aws_series))
    if config.gcp.enabled:
        from guardian.providers.gcp.provider import GcpProvider

        gcp_series = gcp_instance_series(config) if instance_series else ()
        providers.append(GcpProvider(config, instance_series=gcp_series))
    return providers
