"""The world of ``test_least_privilege.py``: users carrying a shipped policy file, guardian's
commands and the node agent run as them, in this process, against ``tests/moto_iam.py``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

from guardian.simulated.aws import (
    backdate_launch,
    constant,
    launch_autoscaling_group,
    launch_gpu_instances,
    put_gpu_metrics,
)
from tests.moto_iam import IamMoto, Keys, instance_arn

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "docs" / "iam-policy.json"
STANDBY = REPO / "docs" / "iam-policy-standby.json"
AGENT = REPO / "docs" / "iam-policy-agent.json"
GPU_TYPE = "g5g.xlarge"  # moto describes it without instance store: no local-disk gate
# The agents' machines: a region the daemon (us-east-1 only) never looks at.
AGENT_REGION, AGENT_ZONE = "us-west-2", "us-west-2a"
OWNER_TAGS = {
    "NeverStopAutoScalingGroupMembers": "aws:autoscaling:groupName",
    "NeverStopEksNodeGroupNodes": "eks:nodegroup-name",
    "NeverStopEksClusterNodes": "eks:cluster-name",
    "NeverStopKarpenterNodes": "karpenter.sh/nodepool",
    "NeverStopEc2FleetInstances": "aws:ec2:fleet-id",
    "NeverStopSpotFleetInstances": "aws:ec2spot:fleet-request-id",
    "NeverStopBatchInstances": "AWSBatchServiceTag",
    "NeverStopParallelClusterNodes": "parallelcluster:cluster-name",
    "NeverStopEmrInstances": "aws:elasticmapreduce:job-flow-id",
}
NOT_IN_MOTO = {"PriceRefreshOnly"}


def policy(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def without(document: Mapping[str, Any], sid: str) -> dict[str, Any]:
    return {**document, "Statement": [s for s in document["Statement"] if s["Sid"] != sid]}


def actions(statement: Mapping[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def statements(path: Path, effect: str) -> list[str]:
    return [s["Sid"] for s in policy(path)["Statement"] if s["Effect"] == effect]


@dataclass
class World:
    moto: IamMoto
    idle: str  # plain, idle 40 min with its memory released: guardian stops it
    protected: str  # the same, tagged guardian:protect=true
    owned: dict[str, str]  # Deny statement's Sid -> an idle instance carrying its tag
    workdir: Path
    now: datetime
    users: dict[str, Keys] = field(default_factory=dict)

    def user(self, path: Path, drop: str | None = None, *, on_instance: str | None = None) -> Keys:
        """A user carrying exactly ``path``'s policy, less the statement ``drop``; with
        ``on_instance`` (an ARN), the role of that instance (see ``IamMoto.user``)."""
        key = f"{path.stem}-{drop or 'full'}-{on_instance}"
        if key not in self.users:
            document = policy(path)
            self.users[key] = self.moto.user(
                f"u{len(self.users)}-{drop or 'full'}",
                without(document, drop) if drop else document,
                on_instance=on_instance,
            )
        return self.users[key]

    def restart(self, instance_id: str, region: str = "us-east-1") -> None:
        """Back to running and up three hours, as before a stop."""
        ec2 = self.moto.client("ec2", region)
        ec2.start_instances(InstanceIds=[instance_id])
        backdate_launch(ec2, [instance_id], self.now - timedelta(hours=3))

    def state(self, instance_id: str, region: str = "us-east-1") -> str:
        answer = self.moto.client("ec2", region).describe_instances(InstanceIds=[instance_id])
        return str(answer["Reservations"][0]["Instances"][0]["State"]["Name"])


@contextlib.contextmanager
def aws_env(moto: IamMoto, keys: Keys, **extra: str) -> Iterator[None]:
    """The process's environment as a user of these keys would have it, restored after.

    boto3's default session (``boto3.client``: the agent's CloudWatch client) keeps the first
    credentials it resolved, for the life of the process: it is dropped on the way in and out.
    """
    import boto3

    saved = dict(os.environ)
    boto3.DEFAULT_SESSION = None
    for name in [n for n in os.environ if n.startswith(("AWS_", "GUARDIAN_"))]:
        del os.environ[name]
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": moto.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_DISABLE_REQUEST_COMPRESSION": "true",  # see Keys.client
            **keys.env(),
            **extra,
        }
    )
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        boto3.DEFAULT_SESSION = None


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str
    stops_asked: list[str]  # the instances it asked IAM to stop


def guardian(moto: IamMoto, keys: Keys, *args: str) -> Outcome:
    """``guardian ARGS`` in this process (its entry point, as the console script calls it)."""
    from guardian.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    argv = sys.argv
    sys.argv = ["guardian", *args]
    before = len(moto.stops_asked())
    try:
        with aws_env(moto, keys), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = argv
    asked = [i for u, i, _ in moto.stops_asked()[before:] if u == keys.user]
    return Outcome(code, out.getvalue(), err.getvalue(), asked)


def write_config(directory: Path, **overrides: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "mode": "enforce",
        "state_dir": str(directory),
        "metrics": {"listen": ""},
        "cost": {"lookback": "1h"},
        "idle": {"grace": "0s", "window_released": "10m"},
        "limits": {"max_idle_fraction": 1.0, "max_stops_per_cycle": 20},
        **overrides,
    }
    path = directory / "guardian.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def seed(moto: IamMoto, now: datetime) -> tuple[str, str, dict[str, str]]:
    ec2, cloudwatch = moto.client("ec2"), moto.client("cloudwatch")
    [idle] = launch_gpu_instances(ec2, GPU_TYPE, tags={"Name": "done"}, zone="us-east-1a")
    [protected] = launch_gpu_instances(
        ec2, GPU_TYPE, tags={"Name": "kept", "guardian:protect": "true"}, zone="us-east-1a"
    )
    owned = {
        sid: launch_gpu_instances(ec2, GPU_TYPE, tags={tag: "x"}, zone="us-east-1a")[0]
        for sid, tag in OWNER_TAGS.items()
        if sid != "NeverStopAutoScalingGroupMembers"
    }
    [member, _] = launch_autoscaling_group(
        ec2,
        moto.client("autoscaling"),
        "gpu-pool",
        GPU_TYPE,
        min_size=0,
        desired=2,
        max_size=2,
        zone="us-east-1a",
    )
    owned["NeverStopAutoScalingGroupMembers"] = member
    every = [idle, protected, *owned.values()]
    for instance_id in every:
        put_gpu_metrics(cloudwatch, instance_id, 1, constant(0.0, 0.0, 40), now)
    backdate_launch(ec2, every, now - timedelta(hours=3))
    return idle, protected, owned


def dry_run_stop(keys: Keys, world: World, instance_id: str, region: str = "us-east-1") -> str:
    """The error code of a ``DryRun`` StopInstances as ``keys``: ``DryRunOperation`` when IAM
    allows it (moto checks IAM first), ``AccessDenied`` when not. Nothing is stopped."""
    from botocore.exceptions import ClientError

    ec2 = keys.client(world.moto.endpoint_url, "ec2", region)
    with pytest.raises(ClientError) as raised:
        ec2.stop_instances(InstanceIds=[instance_id], DryRun=True)
    return str(raised.value.response["Error"]["Code"])


@dataclass(frozen=True)
class AgentRun:
    instance_id: str
    stopped: bool  # what autostop reported
    events: list[dict[str, Any]]  # what it logged (structlog's event dicts)
    published: bool  # its GPU metrics reached CloudWatch
    stops_asked: list[str]


def run_agent(world: World, drop: str | None = None, *, polls: int = 16) -> AgentRun:
    """``guardian agent`` (build_agent, the fake NVML backend ``fake:idle``) on an instance of
    its own in ``AGENT_REGION``, with that instance's role carrying ``docs/iam-policy-agent.json``
    less ``drop``: it publishes every minute and stops the machine 1 min after warning."""
    from guardian.agent.gpu.fake import ManualClock
    from guardian.agent.status import RunDir
    from guardian.commands.agent import build_agent
    from guardian.config import parse_config
    from tests.fakes.local_disks import FakeBlockTree
    from tests.integration.test_agent_cloud import DOCUMENT, FakeImds

    ec2 = world.moto.client("ec2", AGENT_REGION)
    [instance_id] = launch_gpu_instances(ec2, GPU_TYPE, tags={"Name": "agent"}, zone=AGENT_ZONE)
    keys = world.user(AGENT, drop, on_instance=instance_arn(AGENT_REGION, instance_id))
    imds = FakeImds(
        {
            **DOCUMENT,
            "instanceId": instance_id,
            "region": AGENT_REGION,
            "availabilityZone": AGENT_ZONE,
        },
        None,
        "on-demand",
    )
    directory = world.workdir / f"agent-{instance_id}"
    config = parse_config(
        {
            "agent": {"interval": "30s", "listen": "", "autostop": True, "publish": "cloudwatch"},
            "idle": {"window_released": "5m", "grace": "1m"},
        }
    )
    clock = ManualClock(world.now - timedelta(minutes=30))
    before = len(world.moto.stops_asked())
    stopped = False
    try:
        with aws_env(world.moto, keys, GUARDIAN_IMDS_ENDPOINT=imds.url), capture_logs() as events:
            agent, providers = build_agent(
                config,
                backend="fake:idle",
                run_dir=RunDir(directory / "run"),
                clock=clock,
                wall=(),
                launch_time=clock.now() - timedelta(hours=1),
                local_disks=FakeBlockTree(directory / "machine").probe(),
            )
            try:
                for _ in range(polls):
                    result = agent.poll()
                    clock.advance(30)
                    if result.autostop is not None and result.autostop.stopped:
                        stopped = True
                        break
            finally:
                agent.close()
                for provider in providers:
                    provider.close()
    finally:
        imds.close()
    listed = world.moto.client("cloudwatch", AGENT_REGION).list_metrics(
        Namespace="CWAgent", Dimensions=[{"Name": "InstanceId", "Value": instance_id}]
    )
    asked = [i for u, i, _ in world.moto.stops_asked()[before:] if u == keys.user]
    return AgentRun(instance_id, stopped, events, bool(listed["Metrics"]), asked)
