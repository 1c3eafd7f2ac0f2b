"""Least privilege, proven: ``guardian audit``, the daemon's warn-and-stop (``guardian run
--once`` in ``mode: enforce``) and the agent's publish-and-autostop, against a moto server that
enforces IAM (``tests/moto_iam.py``), as users whose only permissions are a shipped policy file.

- With the whole file, everything works.
- With one Allow statement dropped, the command fails, or reports, in one line naming the
  permission it lacks (``ec2:DescribeInstances``).
- With one Deny statement dropped, the instance that statement protects can be stopped with
  the policy's keys; with the whole file IAM refuses it, and guardian never asks.

What moto cannot evaluate, and so is not proven here: ``PriceRefreshOnly`` (moto has no Pricing
API; ``tests/unit/test_price_refresh.py`` proves the message names ``pricing:GetProducts``),
and the agent's ``aws:ARN`` = ``${ec2:SourceInstanceARN}`` condition (a test user is not an
instance role; moto takes the condition to hold). The tag conditions of ``ec2:StopInstances``
are evaluated by the server's extension, not by moto itself: see ``tests/moto_iam.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from guardian.simulated.aws import (
    backdate_launch,
    constant,
    launch_autoscaling_group,
    launch_gpu_instances,
    put_gpu_metrics,
)
from tests.moto_iam import IamMoto, Keys, iam_moto_server

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "docs" / "iam-policy.json"
STANDBY = REPO / "docs" / "iam-policy-standby.json"
AGENT = REPO / "docs" / "iam-policy-agent.json"
GPU_TYPE = "g5g.xlarge"  # moto describes it without instance store: no local-disk gate
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

    def user(self, path: Path, drop: str | None = None) -> Keys:
        """A user carrying exactly ``path``'s policy, less the statement ``drop``."""
        name = f"{path.stem}-{drop or 'full'}"
        if name not in self.users:
            document = policy(path)
            self.users[name] = self.moto.user(name, without(document, drop) if drop else document)
        return self.users[name]

    def restart(self, instance_id: str) -> None:
        """Back to running and up three hours, as before a stop."""
        ec2 = self.moto.client("ec2")
        ec2.start_instances(InstanceIds=[instance_id])
        backdate_launch(ec2, [instance_id], self.now - timedelta(hours=3))

    def state(self, instance_id: str) -> str:
        answer = self.moto.client("ec2").describe_instances(InstanceIds=[instance_id])
        return str(answer["Reservations"][0]["Instances"][0]["State"]["Name"])


@contextlib.contextmanager
def aws_env(moto: IamMoto, keys: Keys) -> Iterator[None]:
    """The process's environment as a user of these keys would have it, restored after."""
    saved = dict(os.environ)
    for name in [n for n in os.environ if n.startswith(("AWS_", "GUARDIAN_CONFIG"))]:
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
        }
    )
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str


def guardian(moto: IamMoto, keys: Keys, *args: str) -> Outcome:
    """``guardian ARGS`` in this process (its entry point, as the console script calls it)."""
    from guardian.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    argv = sys.argv
    sys.argv = ["guardian", *args]
    try:
        with aws_env(moto, keys), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = argv
    return Outcome(code, out.getvalue(), err.getvalue())


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


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("least-privilege")
    with iam_moto_server(workdir, [GPU_TYPE]) as moto:
        now = datetime.now(UTC).replace(microsecond=0)
        idle, protected, owned = seed(moto, now)
        yield World(moto, idle, protected, owned, workdir, now)


def warn_then_stop(world: World, keys: Keys, name: str) -> list[Outcome]:
    """Two ``guardian run --once`` in enforce mode with no grace: the first warns, the second
    stops (each on its own state dir, so each user starts from scratch)."""
    config = write_config(world.workdir / name)
    return [guardian(world.moto, keys, "run", "--once", "--config", str(config)) for _ in "12"]


def lines_naming(outcomes: list[Outcome], permissions: list[str]) -> list[str]:
    text = "\n".join(o.stderr for o in outcomes)
    return [line for line in text.splitlines() if any(p in line for p in permissions)]


# -- the whole policy ---------------------------------------------------------------------------


def test_the_audit_works_with_the_shipped_policy(world: World) -> None:
    config = write_config(world.workdir / "audit", mode="audit")
    keys = world.user(BASE)
    outcome = guardian(world.moto, keys, "audit", "--format", "json", "--config", str(config))
    assert outcome.code == 0, outcome.stderr
    findings = {f["instance_id"]: f for f in json.loads(outcome.stdout)["findings"]}
    assert findings[world.idle]["verdict"] == "idle"
    assert findings[world.protected]["verdict"] == "protected"
    assert {findings[i]["verdict"] for i in world.owned.values()} == {"idle"}
    assert "AccessDenied" not in outcome.stderr


