"""Secrets never leave: ``guardian run`` end to end with every kind of secret in its config, and
every log line, history row, notification body, error and metric searched for each of them.

The config carries webhook tokens (basic-auth password, path segment, custom header), an SMTP
password (the server demands AUTH), AWS external ids, and a channel that fails (its token in
every failed delivery's error). One of the two assumed roles is refused, and the other's first
answers are cut short — with the role's secret key in them, which is searched for too.
What is searched: the daemon's JSON log, ``guardian history --format json``, every row of
every table of the state database, every webhook body and every mail as received, and the
Prometheus endpoint. (A password in ``state_url`` needs PostgreSQL: SQLite URLs cannot carry
one.)
"""

from __future__ import annotations

import json
import re
import sqlite3
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from guardian.simulated.aws import SimInstance, constant, seed_fleet
from tests.conftest import MotoServer
from tests.e2e.conftest import GuardianProcess
from tests.e2e.receivers import HttpReceiver, free_port, wait_for
from tests.fakes.fault_proxy import Fault, FaultProxy, Request, ScheduledFaults

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning"),
]

HOOK_PASSWORD = "H00kPa55word"
HOOK_PATH_TOKEN = "T0KEN5ecretPathSegment"
HOOK_HEADER = "HeaderSecret123"
DEAD_TOKEN = "Dead5ecretToken99"
SMTP_PASSWORD = "Smtp5ecretPa55"
EXTERNAL_IDS = ("ExtId-5ecret-123", "ExtId-5ecret-999")
SECRETS = (HOOK_PASSWORD, HOOK_PATH_TOKEN, HOOK_HEADER, DEAD_TOKEN, SMTP_PASSWORD, *EXTERNAL_IDS)


