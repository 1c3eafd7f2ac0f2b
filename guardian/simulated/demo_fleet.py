"""``guardian demo``: a believable GPU fleet in a simulated cloud, audited by the real code.

The simulated AWS is a moto server in this process (``guardian.simulated.aws``); the simulated
GCP project is the local Compute REST and Monitoring gRPC fakes (``guardian.simulated.gcp``).
Nothing here decides anything: the real providers, pricing and policy run over the simulation.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from guardian.config import Config
from guardian.policy import format_keep_until
from guardian.simulated.aws import Reading, SimInstance, constant

__all__ = ["DEMO_GROUP", "DEMO_REGIONS", "DemoCloud", "demo_fleet", "simulated_cloud"]

DEMO_REGIONS = ("us-east-1", "eu-west-1")
# An Auto Scaling group of two idle g5g.xlarge at min 2 / desired 2, in us-east-1.
DEMO_GROUP = "gpu-pool"
HISTORY_MINUTES = 6 * 60  # the demo's lookback
_A100_MEM = 38_000.0


def _training(rng: random.Random, minutes: int, mem_mib: float) -> list[Reading]:
    """A training run: 88–99 % with a short evaluation dip every ~45 minutes."""
    readings = []
    for minute in range(minutes):
        if minute % 45 in (43, 44):
            readings.append(Reading(rng.uniform(8, 30), mem_mib))
        else:
            readings.append(Reading(rng.uniform(88, 99), mem_mib))
    return readings


def _notebook(rng: random.Random, minutes: int) -> list[Reading]:
    """An interactive notebook: mostly idle, a burst of work every 20–40 minutes."""
    readings: list[Reading] = []
    while len(readings) < minutes:
        readings += constant(0.0, 6_200.0, rng.randint(18, 38))
        readings += [Reading(rng.uniform(25, 60), 6_200.0) for _ in range(rng.randint(1, 3))]
    return readings[-minutes:]


def _host(rng: random.Random, low: float, high: float, points: int) -> list[float]:
    """A host series (CPU or memory percent) that stays between ``low`` and ``high``."""
    return [round(rng.uniform(low, high), 1) for _ in range(points)]


def demo_fleet(now: datetime, seed: int = 7) -> dict[str, list[SimInstance]]:
    """Region → instances: every verdict, a spot instance, one without the GPU agent, the
    owners enforcement must leave alone: an EKS node, reserved capacity, local disks with data
    or not reported (the Auto Scaling group is ``DEMO_GROUP``, launched by the group itself),
    and right-sizing's cases (one GPU of four working, with and without host metrics).

    Every time in it is derived from ``now``: the demo shows the same verdicts on any day.
    """
    rng = random.Random(seed)
    h = HISTORY_MINUTES

    def tags(name: str, owner: str, **extra: str) -> dict[str, str]:
        return {"Name": name, "owner": owner, **extra}

    tomorrow = format_keep_until((now + timedelta(days=1)).replace(hour=18, minute=0))
    return {
        "us-east-1": [
            # Fine-tuning finished 95 minutes ago and released its memory: idle (job ended).
            SimInstance(
                "p4d.24xlarge",
                _training(rng, h - 95, _A100_MEM) + constant(0.0, 0.0, 95),
                tags=tags("llm-finetune-7b", "maria@example.com", project="llm"),
                age=timedelta(hours=7),
            ),
            # Pre-training at full tilt: busy.
            SimInstance(
                "g5.12xlarge",
                _training(rng, h, 21_000.0),
                tags=tags("bert-pretrain", "search-ml"),
                age=timedelta(days=3),
            ),
            # A notebook someone left open: bursts, memory held, never idle long enough: underused.
            SimInstance(
                "g5.2xlarge",
                _notebook(rng, h),
                tags=tags("jupyter-alice", "alice"),
                age=timedelta(days=5),
            ),
            # No CloudWatch agent on this one: unmeasured, never idle.
            SimInstance(
                "g4dn.xlarge",
                None,
                tags=tags("legacy-render", "graphics"),
                age=timedelta(days=40),
            ),
            # Production inference, quiet right now, but protected by its tag.
            SimInstance(
                "g5.xlarge",
                constant(1.0, 9_000.0, h),
                tags=tags("prod-inference", "platform", **{"guardian:protect": "true"}),
                age=timedelta(days=60),
            ),
            # A one-time spot instance from a sweep, idle for two hours with memory still held.
            SimInstance(
                "g6.xlarge",
                _training(rng, h - 130, 15_000.0) + constant(0.0, 15_000.0, 130),
                tags=tags("hparam-sweep-17", "bob"),
                spot="one-time",
                age=timedelta(hours=9),
            ),
            # An EKS node whose pods finished: the node group, not a stop, saves the money.
            SimInstance(
                "g5g.2xlarge",
                _training(rng, h - 80, 9_000.0) + constant(0.0, 0.0, 80),
                tags={
                    **tags("eks-a10g-node", "platform"),
                    "eks:cluster-name": "ml-prod",
                    "eks:nodegroup-name": "a10g-nodes",
                },
                age=timedelta(days=6),
            ),
            # Fine-tuning done; its instance store (250 GB NVMe) holds nothing, as the agent says.
            SimInstance(
                "g5.2xlarge",
                _training(rng, h - 70, 18_000.0) + constant(0.0, 0.0, 70),
                tags=tags("sd-finetune-done", "erin"),
                age=timedelta(hours=10),
                local_disk_used_mib=0.0,
            ),
            # Same, but 120 GiB of preprocessed shards sit on its instance store.
            SimInstance(
                "g5.2xlarge",
                _training(rng, h - 70, 18_000.0) + constant(0.0, 0.0, 70),
                tags=tags("dataprep-shards", "erin"),
                age=timedelta(hours=10),
                local_disk_used_mib=120 * 1024.0,
            ),
            # Graviton + T4G has no instance store: nothing to measure before a stop.
            SimInstance(
                "g5g.xlarge",
                _training(rng, h - 90, 6_000.0) + constant(0.0, 0.0, 90),
                tags=tags("arm-inference-test", "frank"),
                age=timedelta(days=1),
            ),
            # In a capacity reservation: paid whether it runs or not.
            SimInstance(
                "g6.2xlarge",
                constant(0.0, 0.0, h),
                tags=tags("reserved-g6-spare", "platform"),
                age=timedelta(days=20),
                reservation="cr-0a1b2c3d4e5f60718",
            ),
        ],
        "eu-west-1": [
            # A single-GPU job on a four-GPU box, with the host's CPU and memory measured: busy,
            # and right-sizing names the one-GPU type its measured need fits.
            SimInstance(
                "g5.12xlarge",
                {
                    0: _training(rng, h, 14_000.0),
                    1: constant(0.0, 0.0, h),
                    2: constant(0.0, 0.0, h),
                    3: constant(0.0, 0.0, h),
                },
                tags=tags("cv-train-eu", "vision"),
                age=timedelta(days=1),
                host_cpu_pct=_host(rng, 6, 12, h // 5),
                host_mem_pct=_host(rng, 9, 12, h),
            ),
            # Paused 25 minutes ago holding memory (a checkpoint, a stall): not idle yet.
            SimInstance(
                "g5.4xlarge",
                _training(rng, h - 25, 20_000.0) + constant(0.0, 20_000.0, 25),
                tags=tags("eval-paused", "carol"),
                age=timedelta(hours=12),
            ),
            # Kept on purpose until tomorrow evening.
            SimInstance(
                "g4dn.2xlarge",
                constant(0.0, 300.0, h),
                tags=tags("demo-booth", "devrel", **{"guardian:keep-until": tomorrow}),
                age=timedelta(days=2),
            ),
            # The agent stopped reporting 40 minutes ago: unmeasured (stale), never idle.
            SimInstance(
                "g5.xlarge",
                None,
                tags=tags("stale-agent", "dave"),
                age=timedelta(days=2),
            ),
        ],
    }


@dataclass(frozen=True)
class DemoCloud:
    config: Config
    environment: dict[str, str]  # what to export to point other commands at the simulation


def _seed_group(endpoint: str, now: datetime) -> None:
    """The Auto Scaling group: moto launches its members and tags them with its name."""
    import boto3

    from guardian.simulated import moto_speedups
    from guardian.simulated.aws import AGENT_NAMESPACE, gpu_datums, launch_autoscaling_group

    region = DEMO_REGIONS[0]
    ec2 = boto3.client("ec2", region_name=region, endpoint_url=endpoint)
    autoscaling = boto3.client("autoscaling", region_name=region, endpoint_url=endpoint)
    members = launch_autoscaling_group(
        ec2,
        autoscaling,
        DEMO_GROUP,
        "g5g.xlarge",
        min_size=2,
        desired=2,
        max_size=8,
        zone=f"{region}a",
        tags={"Name": "gpu-pool-worker", "owner": "platform"},
    )
    moto_speedups.backdate_in_process(region, members, now - timedelta(days=3))
    rng = random.Random(11)
    datums = [
        datum
        for instance_id in members
        for datum in gpu_datums(
            instance_id,
            1,
            _training(rng, HISTORY_MINUTES - 150, 5_000.0) + constant(0.0, 0.0, 150),
            now,
            gpu_name="NVIDIA T4G",
        )
    ]
    moto_speedups.put_in_process(region, datums, AGENT_NAMESPACE)


def _seed_aws(endpoint: str, now: datetime) -> None:
    import boto3

    from guardian.simulated.aws import put_gpu_metrics, seed_fleet

    _seed_group(endpoint, now)
    for region, fleet in demo_fleet(now).items():
        ec2 = boto3.client("ec2", region_name=region, endpoint_url=endpoint)
        cloudwatch = boto3.client("cloudwatch", region_name=region, endpoint_url=endpoint)
        launched = seed_fleet(ec2, cloudwatch, fleet, now, in_process=True)
        for instance_id, spec in launched:
            if spec.tags.get("Name") == "stale-agent":
                # History that stops 40 minutes before now: the agent died.
                put_gpu_metrics(
                    cloudwatch,
                    instance_id,
                    1,
                    _training(random.Random(3), HISTORY_MINUTES - 40, 12_000.0),
                    now - timedelta(minutes=40),
                    gpu_name="NVIDIA A10G",
                )


@contextmanager
def simulated_cloud(state_dir: Path, now: datetime) -> Iterator[DemoCloud]:
    """Start and seed the simulated clouds; yield the config that audits them."""
    from guardian.simulated.aws import fake_aws_env, start_moto_server
    from guardian.simulated.gcp import start_simulated_gcp

    # moto's own metric store rescans every datapoint per query; the indexed store answers
    # the same, as CloudWatch does, in a fraction of the time.
    server, endpoint = start_moto_server(indexed_metrics=True)
    saved = dict(os.environ)
    environment = fake_aws_env(endpoint, DEMO_REGIONS[0])
    os.environ.update(environment)
    gcp = start_simulated_gcp(now=now)
    try:
        _seed_aws(endpoint, now)
        config = Config.model_validate(
            {
                "state_dir": str(state_dir),
                "cost": {"lookback": f"{HISTORY_MINUTES}m"},
                "aws": {"regions": list(DEMO_REGIONS)},
                # The fleet is idle-heavy on purpose (it shows every verdict): 9 of us-east-1's
                # 11 measured machines are idle, and the default breaker (0.5) would hold every
                # warning there, so `run --once` against the demo would show nothing to do.
                "limits": {"max_idle_fraction": 1.0},
                "gcp": {
                    "enabled": True,
                    "projects": list(gcp.projects),
                    "credentials": "anonymous",
                    "compute_endpoint": gcp.compute_endpoint,
                    "monitoring_endpoint": gcp.monitoring_endpoint,
                },
            }
        )
        yield DemoCloud(config, environment)
    finally:
        gcp.stop()
        server.stop()
        os.environ.clear()
        os.environ.update(saved)
