"""Least privilege, proven: ``guardian audit``, the daemon's warn-and-stop (``guardian run
--once`` in ``mode: enforce``) and the agent's publish-and-autostop, against a moto server that
enforces IAM (``tests/moto_iam.py``), as users whose only permissions are a shipped policy file.

- With the whole file, everything works.
- With one Allow statement dropped, the command fails, or reports, in one line naming the
  permission it lacks (``ec2:DescribeInstances``).
- With one Deny statement dropped, the instance that statement protects can be stopped with
  the policy's keys; with the whole file IAM refuses it, and guardian never asks.

- The agent's keys stop its own instance only: ``aws:ARN`` = ``${ec2:SourceInstanceARN}``.

What moto cannot evaluate, and so is not proven here: ``PriceRefreshOnly`` (moto has no Pricing
API; ``tests/unit/test_price_refresh.py`` proves the message names ``pricing:GetProducts``) and
the scoping of ``autoscaling:EnterStandby`` (moto checks every Auto Scaling call on ``"*"``).
The conditions of ``ec2:StopInstances`` are evaluated by the server's extension, not by moto
itself, and a test user stands for an instance role by an IAM tag naming its instance: see
``tests/moto_iam.py``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from guardian.simulated.aws import launch_gpu_instances
from tests.e2e.least_privilege import (
    AGENT,
    AGENT_REGION,
    AGENT_ZONE,
    BASE,
    GPU_TYPE,
    NOT_IN_MOTO,
    OWNER_TAGS,
    STANDBY,
    Outcome,
    World,
    actions,
    dry_run_stop,
    guardian,
    policy,
    run_agent,
    seed,
    statements,
    write_config,
)
from tests.moto_iam import Keys, iam_moto_server, instance_arn


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("least-privilege")
    with iam_moto_server(workdir, [GPU_TYPE]) as moto:
        now = datetime.now(UTC).replace(microsecond=0)
        idle, protected, owned = seed(moto, now)
        yield World(moto, idle, protected, owned, workdir, now)


@pytest.fixture(scope="module")
def warned(world: World) -> tuple[Path, Outcome]:
    """A state directory in which the daemon, as a user of the whole ``docs/iam-policy.json``,
    has warned about the idle instance (grace 0s: its next cycle stops it), and that cycle."""
    directory = world.workdir / "warned"
    config = write_config(directory)
    return directory, guardian(
        world.moto, world.user(BASE), "run", "--once", "--config", str(config)
    )


def stop_cycle(world: World, warned: tuple[Path, Outcome], keys: Keys, name: str) -> Outcome:
    """One ``guardian run --once`` as ``keys``, from (a copy of) the warned state."""
    directory = world.workdir / name
    shutil.copytree(warned[0], directory)
    config = write_config(directory)
    return guardian(world.moto, keys, "run", "--once", "--config", str(config))


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
    assert outcome.stops_asked == []


def test_the_daemon_warns_then_stops_with_the_shipped_policy(
    world: World, warned: tuple[Path, Outcome]
) -> None:
    """``docs/iam-policy-standby.json`` allows all this too: its Allow statements are this
    file's plus EnterStandby (the last test), and its Deny statements name owner tags only."""
    keys = world.user(BASE)
    warning = warned[1]
    stop = stop_cycle(world, warned, keys, "run-full")
    try:
        assert [warning.code, stop.code] == [0, 0], warning.stderr + stop.stderr
        assert "1 warned, 0 stopped" in warning.stderr
        assert "0 warned, 1 stopped" in stop.stderr
        assert world.state(world.idle) in ("stopping", "stopped")
        # guardian asked IAM to stop the idle instance, and nothing else (not the protected
        # one, none of those a controller owns, all as idle): IAM never had to refuse it.
        assert warning.stops_asked == []
        assert stop.stops_asked == [world.idle]
        assert "AccessDenied" not in warning.stderr + stop.stderr
    finally:
        world.restart(world.idle)


# -- one Allow statement dropped ------------------------------------------------------------------


