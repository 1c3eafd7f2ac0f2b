"""``guardian run`` as a real subprocess against moto, aiosmtpd and a local webhook receiver.

The moto server comes from ``tests/conftest.py`` (``moto_server``, reset per test); the daemon
reaches it through ``AWS_ENDPOINT_URL`` like any boto3 program. Logs are JSON lines on stderr,
kept in a file the tests read for events.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from guardian.simulated.aws import fake_aws_env
from tests.conftest import MotoServer
from tests.e2e.receivers import HttpReceiver, NotifySocket, SmtpReceiver, wait_for

REPO = Path(__file__).resolve().parents[2]
ENTRY = "from guardian.cli import main; main()"


class GuardianProcess:
    """One ``guardian run`` at a time over one state directory; restartable."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.config_path = workdir / "guardian.yaml"
        self.log_path = workdir / "guardian.log"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(config))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", ENTRY, *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f'{{"event": "test_start", "start": {self.starts}}}\n'.encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-c", ENTRY, "--log-format", "json", "run"],
                env={**self.env, "GUARDIAN_CONFIG": str(self.config_path)},
                cwd=self.workdir,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def events(self, name: str | None = None, *, start: int | None = None) -> list[dict[str, Any]]:
        """Log events (of one ``start`` of the process, if given), oldest first."""
        found, current = [], 0
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "raw", "line": line}
            if event.get("event") == "test_start":
                current = int(event["start"])
                continue
            if (name is None or event.get("event") == name) and start in (None, current):
                found.append(event)
        return found

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        events = wait_for(lambda: self.events(name, start=self.starts), timeout)
        return dict(events[-1])

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20) -> tuple[int, float]:
        """SIGTERM; returns the exit status and how long the exit took."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure_dead(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def smtp_receiver() -> Iterator[SmtpReceiver]:
    receiver = SmtpReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify.sock")
    yield listener
    listener.close()


@pytest.fixture
def guardian(
    tmp_path: Path, moto_server: MotoServer, notify_socket: NotifySocket
) -> Iterator[GuardianProcess]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "GUARDIAN_", "NOTIFY_SOCKET", "WATCHDOG_"))
    }
    env.update(fake_aws_env(moto_server.endpoint_url))
    env["GUARDIAN_POLL_FLOOR"] = "1s"  # these daemons poll the simulated cloud every 2 s
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["NOTIFY_SOCKET"] = str(notify_socket.path)
    process = GuardianProcess(tmp_path, env)
    yield process
    process.ensure_dead()
