"""How many idle instances ``mode: enforce`` would stop, before and after guardian learned who
owns an instance, what its local disks hold and whether it sits in reserved capacity.

"Before" is the rule guardian had: every idle instance is stopped unless it is a one-time spot
instance or has instance store / local SSD (``enforce.allow_instance_store_loss: false``).
Nothing looked for an owner, so Auto Scaling group members, EKS and Karpenter nodes, managed
instance groups' VMs and reserved capacity were stopped too — the "wrong" column: stops a
controller undoes (it launches a replacement) or that save nothing (reserved capacity).
"After" is ``policy.enforce_plan``, what the audit's "If enforced" column shows.

Two fleets, both audited by the real code over the simulated clouds:

- **demo**: ``guardian demo``'s fleet (moto + the GCP fakes);
- **platform**: a fleet of this module's design, the mix a platform team runs — plain Auto
  Scaling groups of g5.12xlarge, an EKS managed node group of g5.2xlarge, Karpenter g6 nodes,
  p4d.24xlarge training boxes (standalone and in a capacity reservation), g6/g5/g5g
  standalone instances with and without ``guardian agent`` (its local-disk metric), one-time
  spot and a stop-protected box.

Also: the EC2 calls a stopping node agent makes to re-read its own instance, the old way (a
discovery of its region with a fresh type catalog, as a new agent process has) and the new one
(``Provider.describe``).

    .venv/bin/python -m bench.enforce_reach            # about a minute
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from guardian.config import Config
from guardian.cycle import CycleResult, audit_cycle
from guardian.model import Finding, Verdict
from guardian.policy import enforce_plan
from guardian.prices import load_catalog

HISTORY = 120  # minutes of metrics


@dataclass(frozen=True)
class Reach:
    fleet: str
    instances: int
    idle: int
    before_stop: int
    before_wrong: int  # of those: managed or reserved
    loss_stop: int  # before, with allow_instance_store_loss: true (the way out users took)
    loss_wrong: int  # of those: managed, reserved, or wiping local disks with data on them
    after_stop: int
    after_alert: dict[str, int]


def reach(name: str, result: CycleResult, config: Config) -> Reach:
    idle = [f for f in result.findings if f.decision.verdict is Verdict.IDLE]

    def before(finding: Finding) -> bool:
        inst = finding.instance
        return not inst.spot_one_time and not inst.has_instance_store

    def owned(finding: Finding) -> bool:
        return finding.instance.managed_by is not None or finding.instance.reserved

    def wiping(finding: Finding) -> bool:
        used = finding.local_disk_used
        return finding.instance.has_instance_store and used is not None and used[1] >= 1024

    plans = [enforce_plan(f, config, result.generated_at) for f in idle]
    alert = Counter(p.block.category for p in plans if p is not None and p.block is not None)
    loss = [f for f in idle if not f.instance.spot_one_time]
    return Reach(
        name,
        len(result.findings),
        len(idle),
        sum(1 for f in idle if before(f)),
        sum(1 for f in idle if before(f) and owned(f)),
        len(loss),
        sum(1 for f in loss if owned(f) or wiping(f)),
        sum(1 for p in plans if p is not None and p.block is None),
        dict(alert.most_common()),
    )


def demo_reach() -> Reach:
    from guardian.commands.audit import run_audit
    from guardian.simulated.demo_fleet import simulated_cloud

    with tempfile.TemporaryDirectory() as state, simulated_cloud(Path(state), _now()) as cloud:
        return reach("demo", run_audit(cloud.config), cloud.config)


def _now() -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0)


def _idle(rng: random.Random, busy: bool) -> list[object]:
    from guardian.simulated.aws import Reading

    if busy:
        return [Reading(rng.uniform(70, 99), 20_000.0) for _ in range(HISTORY)]
    ended = rng.randint(40, 100)
    work = [Reading(rng.uniform(70, 99), 20_000.0) for _ in range(HISTORY - ended)]
    return [*work, *[Reading(0.0, 0.0)] * ended]


def platform_reach() -> Reach:
    import boto3

    from guardian.simulated import moto_speedups
    from guardian.simulated.aws import (
        AGENT_NAMESPACE,
        SimInstance,
        fake_aws_env,
        gpu_datums,
        launch_autoscaling_group,
        reset_moto_server,
        seed_fleet,
        start_moto_server,
    )

    rng = random.Random(5)
    now = _now()
    server, endpoint = start_moto_server(indexed_metrics=True)
    reset_moto_server(endpoint)  # moto's backends are the process's: forget the demo's fleet
    saved = dict(os.environ)
    os.environ.update(fake_aws_env(endpoint))
    try:
        region = "us-east-1"
        ec2 = boto3.client("ec2", region_name=region)
        cloudwatch = boto3.client("cloudwatch", region_name=region)
        autoscaling = boto3.client("autoscaling", region_name=region)
        groups = [  # (name, type, min, desired, idle members, tags)
            ("train-g5-a", "g5.12xlarge", 2, 6, 4, {}),
            ("train-g5-b", "g5.12xlarge", 0, 3, 3, {}),
            ("eks-gpu-ng", "g5.2xlarge", 2, 8, 5,
             {"eks:cluster-name": "prod", "eks:nodegroup-name": "gpu-ng"}),
        ]  # fmt: skip
        datums: list[dict[str, object]] = []
        for name, kind, low, desired, idle, tags in groups:
            members = launch_autoscaling_group(
                ec2, autoscaling, name, kind, min_size=low, desired=desired,
                max_size=desired + 2, zone=f"{region}a", tags=tags,
            )  # fmt: skip
            moto_speedups.backdate_in_process(region, members, now - timedelta(days=2))
            gpus = 4 if kind == "g5.12xlarge" else 1
            for number, member in enumerate(members):
                trace = _idle(rng, busy=number >= idle)
                datums += gpu_datums(member, gpus, trace, now)  # type: ignore[arg-type]
        moto_speedups.put_in_process(region, datums, AGENT_NAMESPACE)

        def sims(kind: str, count: int, idle: int, **extra: object) -> list[SimInstance]:
            return [
                SimInstance(kind, _idle(rng, busy=n >= idle), **extra)  # type: ignore[arg-type]
                for n in range(count)
            ]

        karpenter = {"karpenter.sh/nodepool": "gpu", "eks:cluster-name": "prod"}
        fleet = [
            *sims("g6.xlarge", 4, 2, tags=karpenter),
            *sims("p4d.24xlarge", 1, 1, local_disk_used_mib=0.0),
            *sims("p4d.24xlarge", 1, 1, local_disk_used_mib=300 * 1024.0),
            *sims("p4d.24xlarge", 1, 0, local_disk_used_mib=0.0),
            *sims("p4d.24xlarge", 2, 2, reservation="cr-0p4d0000000000001"),
            *sims("g6.2xlarge", 10, 6),  # CloudWatch agent only: local disks not reported
            *sims("g5.4xlarge", 4, 4, local_disk_used_mib=0.0),  # guardian agent: unused
            *sims("g5.4xlarge", 1, 1, local_disk_used_mib=12 * 1024.0),
            *sims("g5.4xlarge", 1, 0, local_disk_used_mib=0.0),
            *sims("g5g.2xlarge", 3, 2),
            *sims("g6.xlarge", 2, 2, spot="one-time"),
            *sims("g5g.xlarge", 1, 1, disable_api_stop=True),
        ]
        seed_fleet(ec2, cloudwatch, fleet, now, in_process=True)
        with tempfile.TemporaryDirectory() as state:
            config = Config.model_validate(
                {"state_dir": state, "cost": {"lookback": "2h"}, "aws": {"regions": [region]}}
            )
            from guardian.providers.factory import build_providers

            providers = build_providers(config)
            try:
                result = audit_cycle(config, providers, load_catalog(Path(state)), now)
            finally:
                for provider in providers:
                    provider.close()
        return reach("platform", result, config)
    finally:
        server.stop()
        os.environ.clear()
        os.environ.update(saved)


def agent_calls() -> tuple[dict[str, int], dict[str, int]]:
    """EC2 (and STS) calls to re-read one instance: a fresh discovery vs ``describe``."""
    from guardian.providers.aws.discovery import GpuTypeCatalog
    from guardian.providers.aws.provider import AwsProvider
    from guardian.simulated.aws import (
        fake_aws_env,
        launch_gpu_instances,
        reset_moto_server,
        start_moto_server,
    )

    server, endpoint = start_moto_server(indexed_metrics=True)  # types paged by 100, as AWS
    reset_moto_server(endpoint)
    saved = dict(os.environ)
    os.environ.update(fake_aws_env(endpoint))
    try:
        import boto3

        ec2 = boto3.client("ec2", region_name="us-east-1")
        [instance_id] = launch_gpu_instances(ec2, "g5.xlarge")
        launch_gpu_instances(ec2, "g6.xlarge", count=3)  # the neighbours a discovery lists too
        config = Config.model_validate({"aws": {"regions": ["us-east-1"]}})
        old = AwsProvider(config, catalog=GpuTypeCatalog())
        found = next(i for i in old.discover().instances if i.instance_id == instance_id)
        before = old.api_calls
        old.close()
        new = AwsProvider(config, catalog=GpuTypeCatalog())
        new.describe(found)
        after = new.api_calls
        new.close()
        return before, after
    finally:
        server.stop()
        os.environ.clear()
        os.environ.update(saved)


def main(argv: Sequence[str] | None = None) -> int:
    del argv
    rows = [demo_reach(), platform_reach()]
    print("| fleet | GPU instances | idle | before: would stop (owned/reserved) "
          "| before, allow_instance_store_loss: true (owned/reserved/data wiped) "
          "| after: would stop | after: alert-only, why |")  # fmt: skip
    print("|---|--:|--:|--:|--:|--:|---|")
    for r in rows:
        why = ", ".join(f"{n} {reason}" for reason, n in r.after_alert.items())
        print(
            f"| {r.fleet} | {r.instances} | {r.idle} | {r.before_stop} ({r.before_wrong}) "
            f"| {r.loss_stop} ({r.loss_wrong}) | {r.after_stop} | {why} |"
        )
    before, after = agent_calls()
    print()
    print(f"agent re-reading its instance, first time: before {sum(before.values())} calls "
          f"{before}; after {sum(after.values())} calls {after}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