@pytest.mark.parametrize(
    "sid",
    # The standby file's Allow statements are the base file's, word for word (checked below),
    # plus EnterStandby, which moto cannot scope (it checks every Auto Scaling call on "*").
    [sid for sid in statements(BASE, "Allow") if sid not in NOT_IN_MOTO],
)
def test_without_an_allow_statement_guardian_names_the_permission(
    world: World, warned: tuple[Path, Outcome], sid: str
) -> None:
    keys = world.user(BASE, drop=sid)
    [statement] = [s for s in policy(BASE)["Statement"] if s["Sid"] == sid]
    if sid == "EnforceModeReadStopProtectionAndGroupCapacity":
        # What it allows is read before a warning: the warning cycle, from scratch.
        config = write_config(world.workdir / f"drop-{sid}")
        outcome = guardian(world.moto, keys, "run", "--once", "--config", str(config))
    else:
        outcome = stop_cycle(world, warned, keys, f"drop-{sid}")
    try:
        named = lines_naming([outcome], actions(statement))
        assert named, outcome.stderr
        assert all("AccessDenied" in line for line in named)
        assert all("<" not in line for line in named)  # no raw XML error body
        if sid == "EnforceModeReadStopProtectionAndGroupCapacity":
            # By design (guardian/daemon/enforce.py): stop protection it cannot read is a
            # warning, not a gate, because EC2 itself refuses to stop a DisableApiStop instance.
            assert any("aws_stop_protection_unread" in line for line in named)
            assert "1 warned" in outcome.stderr
        else:
            # ...and the permission it lacks never turned into a stop.
            assert world.state(world.idle) == "running"
        expected = [world.idle] if sid == "EnforceModeOnlyStopUnprotectedInstances" else []
        assert outcome.stops_asked == expected
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
    without that one statement the same keys may: each Deny holds, and holds on its own."""
    instance_id = world.owned[sid]
    # The agent's keys are its own instance's role (it may stop no other): here, that one's.
    on = instance_arn("us-east-1", instance_id) if path == AGENT else None
    assert dry_run_stop(world.user(path, on_instance=on), world, instance_id) == "AccessDenied"
    dropped = world.user(path, drop=sid, on_instance=on)
    assert dry_run_stop(dropped, world, instance_id) == "DryRunOperation"
    assert world.state(instance_id) == "running"


@pytest.mark.parametrize("path", [BASE, STANDBY, AGENT], ids=lambda p: p.stem)
def test_the_policy_refuses_to_stop_a_protected_instance(world: World, path: Path) -> None:
    """guardian never asks (each run above checks what it asked); IAM would refuse anyway."""
    on = instance_arn("us-east-1", world.protected) if path == AGENT else None
    keys = world.user(path, on_instance=on)
    assert dry_run_stop(keys, world, world.protected) == "AccessDenied"
    # ...while the same keys may stop an unprotected instance (their own, for the agent's):
    # the refusal is the protect tag's.
    on_idle = instance_arn("us-east-1", world.idle) if path == AGENT else None
    assert dry_run_stop(world.user(path, on_instance=on_idle), world, world.idle) == (
        "DryRunOperation"
    )
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match="AccessDenied"):
        keys.client(world.moto.endpoint_url, "ec2").terminate_instances(InstanceIds=[world.idle])


def test_the_standby_file_allows_what_the_base_file_allows_plus_standby() -> None:
    base = {s["Sid"]: s for s in policy(BASE)["Statement"] if s["Effect"] == "Allow"}
    standby = {s["Sid"]: s for s in policy(STANDBY)["Statement"] if s["Effect"] == "Allow"}
    assert {sid: standby[sid] for sid in base} == base
    assert set(standby) - set(base) == {"StandbyModeOnlyPlainAutoScalingGroups"}
    # Its Deny statements refuse only what carries an owner's tag: the plain idle instance of
    # the daemon's run above is stopped the same with either file.
    for statement in policy(STANDBY)["Statement"]:
        if statement["Effect"] == "Deny":
            assert set(statement["Condition"]) == {"Null"}
            assert all(k.startswith("aws:ResourceTag/") for k in statement["Condition"]["Null"])


# -- the agent: publish and autostop, as its own instance's role ---------------------------------


def test_the_agent_publishes_and_stops_its_own_instance_with_the_shipped_policy(
    world: World,
) -> None:
    run = run_agent(world)
    assert run.published
    assert run.stopped
    assert world.state(run.instance_id, AGENT_REGION) in ("stopping", "stopped")
    assert run.stops_asked == [run.instance_id]
    failures = [e for e in run.events if e["log_level"] in ("warning", "error")]
    assert {e["event"] for e in failures} == {"autostop_warned", "instance_stopped"}, failures


AGENT_EXPECTED = {
    # Sid -> (the event that says so, what the instance is left as)
    "PublishGpuMetrics": ("publish_failed", "stopped"),  # metrics are not needed to stop
    "ReadOwnInstance": ("instance_refresh_failed", "running"),  # never a stop on stale facts
    "AutostopOnlyThisInstanceUnlessProtected": ("autostop_failed", "running"),
}


@pytest.mark.parametrize("sid", statements(AGENT, "Allow"))
def test_without_an_allow_statement_the_agent_names_the_permission(world: World, sid: str) -> None:
    event, left = AGENT_EXPECTED[sid]
    [statement] = [s for s in policy(AGENT)["Statement"] if s["Sid"] == sid]
    run = run_agent(world, drop=sid)
    said = [e for e in run.events if e["event"] == event]
    assert said, run.events
    error = str(said[0]["error"])
    assert any(action in error for action in actions(statement)), error
    assert "AccessDenied" in error
    assert "\n" not in error
    assert "<" not in error  # no raw XML error body
    if event == "publish_failed":  # the agent's own policy file, not the daemon's
        assert "see docs/iam-policy-agent.json" in error
    state = world.state(run.instance_id, AGENT_REGION)
    assert (state in ("stopping", "stopped")) == (left == "stopped"), state
    assert run.published == (sid != "PublishGpuMetrics")


def test_the_agent_policy_stops_its_own_instance_only(world: World) -> None:
    """``aws:ARN`` = ``${ec2:SourceInstanceARN}``: an instance's role may stop that instance,
    no other, and keys from no instance (no source ARN) none."""
    ec2 = world.moto.client("ec2", AGENT_REGION)
    mine, other = launch_gpu_instances(ec2, GPU_TYPE, count=2, zone=AGENT_ZONE)
    keys = world.user(AGENT, on_instance=instance_arn(AGENT_REGION, mine))
    assert dry_run_stop(keys, world, mine, AGENT_REGION) == "DryRunOperation"
    assert dry_run_stop(keys, world, other, AGENT_REGION) == "AccessDenied"
    assert dry_run_stop(world.user(AGENT), world, mine, AGENT_REGION) == "AccessDenied"
    # ...and the same instance id in another region is another instance.
    elsewhere = world.user(AGENT, on_instance=instance_arn("eu-west-1", mine))
    assert dry_run_stop(elsewhere, world, mine, AGENT_REGION) == "AccessDenied"