@pytest.mark.parametrize("path", [BASE, STANDBY], ids=["base", "standby"])
def test_the_daemon_warns_then_stops_with_the_shipped_policy(world: World, path: Path) -> None:
    keys = world.user(path)
    outcomes = warn_then_stop(world, keys, f"run-{path.stem}")
    try:
        assert [o.code for o in outcomes] == [0, 0], outcomes[-1].stderr
        assert "1 warned, 0 stopped" in outcomes[0].stderr
        assert "0 warned, 1 stopped" in outcomes[1].stderr
        assert world.state(world.idle) in ("stopping", "stopped")
        # guardian asked IAM to stop the idle instance, and nothing else.
        assert [(i, d) for u, i, d in world.moto.stops_asked() if u == keys.user] == [
            (world.idle, "allowed")
        ]
        assert "AccessDenied" not in "".join(o.stderr for o in outcomes)
    finally:
        world.restart(world.idle)


# -- one Allow statement dropped ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "sid"),
    # The standby file's Allow statements are the base file's, word for word (checked below),
    # plus EnterStandby, which moto cannot scope (it checks every Auto Scaling call on "*").
    [(BASE, sid) for sid in statements(BASE, "Allow") if sid not in NOT_IN_MOTO],
    ids=lambda v: v.stem if isinstance(v, Path) else v,
)
def test_without_an_allow_statement_guardian_names_the_permission(
    world: World, path: Path, sid: str
) -> None:
    keys = world.user(path, drop=sid)
    [statement] = [s for s in policy(path)["Statement"] if s["Sid"] == sid]
    outcomes = warn_then_stop(world, keys, f"drop-{path.stem}-{sid}")
    try:
        named = lines_naming(outcomes, actions(statement))
        assert named, "\n".join(o.stderr for o in outcomes)
        assert all("AccessDenied" in line for line in named)
        if sid == "EnforceModeReadStopProtectionAndGroupCapacity":
            # By design (guardian/daemon/enforce.py): stop protection it cannot read is a
            # warning, not a gate, because EC2 itself refuses to stop a DisableApiStop instance.
            assert any("aws_stop_protection_unread" in line for line in named)
        else:
            # ...and the permission it lacks never turned into a stop.
            assert world.state(world.idle) == "running"
    finally:
        if world.state(world.idle) != "running":
            world.restart(world.idle)


# -- the Deny statements ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "sid"),
    [
        (path, sid)
        for path in (BASE, STANDBY, AGENT)
        for sid in statements(path, "Deny")
        if sid in OWNER_TAGS
    ],
    ids=lambda v: v.stem if isinstance(v, Path) else v,
)
def test_a_deny_statement_alone_refuses_the_stop_of_what_a_controller_owns(
    world: World, path: Path, sid: str
) -> None:
    """With the whole policy IAM refuses to stop the instance carrying the statement's tag;
    without that one statement the same keys stop it: each Deny holds, and holds on its own."""
    from botocore.exceptions import ClientError

    instance_id = world.owned[sid]
    full = world.user(path).client(world.moto.endpoint_url, "ec2")
    with pytest.raises(ClientError, match="AccessDenied"):
        full.stop_instances(InstanceIds=[instance_id])
    assert world.state(instance_id) == "running"
    dropped = world.user(path, drop=sid).client(world.moto.endpoint_url, "ec2")
    try:
        dropped.stop_instances(InstanceIds=[instance_id])
        assert world.state(instance_id) in ("stopping", "stopped")
    finally:
        world.restart(instance_id)


@pytest.mark.parametrize("path", [BASE, STANDBY, AGENT], ids=lambda p: p.stem)
def test_the_policy_refuses_to_stop_a_protected_instance_and_guardian_never_asks(
    world: World, path: Path
) -> None:
    from botocore.exceptions import ClientError

    ec2 = world.user(path).client(world.moto.endpoint_url, "ec2")
    with pytest.raises(ClientError, match="AccessDenied"):
        ec2.stop_instances(InstanceIds=[world.protected])
    with pytest.raises(ClientError, match="AccessDenied"):
        ec2.terminate_instances(InstanceIds=[world.idle])
    # Every daemon run of this module (they run first: pytest keeps the file's order) asked
    # IAM to stop the idle instance only; the direct calls above were made as "-full" users.
    asked_by_guardian = {i for u, i, _ in world.moto.stops_asked() if not u.endswith("-full")}
    asked_by_guardian -= set(world.owned.values())  # the Deny test's own direct calls
    assert asked_by_guardian <= {world.idle}


def test_the_standby_file_allows_what_the_base_file_allows_plus_standby() -> None:
    base = {s["Sid"]: s for s in policy(BASE)["Statement"] if s["Effect"] == "Allow"}
    standby = {s["Sid"]: s for s in policy(STANDBY)["Statement"] if s["Effect"] == "Allow"}
    assert {sid: standby[sid] for sid in base} == base
    assert set(standby) - set(base) == {"StandbyModeOnlyPlainAutoScalingGroups"}
