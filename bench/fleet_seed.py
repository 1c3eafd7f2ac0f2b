"""A GPU fleet of any size in the in-process moto server, for the fleet benchmark and the soak.

Instances are launched over HTTP, one per RunInstances call (or RequestSpotInstances for the
spot ones), so each is its own reservation: moto pages DescribeInstances by reservation and
AWS by instance, and this way both page at 1000 instances. Launch times are then set and the
CloudWatch agent's GPU metrics stored directly in the in-process backends
(``moto_speedups.backdate_in_process`` / ``put_in_process``): over HTTP, PutMetricData of a
million datums alone would take about a minute. The datums are the agent's own schema
(``guardian.simulated.aws.gpu_datums``: namespace CWAgent, one series per GPU with InstanceId,
host, index, name), one per GPU per minute. Beside them, each instance's host: ``AWS/EC2
CPUUtilization`` every 5 minutes (EC2 publishes it with or without an agent) and, where the agent
runs, its ``mem_used_percent`` every minute (``guardian.simulated.aws.host_datums``).

The mix is what a platform team sees on a Monday morning: training runs, notebooks, inference
services, jobs that finished (memory still held, or released), a paused run, machines without
the agent or whose agent stopped, and protected production boxes; a tenth are persistent spot.
Every trace is drawn from a seeded RNG, so a fleet is the same on every run.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from guardian.simulated import moto_speedups
from guardian.simulated.aws import (
    AGENT_NAMESPACE,
    EC2_NAMESPACE,
    HOST_CPU_METRIC,
    HOST_MEM_METRIC,
    Reading,
    gpu_datums,
    host_datums,
    image_id,
)

__all__ = ["KINDS", "FleetShape", "SeededFleet", "SeededInstance", "kinds_of", "seed"]

# (instance type, GPU model) by GPUs per instance; each offered and priced in the bench regions.
TYPES: dict[int, tuple[tuple[str, str], ...]] = {
    1: (("g5.xlarge", "NVIDIA A10G"), ("g4dn.xlarge", "NVIDIA T4"), ("g5.2xlarge", "NVIDIA A10G")),
    4: (("g5.12xlarge", "NVIDIA A10G"), ("g4dn.12xlarge", "NVIDIA T4")),
    8: (
        ("g5.48xlarge", "NVIDIA A10G"),
        ("p4d.24xlarge", "NVIDIA A100"),
        ("g4dn.metal", "NVIDIA T4"),
    ),
}
TEAMS = ("search-ml", "vision", "llm", "ads-ranking", "speech", "research", "platform", "data")
MEM_HELD = 14_000.0  # MiB a training process keeps allocated


@dataclass(frozen=True)
class FleetShape:
    instances: int
    gpus: int = 1
    regions: tuple[str, ...] = ("us-east-1", "us-west-2", "eu-west-1")
    history: timedelta = timedelta(hours=2)  # metrics seeded before ``now``
    future: timedelta = timedelta(0)  # and after it (the soak's simulated clock runs into it)
    spot_share: float = 0.1
    seed: int = 7


@dataclass(frozen=True)
class SeededInstance:
    instance_id: str
    region: str
    kind: str
    instance_type: str
    gpus: int
    spot: bool


@dataclass(frozen=True)
class SeededFleet:
    now: datetime
    instances: tuple[SeededInstance, ...]
    series: dict[str, int]  # region → GPU series stored (both metrics)
    datums: int
    # region → host series stored: CPU (one per instance) and the agent's memory (one per
    # instance with the agent); each is one GetMetricData query per instance with GPU series.
    host_cpu: dict[str, int] = field(default_factory=dict)
    host_mem: dict[str, int] = field(default_factory=dict)

    def in_region(self, region: str) -> list[SeededInstance]:
        return [i for i in self.instances if i.region == region]


Trace = Callable[[random.Random, int, int], list[Reading] | None]


def _work(rng: random.Random, mem: float = MEM_HELD) -> Reading:
    return Reading(rng.uniform(86, 99), mem)


def _idle(rng: random.Random, mem: float) -> Reading:
    return Reading(rng.uniform(0, 2), mem)


def _onset(rng: random.Random, total: int, now: int, low: int, high: int) -> int:
    """Where a trace goes idle: ``low``-``high`` minutes before ``now`` — or, with readings
    after ``now`` (the soak), anywhere from ``high`` before it to the end, so that instances
    keep going idle while the soak runs."""
    if total > now + 1:
        return rng.randint(now - high, total - 1)
    return now - rng.randint(low, high)


def training(rng: random.Random, total: int, now: int) -> list[Reading]:
    """88-99 % with a two-minute evaluation dip every ~45 minutes."""
    phase = rng.randrange(45)
    return [
        Reading(rng.uniform(8, 30), MEM_HELD) if (m + phase) % 45 in (0, 1) else _work(rng)
        for m in range(total)
    ]


def notebook(rng: random.Random, total: int, now: int) -> list[Reading]:
    """Mostly waiting on its user, a burst of work every 18-38 minutes: underused."""
    readings: list[Reading] = []
    while len(readings) < total:
        readings += [_idle(rng, 6_200.0) for _ in range(rng.randint(18, 38))]
        readings += [Reading(rng.uniform(25, 60), 6_200.0) for _ in range(rng.randint(1, 3))]
    return readings[:total]


def inference(rng: random.Random, total: int, now: int) -> list[Reading]:
    """A service at 25-45 %: never idle, but not worth a GPU at the default speedup."""
    return [Reading(rng.uniform(25, 45), 9_000.0) for _ in range(total)]


def finished_held(rng: random.Random, total: int, now: int) -> list[Reading]:
    """Training ended 70-110 minutes ago; the process still holds its memory: idle."""
    onset = _onset(rng, total, now, 70, 110)
    return [_work(rng) if m < onset else _idle(rng, MEM_HELD) for m in range(total)]


def finished_released(rng: random.Random, total: int, now: int) -> list[Reading]:
    """Training ended 15-60 minutes ago and the process exited: idle (job ended)."""
    onset = _onset(rng, total, now, 15, 60)
    return [_work(rng) if m < onset else _idle(rng, rng.uniform(0, 120)) for m in range(total)]


def paused(rng: random.Random, total: int, now: int) -> list[Reading]:
    """Paused 15-40 minutes ago holding memory (a checkpoint, a stall), resumes 45 minutes in:
    not idle yet."""
    onset = _onset(rng, total, now, 15, 40)
    return [_idle(rng, MEM_HELD) if onset <= m < onset + 45 else _work(rng) for m in range(total)]


def agent_stopped(rng: random.Random, total: int, now: int) -> list[Reading]:
    """The agent stopped reporting 30-60 minutes ago: stale, so unmeasured."""
    onset = now - rng.randint(30, 60)
    return [_work(rng) if m < onset else Reading(None, None) for m in range(total)]


def no_agent(rng: random.Random, total: int, now: int) -> list[Reading] | None:
    """No CloudWatch agent: no series at all, unmeasured."""
    return None


def protected(rng: random.Random, total: int, now: int) -> list[Reading]:
    """Production inference, quiet now, tagged guardian:protect=true."""
    return [_idle(rng, 9_000.0) for _ in range(total)]


# kind → (share of the fleet, trace). Idle kinds stay well under limits.max_idle_fraction.
KINDS: dict[str, tuple[float, Trace]] = {
    "training": (0.30, training),
    "notebook": (0.14, notebook),
    "inference": (0.08, inference),
    "finished-held": (0.12, finished_held),
    "finished-released": (0.10, finished_released),
    "paused": (0.08, paused),
    "agent-stopped": (0.04, agent_stopped),
    "no-agent": (0.06, no_agent),
    "protected": (0.08, protected),
}


def _kinds(count: int, rng: random.Random) -> list[str]:
    """``count`` kinds in the KINDS shares (largest remainders), shuffled."""
    shares = {kind: share * count for kind, (share, _) in KINDS.items()}
    counts = {kind: int(value) for kind, value in shares.items()}
    by_remainder = sorted(shares, key=lambda k: shares[k] - counts[k], reverse=True)
    for kind in by_remainder[: count - sum(counts.values())]:
        counts[kind] += 1
    kinds = [kind for kind, n in counts.items() for _ in range(n)]
    rng.shuffle(kinds)
    return kinds


def _per_gpu(trace: list[Reading], gpus: int, rng: random.Random) -> dict[int, list[Reading]]:
    """Each GPU of a multi-GPU box works a little differently; idle stays idle."""
    result = {}
    for index in range(gpus):
        result[index] = [
            r
            if r.util_pct is None or r.util_pct < 5
            else Reading(min(100.0, max(5.0, r.util_pct + rng.uniform(-3, 3))), r.mem_mib)
            for r in trace
        ]
    return result


def _launch(
    ec2: Any, image: str, instance_type: str, zone: str, *, tags: dict[str, str], spot: bool
) -> str:
    tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
    if spot:
        (request,) = ec2.request_spot_instances(
            InstanceCount=1,
            Type="persistent",
            LaunchSpecification={
                "ImageId": image,
                "InstanceType": instance_type,
                "Placement": {"AvailabilityZone": zone},
            },
        )["SpotInstanceRequests"]
        instance_id: str = request["InstanceId"]
        ec2.create_tags(Resources=[instance_id], Tags=tag_list)
        return instance_id
    response = ec2.run_instances(
        ImageId=image,
        InstanceType=instance_type,
        MinCount=1,
        MaxCount=1,
        Placement={"AvailabilityZone": zone},
        TagSpecifications=[{"ResourceType": "instance", "Tags": tag_list}],
    )
    launched: str = response["Instances"][0]["InstanceId"]
    return launched


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def seed(shape: FleetShape, session: Any, progress: Callable[[str], None] = print) -> SeededFleet:
    """Launch and backdate the fleet, then store its metrics; ``now`` is taken after the
    launches, so the newest datum is fresh when the audit starts. Requires
    ``moto_speedups.enable()`` and a session pointed at the in-process server."""
    rng = random.Random(shape.seed)
    history = int(shape.history.total_seconds() // 60)
    total = history + int(shape.future.total_seconds() // 60)
    types = TYPES[shape.gpus]
    launched: list[SeededInstance] = []
    ages: dict[str, timedelta] = {}
    for region, count in zip(
        shape.regions, _split(shape.instances, len(shape.regions)), strict=True
    ):
        ec2 = session.client("ec2", region_name=region)
        image = image_id(ec2)
        for n, kind in enumerate(_kinds(count, rng)):
            instance_type, _ = types[n % len(types)]
            team = rng.choice(TEAMS)
            tags = {"Name": f"{team}-{kind}-{n}", "team": team, "owner": f"{team}@example.com"}
            if kind == "protected":
                tags["guardian:protect"] = "true"
            spot = kind not in ("protected", "inference") and rng.random() < shape.spot_share
            zone = f"{region}{'abc'[n % 3]}"
            instance_id = _launch(ec2, image, instance_type, zone, tags=tags, spot=spot)
            launched.append(
                SeededInstance(instance_id, region, kind, instance_type, shape.gpus, spot)
            )
            ages[instance_id] = shape.history + timedelta(minutes=rng.randint(5, 5 * 24 * 60))
        progress(f"launched {count} instances in {region}")
    now = datetime.now(UTC).replace(microsecond=0)
    series: Counter[str] = Counter()
    host_cpu: Counter[str] = Counter()
    host_mem: Counter[str] = Counter()
    datums = 0
    host_minutes = total
    host_rng = random.Random(shape.seed + 1)  # its own, so the GPU traces stay as they were
    models = dict(types)
    for instance in launched:
        moto_speedups.backdate_in_process(
            instance.region, [instance.instance_id], now - ages[instance.instance_id]
        )
        trace = KINDS[instance.kind][1](rng, total, history - 1)
        end = now + shape.future
        cpu = [host_rng.uniform(3, 60) for _ in range(host_minutes // 5)]
        datums += moto_speedups.put_in_process(
            instance.region,
            host_datums(instance.instance_id, HOST_CPU_METRIC, cpu, end),
            EC2_NAMESPACE,
        )
        host_cpu[instance.region] += 1
        if trace is None:
            continue
        mem = [host_rng.uniform(5, 70) for _ in range(host_minutes)]
        datums += moto_speedups.put_in_process(
            instance.region,
            host_datums(instance.instance_id, HOST_MEM_METRIC, mem, end, period_s=60),
            AGENT_NAMESPACE,
        )
        host_mem[instance.region] += 1
        per_gpu = _per_gpu(trace, shape.gpus, rng) if shape.gpus > 1 else trace
        # The trace's reading ``history - 1`` falls on ``now`` (floored to the minute).
        batch = gpu_datums(
            instance.instance_id, shape.gpus, per_gpu, end, gpu_name=models[instance.instance_type]
        )
        datums += moto_speedups.put_in_process(instance.region, batch, AGENT_NAMESPACE)
        series[instance.region] += len(
            {(d["MetricName"], d["Dimensions"][2]["Value"]) for d in batch}
        )
    progress(
        f"stored {datums:,} datums in {sum(series.values()):,} GPU series and "
        f"{sum(host_cpu.values()) + sum(host_mem.values()):,} host series"
    )
    return SeededFleet(now, tuple(launched), dict(series), datums, dict(host_cpu), dict(host_mem))


def kinds_of(instances: Sequence[SeededInstance]) -> dict[str, int]:
    return dict(Counter(i.kind for i in instances))
