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
    for command in ("audit", "rightsize", "demo", "check-config", "prices"):
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
    result = in_process("run", "--exit-code")
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


# ---- a user's mistake is one line, never a traceback or a box (issue 12) ------------------


def in_process(*args: str) -> subprocess.CompletedProcess[str]:
    """``guardian ARGS`` through ``guardian.cli.main`` in this process: the console script's
    parsing and error handling, without starting an interpreter (seconds a case)."""
    import contextlib
    import io

    from guardian.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    saved = sys.argv
    sys.argv = ["guardian", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "╭" not in result.stderr  # no box drawn around it
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("guardian: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("check-config", "--config", "."), "cannot read config file .: Is a directory"),
        (("audit", "--bogus"), "No such option: --bogus (see guardian audit --help)"),
        (("backtest", "--synthetic", "--top", "x"), "Invalid value for '--top'"),
        (("backtest", "--synthetic", "--top", "-3"), "'--top': Input should be greater than or"),
        (("history", "--since", "100000d"), "--since: at most 3650d"),
        (("audit", "--region", "us-central1"), "--region us-central1: not a region of an enabled"),
        (("backtest", "--trace", "."), "is a directory"),
    ],
)
def test_command_line_mistakes_are_one_line(args: tuple[str, ...], message: str) -> None:
    assert message in one_error_line(in_process(*args))


def test_a_config_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "latin1.yaml"
    config.write_bytes("mode: notify\n# café\n".encode("latin-1"))
    line = one_error_line(in_process("check-config", "--config", str(config)))
    assert line == f"guardian: error: {config} line 2: not UTF-8 text (byte 0xe9); save it as UTF-8"


@pytest.mark.parametrize("state_url", ["notaurl", "sqlite:///{tmp}/garbage.db"])
def test_a_state_database_that_is_not_one_is_one_line(tmp_path: Path, state_url: str) -> None:
    (tmp_path / "garbage.db").write_text("not a database at all\n" * 100)
    config = tmp_path / "guardian.yaml"
    config.write_text(f"state_url: {state_url.format(tmp=tmp_path)}\n")
    for command in ("check-config", "history"):
        result = in_process(command, "--config", str(config))
        if command == "check-config" and state_url.startswith("sqlite"):
            assert result.returncode == 0  # a well-formed URL: only opening it tells
            continue
        line = one_error_line(result)
        assert "state_url: not a database URL" in line or "file is not a database" in line


def test_global_options_are_accepted_after_the_command() -> None:
    result = in_process("check-config", "--log-level", "debug", "--log-format=json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# config OK")


@pytest.mark.parametrize(
    ("argv", "hoisted"),
    [
        ("audit --log-level debug -f json", "--log-level debug audit -f json"),
        ("--log-level debug audit", "--log-level debug audit"),
        ("--log-level debug audit --log-format json", "--log-level debug --log-format json audit"),
        ("agent keep --log-format=json 2h", "--log-format=json agent keep 2h"),
        ("audit --set idle.window=2h -- --log-level", "audit --set idle.window=2h -- --log-level"),
    ],
)
def test_hoisting_global_options(argv: str, hoisted: str) -> None:
    from guardian.cli import hoist_global_options

    assert hoist_global_options(argv.split()) == hoisted.split()


def test_region_flags_go_to_the_cloud_they_name() -> None:
    # `--region us-central1` used to be sent to EC2 as well (issue 12).
    from guardian.config import Config
    from guardian.providers.factory import restrict_regions

    both = Config.model_validate({"gcp": {"enabled": True, "projects": ["p"]}})
    gcp_only = restrict_regions(both, ["us-central1"])
    assert (gcp_only.aws.enabled, gcp_only.gcp.enabled) == (False, True)
    aws_only = restrict_regions(both, ["eu-west-1", "us-east-1"])
    assert (aws_only.aws.enabled, aws_only.gcp.enabled) == (True, False)
    assert aws_only.aws.regions == ["eu-west-1", "us-east-1"]
    mixed = restrict_regions(both, ["us-east-1", "us-central1"])
    assert (mixed.aws.regions, mixed.gcp.enabled) == (["us-east-1"], True)


def test_demo_without_moto_says_how_to_get_it() -> None:
    # A plain `pip install gpu-guardian` leaves moto out: it is the [demo] extra (issue 12).
    code = (
        "import sys\n"
        "sys.modules['moto'] = None  # as if not installed\n"
        "sys.argv = ['guardian', 'demo']\n"
        "from guardian.cli import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert one_error_line(result) == (
        "guardian: error: guardian demo needs the simulated cloud: pip install 'gpu-guardian[demo]'"
    )


def test_a_plain_install_does_not_require_moto() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert not [d for d in project["project"]["dependencies"] if d.startswith("moto")]
    extras = project["project"]["optional-dependencies"]
    assert any(d.startswith("moto") for d in extras["demo"])
    assert "gpu-guardian[demo]" in extras["dev"]  # make test and make demo still get it
