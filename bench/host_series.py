"""What reading host CPU and memory beside the GPUs costs in GetMetricData calls, at fleet scale.

    .venv/bin/python -m bench.host_series                 # N = 1,000 and 5,000, 3 regions
    .venv/bin/python -m bench.host_series -n 5000 --json figures.json

GetMetricData calls are what the AWS provider's own planner (``plan_batches``, the code
``AwsProvider.utilisation`` runs) packs the queries into: at most 500 queries a call, and at most
100,800 datapoints a call over the window, each query weighing what its own period returns. A call
is one request (the datapoint budget keeps every answer on one page), so counting the planned
batches counts the calls; ``bench/fleet.py`` checks the same packing against the simulated
CloudWatch end to end. Every instance here is measured (has GPU series), in N / 3 per region.

Compared side by side, for each fleet shape and lookback:
- GPUs only (``rightsize.host_metrics: false``);
- host CPU (``AWS/EC2 CPUUtilization``) at the GPUs' 60 s period;
- host CPU at 300 s, as guardian reads it (basic monitoring's own resolution);
- host CPU and the agent's memory at 300 s, as guardian reads them (every instance with both).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from guardian.model import GpuInstance, InstanceMetric
from guardian.providers.aws.limits import AwsLimits
from guardian.providers.aws.metrics import Dims, InstanceSeriesSpec, MetricNames, plan_batches

REGIONS = 3
T0 = datetime(2000, 1, 1, tzinfo=UTC)  # any moment: only the window's length matters
CPU = "CPUUtilization"
MEM = "mem_used_percent"


def _instances(count: int, gpus: int) -> tuple[list[GpuInstance], dict[str, list[Dims]]]:
    instances = [
        GpuInstance(
            "aws", "123456789012", "us-east-1", "us-east-1a", f"i-{n:05d}", "g5.xlarge", T0, gpus
        )
        for n in range(count)
    ]
    series: dict[str, list[Dims]] = {
        i.instance_id: [(("InstanceId", i.instance_id), ("index", str(g))) for g in range(gpus)]
        for i in instances
    }
    return instances, series


def calls(instances: int, gpus: int, lookback: timedelta, host: Sequence[tuple[str, int]]) -> int:
    """GetMetricData calls for ``instances`` over ``REGIONS`` regions with ``host`` series
    ((metric, period) each, every instance having them)."""
    limits = AwsLimits()
    specs = tuple(
        InstanceSeriesSpec(
            InstanceMetric.HOST_CPU_PCT if metric == CPU else InstanceMetric.HOST_MEM_PCT,
            "AWS/EC2" if metric == CPU else "CWAgent",
            metric,
            listed=metric != CPU,
            period_s=period,
        )
        for metric, period in host
    )
    names = MetricNames(
        "CWAgent", "nvidia_smi_utilization_gpu", "nvidia_smi_memory_used", 60, specs
    )
    total = 0
    for region in range(REGIONS):
        members, series = _instances(instances // REGIONS + (region < instances % REGIONS), gpus)
        listings = {
            spec.key: {i.instance_id: [(("InstanceId", i.instance_id),)] for i in members}
            for spec in specs
            if spec.listed
        }
        total += len(
            plan_batches(
                members,
                series,
                series,
                names,
                limits.metric_queries,
                instance_listings=listings,
                max_datapoints=limits.datapoints_per_call,
                window_s=int(lookback.total_seconds()),
            )
        )
    return total


VARIANTS: dict[str, tuple[tuple[str, int], ...]] = {
    "GPUs only": (),
    "+ CPU at 60 s": ((CPU, 60),),
    "+ CPU at 300 s": ((CPU, 300),),
    "+ CPU and memory at 300 s (guardian)": ((CPU, 300), (MEM, 300)),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--instances", "-n", type=int, action="append")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    sizes = args.instances or [1000, 5000]
    figures: list[dict[str, Any]] = []
    header = f"{'N x G':>10}  {'lookback':>8}  " + "  ".join(f"{v:>14.14}" for v in VARIANTS)
    print("GetMetricData calls per audit, 3 regions (each column vs GPUs only)")
    print(header)
    for count in sizes:
        for gpus in (1, 8):
            for hours in (2, 24):
                lookback = timedelta(hours=hours)
                row = {name: calls(count, gpus, lookback, host) for name, host in VARIANTS.items()}
                base = row["GPUs only"]
                cells = [f"{n} ({n / base:.2f}x)" for n in row.values()]
                print(
                    f"{f'{count} x {gpus}':>10}  {f'{hours} h':>8}  "
                    + "  ".join(f"{c:>14}" for c in cells)
                )
                figures.append({"instances": count, "gpus": gpus, "lookback_h": hours, **row})
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
