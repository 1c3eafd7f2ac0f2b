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

if __name__ == "__main__":
    if len(sys.argv) > 2:
        moto_speedups.offer_only(set(sys.argv[2].split(",")))
    _server, url = start_moto_server(indexed_metrics=True)
    moto_speedups.enable(latency_s=float(sys.argv[1]) if len(sys.argv) > 1 else 0.0)
    print(url, flush=True)
    threading.Event().wait()
