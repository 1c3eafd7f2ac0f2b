"""Endpoints that accept connections and never answer, or answer with something that is not an
API response (a firewall, a dead proxy, a captive portal): a person waits seconds, not minutes,
and reads one line naming the endpoint; never a traceback (issue 12)."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardian.config import Config
from guardian.providers import Patience
from guardian.providers.aws.clients import PATIENCE as AWS_PATIENCE
from guardian.providers.gcp.clients import PATIENCE as GCP_PATIENCE
from guardian.providers.gcp.provider import GcpProvider

SHORT = Patience(connect_s=0.5, read_s=1.0, attempts=2)
AWS_DAEMON = AWS_PATIENCE["daemon"]


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """host:port of a server that accepts every connection and never sends a byte."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stopping = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stopping.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stopping.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def html_endpoint() -> Iterator[str]:
    """http://host:port of a server that answers every request with a proxy's HTML page."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b"<html><body>Proxy authentication required</body>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def audit(tmp_path: Path, endpoint: str) -> tuple[subprocess.CompletedProcess[str], float]:
    config = tmp_path / "guardian.yaml"
    config.write_text(f"state_dir: {tmp_path}\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "guardian", "audit", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    return result, time.monotonic() - started


def test_interactive_commands_wait_seconds_and_the_daemon_longer() -> None:
    for patience in (AWS_PATIENCE, GCP_PATIENCE):
        assert patience["interactive"].worst_case_s <= 45  # seconds, not minutes
        assert patience["daemon"].read_s > patience["interactive"].read_s
        assert patience["daemon"].attempts > patience["interactive"].attempts


def test_each_caller_gets_its_settings_and_the_type_catalog_on_disk() -> None:
    from guardian.daemon.service import _default_providers
    from guardian.providers.factory import build_providers

    for (provider,), caller in (
        (_default_providers(Config()), "daemon"),
        (build_providers(Config()), "interactive"),  # audit, backtest
    ):
        config = provider._clients._config  # type: ignore[attr-defined]
        assert config.read_timeout == AWS_PATIENCE[caller].read_s
        assert config.retries["total_max_attempts"] == AWS_PATIENCE[caller].attempts
        assert provider._catalog._disk is not None  # type: ignore[attr-defined]


def test_audit_against_a_silent_endpoint_ends_in_seconds_naming_it(
    tmp_path: Path,
    silent_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `guardian audit`'s own path (run_audit) with the interactive settings shortened, so the
    # test waits seconds; the real ones are bounded above. Before: 60 s x 6 attempts, silent.
    from guardian.commands.audit import run_audit

    monkeypatch.setattr(
        "guardian.providers.aws.provider.PATIENCE", {"interactive": SHORT, "daemon": AWS_DAEMON}
    )
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{silent_endpoint}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    started = time.monotonic()
    result = run_audit(Config.model_validate({"state_dir": str(tmp_path)}))
    assert time.monotonic() - started < SHORT.worst_case_s + 3
    assert result.nothing_audited
    line = result.failure_line()
    assert silent_endpoint in line
    assert "timeout" in line.lower()
    # Not a terminal: each phase is one line, so a cron log shows where it waited.
    err = capsys.readouterr().err
    assert "guardian: auditing GPU instances" in err
    assert "guardian: aws: discovering GPU instances" in err


def test_an_answer_that_is_not_xml_is_one_line(tmp_path: Path, html_endpoint: str) -> None:
    result, _ = audit(tmp_path, html_endpoint)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "aws_unit_crashed" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("guardian: error:")]
    assert len(errors) == 1
    assert "not an AWS API response" in errors[0]


@pytest.mark.parametrize("api", ["compute", "monitoring"])
def test_a_silent_google_endpoint_is_named_within_the_patience(
    silent_endpoint: str, api: str
) -> None:
    config = Config.model_validate(
        {
            "aws": {"enabled": False},
            "gcp": {
                "enabled": True,
                "projects": ["p"],
                "credentials": "anonymous",
                f"{api}_endpoint": f"http://{silent_endpoint}",
            },
        }
    )
    # Importing the client library takes seconds of its own: not what is measured here.
    from google.cloud import compute_v1, monitoring_v3  # noqa: F401

    provider = GcpProvider(config, patience=SHORT)
    started = time.monotonic()
    try:
        if api == "compute":
            message = provider.discover().errors[0].message
        else:
            from tests.fake_provider import make_instance

            instance = make_instance("vm-1", provider="gcp", account="p")
            now = instance.launch_time
            ((_, history),) = list(provider.utilisation([instance], now, now))
            message = history.error or ""
    finally:
        provider.close()
    assert time.monotonic() - started < SHORT.worst_case_s + 2
    assert f"endpoint {silent_endpoint}" in message