class AuthSmtp:
    """An SMTP server that wants AUTH (over plaintext, as a local relay may)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mails: list[bytes] = []
        self.logins: list[tuple[str, str]] = []
        self._controller = Controller(
            self,
            hostname="127.0.0.1",
            port=self.port,
            authenticator=self._authenticate,
            auth_require_tls=False,
            auth_required=True,
        )
        self._controller.start()

    def _authenticate(
        self, _server: Any, _session: Any, _envelope: Any, _mech: str, data: Any
    ) -> AuthResult:
        login, password = data.login.decode(), data.password.decode()
        self.logins.append((login, password))
        return AuthResult(success=password == SMTP_PASSWORD)

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        content = envelope.content
        self.mails.append(content if isinstance(content, bytes) else content.encode())
        return "250 OK"

    def stop(self) -> None:
        self._controller.stop()


@pytest.fixture
def smtp() -> Iterator[AuthSmtp]:
    server = AuthSmtp()
    yield server
    server.stop()


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    yield receiver
    receiver.close()


def test_no_configured_secret_appears_in_any_log_row_message_or_error(
    moto_server: MotoServer, guardian: GuardianProcess, http: HttpReceiver, smtp: AuthSmtp
) -> None:
    seed_fleet(
        moto_server.client("ec2"),
        moto_server.client("cloudwatch"),
        [
            SimInstance(
                "g5g.xlarge", constant(0.0, 20000.0, 120), tags={"Name": "idle", "owner": "alice"}
            )
        ],
        datetime.now(UTC),
    )
    metrics_port = free_port()
    mail = f"mailto://mailer:{SMTP_PASSWORD}@127.0.0.1:{smtp.port}?from=guardian@example.com"
    config = {
        "mode": "enforce",
        "poll_interval": "1s",
        "state_dir": str(guardian.workdir / "state"),
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "cost": {"lookback": "2h"},
        "idle": {"window": "30m", "grace": "2s", "history_margin": 0, "window_bursty": "0s"},
        "aws": {
            "accounts": [
                {
                    "role_arn": "arn:aws:iam::123456789012:role/guardian",
                    "external_id": EXTERNAL_IDS[0],
                },
                {"role_arn": "arn:aws:iam::999999999999:role/gone", "external_id": EXTERNAL_IDS[1]},
            ]
        },
        "limits": {"alert_after_failed_cycles": 2},
        "notify": {
            "urls": [
                f"json://hooker:{HOOK_PASSWORD}@127.0.0.1:{http.port}/hooks/{HOOK_PATH_TOKEN}"
                f"?+X-Token={HOOK_HEADER}",
                f"json://127.0.0.1:{free_port()}/hooks/{DEAD_TOKEN}",  # nobody listens
                f"{mail}&to=ops@example.com",
            ],
            "owner_mailto": mail,
            "owner_email_domain": "example.com",
            "digest": "",
        },
    }

    def refuse_the_second_role(request: Request) -> Fault | None:
        if request.operation == "sts:AssumeRole" and b"999999999999" in request.body:
            return Fault("error", status=403, code="AccessDenied")
        return None

    issued: list[str] = []  # the assumed roles' secret keys and tokens: secrets too

    def remember_credentials(operation: str, answer: bytes, _headers: Any) -> bytes:
        if operation == "sts:AssumeRole":
            text = answer.decode()
            issued.extend(re.findall(r"<SecretAccessKey>([^<]+)<", text))
            issued.extend(re.findall(r"<SessionToken>([^<]+)<", text))
        return answer

    # The first role's first answers are cut short (every SDK attempt of the first cycle), with
    # its secret key in them: an error about them must not quote them.
    cut = ScheduledFaults({"sts:AssumeRole": [Fault("truncate")] * 5})
    with FaultProxy(
        moto_server.endpoint_url,
        cut,
        rewrite=remember_credentials,
        intercept=refuse_the_second_role,
    ) as proxy:
        guardian.env["AWS_ENDPOINT_URL"] = proxy.endpoint
        guardian.write_config(config)
        guardian.start()
        wait_for(
            lambda: any(t.startswith("Stopped idle GPU instance idle") for t in http.titles()), 120
        )
        wait_for(lambda: any(t.startswith("guardian cannot audit") for t in http.titles()), 60)
        wait_for(lambda: len(smtp.mails) >= 4, 60)  # warning and stop, to ops and to alice
        wait_for(lambda: guardian.events("notification_failed"), 60)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            scraped = r.read().decode()
        code, _ = guardian.stop()
    assert code == 0
    history = guardian.cli("history", "-c", str(guardian.config_path), "--format", "json")
    assert history.returncode == 0, history.stderr
    database = sqlite3.connect(guardian.workdir / "state" / "state.db")
    rows = "\n".join(database.iterdump())
    database.close()

    # Every secret was used, and every path that could carry one was taken: SMTP AUTH with the
    # password, the refused role's error, the dead channel's failed deliveries.
    assert smtp.logins
    assert all(password == SMTP_PASSWORD for _, password in smtp.logins)
    log = guardian.log_path.read_text()
    assert "AccessDenied" in log
    assert "guardian cannot audit aws account 999999999999" in http.titles()
    notes = json.loads(history.stdout)["notifications"]
    dead = [n for n in notes if n["status"] == "failing"]
    assert dead
    assert all(n["channel"].endswith("/***") and n["last_error"] for n in dead)

    places = {
        "daemon log": guardian.log_path.read_text(),
        "history": history.stdout + history.stderr,
        "state database": rows,
        "webhook bodies": json.dumps([payload for _, payload in http.posts]),
        "mails": b"\n".join(smtp.mails).decode(errors="replace"),
        "metrics": scraped,
    }
    assert proxy.injected[("sts:AssumeRole", "truncate")] >= 1
    assert "total bytes expected" in log  # the cut answers were met and reported
    secrets = (*SECRETS, *issued)
    leaks = [
        (secret, place) for secret in secrets for place, text in places.items() if secret in text
    ]
    assert leaks == []
    searched = sum(len(text) for text in places.values())
    print(
        f"\nsecrets: {len(secrets)} secrets, none in {searched} characters in {len(places)} places"
    )
