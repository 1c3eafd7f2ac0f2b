"""``guardian agent`` as people run it: a subprocess of the real console script."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

GUARDIAN = str(Path(sys.executable).with_name("guardian"))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GUARDIAN_", "AWS_"))}
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GUARDIAN, *args], check=False, capture_output=True, text=True, timeout=60, env=_env(**env)
    )


def test_no_driver_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    done = _run("agent", "--run-dir", str(tmp_path), GUARDIAN_NVML_BACKEND="fake:no-driver")
    assert done.returncode == 2
    assert done.stderr == "guardian: error: NVML not available: Driver Not Loaded\n"
    assert "Traceback" not in done.stdout + done.stderr


def test_publishing_off_cloud_is_one_line(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{_free_port()}"
    done = _run(
        "agent",
        "--simulate",
        "idle",
        "--run-dir",
        str(tmp_path),
        "--set",
        "agent.publish=cloudwatch",
        "--set",
        "agent.listen=",
        GUARDIAN_IMDS_ENDPOINT=closed,
    )
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()[-1:]
    assert line.startswith("guardian: error: cannot tell which cloud instance this is")
    assert "Traceback" not in done.stderr


def _wait_for(path: Path, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.1)


def test_running_agent_status_metrics_and_clean_exit(tmp_path: Path) -> None:
    port = _free_port()
    agent = subprocess.Popen(
        [
            GUARDIAN,
            "--log-format",
            "json",
            "agent",
            "--simulate",
            "training-then-idle",
            "--run-dir",
            str(tmp_path),
            "--set",
            "agent.interval=1s",
            "--set",
            f"agent.listen=127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        _wait_for(tmp_path / "agent-status.json")
        # At 1 s, five polls make one sample of history: the first verdict comes with it.
        deadline = time.monotonic() + 20
        while '"verdict":"unmeasured"' in (tmp_path / "agent-status.json").read_text():
            assert time.monotonic() < deadline, "no verdict after 20 s"
            time.sleep(0.2)
        status = _run("agent", "status", "--json", "--run-dir", str(tmp_path))
        assert status.returncode == 0, status.stderr
        document: dict[str, Any] = json.loads(status.stdout)
        assert document["agent"]["running"] is True
        assert document["agent"]["pid"] == agent.pid
        assert document["verdict"] == "busy"
        assert [g["gpu_util_pct"] for g in document["gpus"]] == [90.0, 90.0]
        assert document["gpus"][0]["processes"][0]["name"] == "python"
        text = _run("agent", "status", "--run-dir", str(tmp_path)).stdout
        assert text.startswith(f"agent: running (pid {agent.pid}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            scraped = response.read().decode()
        assert 'guardian_agent_verdict{verdict="busy"} 1.0' in scraped
        agent.send_signal(signal.SIGTERM)
        out, err = agent.communicate(timeout=15)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.communicate()
    assert agent.returncode == 0, err
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert events[0] == "agent_started"
    assert events[-1] == "agent_exited"
    assert not (tmp_path / "agent-status.json").exists()  # no stale status after a clean exit
    assert out == ""  # logs go to stderr; stdout carries only data


def test_keep_writes_and_cancels(tmp_path: Path) -> None:
    done = _run("agent", "keep", "2h", "--run-dir", str(tmp_path))
    assert done.returncode == 0
    assert done.stdout.startswith("kept until ")
    assert "no agent is running here now" in done.stdout
    # What it says depends on whether the running agent would stop the machine (issue 12).
    for autostop, said in ((False, "autostop is off"), (True, "autostop postponed until ")):
        status = {"agent": {"running": True, "autostop": autostop}}
        (tmp_path / "agent-status.json").write_text(json.dumps(status))
        kept = _run("agent", "keep", "2h", "--run-dir", str(tmp_path))
        assert said in kept.stdout
        assert ("postponed" in kept.stdout) is autostop
    assert (tmp_path / "keep-until").read_text().strip().endswith("+00:00")
    too_long = _run("agent", "keep", "30d", "--run-dir", str(tmp_path))
    assert too_long.returncode == 2
    assert "keep at most 7d" in too_long.stderr
    cancelled = _run("agent", "keep", "0s", "--run-dir", str(tmp_path))
    assert cancelled.stdout == "keep cancelled\n"
    assert not (tmp_path / "keep-until").exists()


def test_status_without_an_agent_samples_directly(tmp_path: Path) -> None:
    done = _run("agent", "status", "--simulate", "lost-gpu", "--run-dir", str(tmp_path))
    assert done.returncode == 0
    assert "agent: not running (one sample taken now)" in done.stdout
    assert "GPU 1: NVIDIA L4" in done.stdout


def test_the_agent_imports_no_cloud_sdk_unless_it_uses_one(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from guardian.cli import app\n"
        f"sys.argv = ['guardian', 'agent', '--simulate', 'idle', '--run-dir', {str(tmp_path)!r},"
        " '--polls', '2', '--set', 'agent.interval=1s', '--set', 'agent.listen=']\n"
        "try:\n"
        "    app()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'boto3', 'botocore', 'google', 'grpc', 'apprise', 'sqlalchemy', 'moto'}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
