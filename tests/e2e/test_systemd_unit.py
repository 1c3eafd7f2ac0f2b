"""The shipped systemd unit: the directives the daemon relies on, and its exposure score."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guardian.cli import app

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "gpu-guardian.service"
EXPOSURE_GOAL = 2.0


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_unit_matches_what_the_daemon_does() -> None:
    unit = directives()
    assert unit["Type"] == ["notify"]  # guardian sends READY=1 and WATCHDOG=1
    assert unit["NotifyAccess"] == ["main"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # SIGHUP reloads the config
    assert unit["KillSignal"] == ["SIGTERM"]
    assert re.fullmatch(r"\d+min", unit["WatchdogSec"][0])
    assert unit["User"] == ["gpu-guardian"]
    assert unit["StateDirectory"] == ["gpu-guardian"]  # = the default state_dir
    assert unit["ConfigurationDirectory"] == ["gpu-guardian"]
    assert unit["CapabilityBoundingSet"] == [""]
    assert "AF_UNIX" in unit["RestrictAddressFamilies"][0]  # the notify socket
    assert "tcp:9464" in unit["SocketBindAllow"]  # metrics.listen's default port


def test_exec_start_is_a_valid_command_line() -> None:
    argv = shlex.split(directives()["ExecStart"][0])
    assert argv[0].endswith("/guardian")
    result = CliRunner().invoke(app, [*argv[1:], "--help"])
    assert result.exit_code == 0, result.output
    assert "--config" in result.output


def test_exposure_score_is_at_most_two() -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip(
            "systemd-analyze is not installed, so the exposure score cannot be measured here "
            "(apt-get install systemd provides it)"
        )
    done = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    score = float(match.group(1))
    print(f"\nsystemd-analyze security exposure: {score}")
    assert score <= EXPOSURE_GOAL
