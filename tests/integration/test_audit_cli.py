"""`guardian audit` as a user runs it, against the moto server: formats, --region, --exit-code."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from guardian.simulated.aws import SimInstance, constant, seed_fleet
from tests.conftest import MotoServer


def known_types(state_dir: Path, regions: tuple[str, ...]) -> None:
    """The instance-type catalog a first audit would leave in the state dir, from moto's own
    copy: the audits here then skip moto's one-page listing of 1,400 types, several seconds
    that a loaded machine can stretch past an interactive command's 15 s read timeout."""
    from dataclasses import asdict

    from moto.ec2.models.instance_types import INSTANCE_TYPES

    from guardian.providers.aws.discovery import gpu_type_from
    from guardian.providers.aws.type_cache import TypeCacheFile

    gpu = {name: asdict(t) for name, info in INSTANCE_TYPES.items() if (t := gpu_type_from(info))}
    cache = TypeCacheFile(state_dir)
    for region in regions:
        cache.save("123456789012", region, frozenset(INSTANCE_TYPES), gpu)


def audit(tmp_path: Path, *args: str, command: str = "audit") -> subprocess.CompletedProcess[str]:
    known_types(tmp_path, ("us-east-1", "eu-west-1"))
    config = tmp_path / "guardian.yaml"
    config.write_text(
        f"state_dir: {tmp_path}\nmetrics: {{listen: ''}}\n"
        "aws: {regions: [us-east-1, eu-west-1]}\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "guardian", *command.split(), "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        check=False,
    )


def seed(moto_server: MotoServer) -> None:
    now = datetime.now(UTC)
    idle = constant(95.0, 20_000.0, 60) + constant(0.0, 0.0, 30)  # job ended 30 min ago
    for region, spec in (
        ("us-east-1", SimInstance("g5g.xlarge", idle, tags={"Name": "done"})),
        (
            "eu-west-1",
            SimInstance("g5.xlarge", constant(90.0, 20_000.0, 90), tags={"Name": "busy"}),
        ),
    ):
        ec2 = moto_server.client("ec2", region)
        seed_fleet(ec2, moto_server.client("cloudwatch", region), [spec], now)


def test_json_csv_region_and_exit_code(moto_server: MotoServer, tmp_path: Path) -> None:
    seed(moto_server)

    result = audit(tmp_path, "--format", "json", "--exit-code")
    assert result.returncode == 1, result.stderr  # something is idle
    document = json.loads(result.stdout)
    verdicts = {f["name"]: f["verdict"] for f in document["findings"]}
    assert verdicts == {"done": "idle", "busy": "busy"}
    assert document["totals"]["by_verdict"]["idle"] == 1
    done = next(f for f in document["findings"] if f["name"] == "done")
    assert (done["enforce"], done["managed_by"], done["reserved"]) == ("stop", None, False)
    assert document["totals"]["enforce"] == {
        "idle": 1, "stop": 1, "standby+stop": 0, "alert": 0, "alert_by_reason": {},
    }  # fmt: skip

    only_eu = audit(tmp_path, "--format", "csv", "--region", "eu-west-1", "--exit-code")
    assert only_eu.returncode == 0, only_eu.stderr  # nothing idle there
    rows = list(csv.DictReader(io.StringIO(only_eu.stdout)))
    assert [(r["name"], r["region"], r["verdict"]) for r in rows] == [("busy", "eu-west-1", "busy")]

    table = audit(tmp_path)
    assert table.returncode == 0  # without --exit-code an idle instance is not an error
    assert "done" in table.stdout
    assert "idle burn" in table.stdout
    assert "If enforced, 1 idle: 1 would be stopped" in table.stdout

    # `run --once` keeps the same contract (issue 12).
    once = audit(tmp_path, "--exit-code", command="run --once")
    assert once.returncode == 1, once.stderr
    assert "2 GPU instances, 1 idle" in once.stderr


def test_check_config_probe_warns_when_enforce_would_stop_nothing(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    idle = constant(95.0, 20_000.0, 60) + constant(0.0, 0.0, 30)
    ec2, cloudwatch = moto_server.client("ec2"), moto_server.client("cloudwatch")
    # Instance store and no agent reading it: the CloudWatch agent alone publishes GPU metrics.
    seed_fleet(ec2, cloudwatch, [SimInstance("g5.xlarge", idle, count=2)], now)
    known_types(tmp_path, ("us-east-1",))
    config = tmp_path / "guardian.yaml"
    config.write_text(f"mode: enforce\nstate_dir: {tmp_path}\ncost: {{lookback: 2h}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "guardian", "check-config", "--probe", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "# aws: credentials OK" in result.stdout
    assert (
        "# warning: mode: enforce would stop none of them: 2 GPU instances seen, if idle: "
        "0 would be stopped, 2 alert-only: 2 local disk not reported"
    ) in result.stderr


def test_rightsize_command_lists_recommendations_and_marks_the_rest(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    seed(moto_server)
    result = audit(tmp_path, "--format", "json", command="rightsize")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    # Both already run on the cheapest type their measured work fits: nothing to recommend,
    # and each says why.
    assert document["recommendations"] == []
    assert document["totals"] == {"recommendations": 0, "saves_usd_month": 0}
    notes = {r["name"]: r["note"] for r in document["no_recommendation"]}
    assert set(notes) == {"done", "busy"}
    assert all(note.startswith("no cheaper type in ") for note in notes.values())
