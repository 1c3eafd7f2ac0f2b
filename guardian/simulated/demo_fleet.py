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

__all__ = ["DEMO_REGIONS", "DemoCloud", "demo_fleet", "simulated_cloud"]

DEMO_REGIONS = ("us-east-1", "eu-west-1")
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


def demo_fleet(now: datetime, seed: int = 7) -> dict[str, list[SimInstance]]:
    """Region → instances: every verdict, a spot instance, one without the GPU agent.

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
        ],
        "eu-west-1": [
            SimInstance(
                "g5.12xlarge",
                _training(rng, h, 14_000.0),
                tags=tags("cv-train-eu", "vision"),
                age=timedelta(days=1),
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


def _seed_aws(endpoint: str, now: datetime) -> None:
    import boto3

    from guardian.simulated.aws import put_gpu_metrics, seed_fleet

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
