"""The CLI as a user meets it: fast help without cloud SDKs, one-line errors, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

GUARDIAN = [sys.executable, "-m", "guardian"]
HEAVY = ("boto3", "botocore", "google.cloud", "google.api_core", "grpc", "moto", "pynvml")


def run(
    *args: str, env: dict[str, str] | None = None, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GUARDIAN, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def test_help_imports_no_cloud_sdk() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from guardian.cli import app\n"
        "result = CliRunner().invoke(app, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        f"heavy = [m for m in sys.modules if m.startswith({HEAVY!r})]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


def test_help_lists_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("audit", "demo", "check-config", "prices"):
        assert command in result.stdout


def test_unknown_key_is_one_line_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("idle:\n  windw: 30m\n")
    result = run("check-config", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.strip() == f"guardian: error: {config}: idle.windw: unknown key"
    assert "Traceback" not in result.stderr


def test_audit_bad_config_never_tracebacks(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("mode: destroy\n")
    result = run("audit", "--config", str(config))
    assert result.returncode == 2
    assert "mode:" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_check_config_masks_secrets(tmp_path: Path) -> None:
    config = tmp_path / "guardian.yaml"
    config.write_text(
        "notify:\n  urls: ['slack://T000/B000/verysecrettoken', "
        "'mailto://me:hunter2@mail.example.com']\n"
    )
    result = run("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "verysecrettoken" not in result.stdout
    assert "hunter2" not in result.stdout
    assert "slack://T000/***" in result.stdout


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_log_format_is_validated(fmt: str) -> None:
    result = run("--log-format", fmt, "check-config")
    assert result.returncode == 0, result.stderr
    bad = run("--log-format", "xml", "check-config")
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr


def no_credentials(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
        GUARDIAN_CONFIG=str(tmp_path / "guardian.yaml"),
    )
    (tmp_path / "guardian.yaml").write_text(
        f"state_dir: {tmp_path}\nmetrics: {{listen: ''}}\n", encoding="utf-8"
    )
    return env


@pytest.mark.parametrize("command", [("audit",), ("run", "--once")])
def test_nothing_audited_exits_2_with_one_line(tmp_path: Path, command: tuple[str, ...]) -> None:
    # A cron job must notice: "0 GPU instances ... 1 errors" is not a success (issue 12).
    result = subprocess.run(
        [*GUARDIAN, *command],
        capture_output=True,
        text=True,
        timeout=120,
        env=no_credentials(tmp_path),
        check=False,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("guardian: error:")]
    assert len(errors) == 1
    assert "nothing could be audited" in errors[0]
    assert "no AWS credentials found" in errors[0]
    assert "Traceback" not in result.stderr


def test_exit_code_goes_with_once() -> None:
    result = run("run", "--exit-code")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "guardian: error: --exit-code goes with --once: the daemon only exits on a signal"
    )


def test_audit_without_credentials_says_so_once_and_prints_no_data(tmp_path: Path) -> None:
    result = subprocess.run(
        [*GUARDIAN, "audit"],
        capture_output=True,
        text=True,
        timeout=120,
        env=no_credentials(tmp_path),
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("guardian: error:")]
    assert len(errors) == 1
    assert "no AWS credentials found" in errors[0]
    assert "Traceback" not in result.stderr
