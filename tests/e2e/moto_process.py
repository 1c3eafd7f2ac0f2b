"""A moto server in its own process, with ``moto_speedups`` (indexed CloudWatch, AWS-like
DescribeInstanceTypes pages, a server-side latency per call):

    python -m tests.e2e.moto_process LATENCY_S [TYPE,TYPE...]

prints its URL on the first line and serves until killed. Given instance types, the simulated
cloud offers only those (moto's DescribeInstanceTypes and its offerings shrink to them), so each
replica learns the GPU types in a few calls instead of 14 pages of 100.
"""

from __future__ import annotations

import sys
import threading

from guardian.simulated import moto_speedups
from guardian.simulated.aws import start_moto_server


def _offer_only(types: set[str]) -> None:
    from moto.ec2.models import instance_types

    for name in [n for n in instance_types.INSTANCE_TYPES if n not in types]:
        del instance_types.INSTANCE_TYPES[name]
    backend = instance_types.InstanceTypeBackend
    backend.instance_types = [t for t in backend.instance_types if t["InstanceType"] in types]
    for regions in instance_types.INSTANCE_TYPE_OFFERINGS.values():
        for region, offers in regions.items():
            regions[region] = [o for o in offers if o.get("InstanceType") in types]


if __name__ == "__main__":
    if len(sys.argv) > 2:
        _offer_only(set(sys.argv[2].split(",")))
    _server, url = start_moto_server(indexed_metrics=True)
    moto_speedups.enable(latency_s=float(sys.argv[1]) if len(sys.argv) > 1 else 0.0)
    print(url, flush=True)
    threading.Event().wait()
