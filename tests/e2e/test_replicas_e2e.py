"""Three ``guardian run`` replicas on one PostgreSQL, auditing an AWS Organization (moto).

10 member accounts × 2 regions = 20 units; in each account the us-east-1 instance is idle and
the eu-west-1 one busy. The replicas start at the same moment on an empty database. One is
killed (-9) while it holds a unit, another is paused (SIGSTOP) past its lease while it holds
one and then resumed. Every idle instance must be warned once and stopped once, the units
spread over the replicas, the killed replica's unit audited by another within a lease, and the
paused one must find its token stale.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa

from guardian.simulated.aws import SimInstance, constant, fake_aws_env, seed_fleet
from tests.conftest import MotoServer
from tests.e2e.conftest import ENTRY, REPO, GuardianProcess
from tests.e2e.receivers import HttpReceiver, wait_for
from tests.postgres import PostgresServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ACCOUNTS = 10
REGIONS = ("us-east-1", "eu-west-1")
HISTORY = 60  # minutes of one-minute samples
LEASE_S = 3.0


def _organization(moto: MotoServer) -> list[str]:
    org = moto.client("organizations")
    org.create_organization(FeatureSet="ALL")
    ids = []
    for n in range(ACCOUNTS):
        status = org.create_account(Email=f"team{n}@example.com", AccountName=f"team-{n}")
        ids.append(status["CreateAccountStatus"]["AccountId"])
    return ids


class _MemberClients:
    """EC2 and CloudWatch clients of each region, made once, whose calls land in whichever
    member account ``account`` names (moto's ``x-moto-account-id`` header): seeding 10 accounts
    then costs their API calls, not 40 more clients and 10 role sessions."""

    def __init__(self) -> None:
        session = boto3.Session()
        self.account = ""
        self.clients = {
            (service, region): session.client(service, region_name=region)  # type: ignore[call-overload]
            for service in ("ec2", "cloudwatch")
            for region in REGIONS
        }
        for client in self.clients.values():
            client.meta.events.register("before-sign.*.*", self._to_account)

    def _to_account(self, request: Any, **_: Any) -> None:
        request.headers["x-moto-account-id"] = self.account

    def seed(self, account_id: str, now: datetime) -> dict[str, str]:
        """One idle instance in us-east-1, one busy in eu-west-1."""
        self.account = account_id
        ids = {}
        for region, util in zip(REGIONS, (0.0, 90.0), strict=True):
            spec = SimInstance(
                "g5g.xlarge",
                constant(util, 20000.0, HISTORY),
                tags={"Name": f"{account_id}-{region}"},
            )
            ((instance_id, _),) = seed_fleet(
                self.clients[("ec2", region)], self.clients[("cloudwatch", region)], [spec], now
            )
            ids[region] = instance_id
        return ids


def _config(workdir: Path, url: str, http: HttpReceiver) -> dict[str, Any]:
    return {
        "mode": "enforce",
        "poll_interval": "3s",
        "state_dir": str(workdir / "state"),
        "state_url": url,
        "metrics": {"listen": ""},
        "cost": {"lookback": "1h"},
        "limits": {"max_stops_per_cycle": 100},
        "idle": {
            "window": "30m",
            "window_released": "30m",
            "min_uptime": "20m",
            "grace": "4s",
            "history_margin": 0,
            "window_bursty": "0s",
        },
        "aws": {
            "regions": list(REGIONS),
            "accounts": {"organization": {"role_name": "gpu-guardian"}},
        },
        "notify": {"urls": [http.url("/guardian")], "digest": ""},
        "units": {"workers": 4, "lease": f"{LEASE_S:g}s", "timeout": "60s"},
    }


def _environment(endpoint: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "GUARDIAN_", "NOTIFY_SOCKET", "WATCHDOG_"))
    }
    env.update(fake_aws_env(endpoint))
    env["GUARDIAN_POLL_FLOOR"] = "1s"  # these replicas poll the simulated cloud every 3 s
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _held_unit(engine: sa.Engine, pid: int, region: str | None = None) -> Any:
    query = (
        "SELECT key, token, cycle FROM work_units WHERE owner LIKE :owner "
        "AND lease_until > now() AND done_cycle < cycle"
    )
    params: dict[str, Any] = {"owner": f"%-{pid}-%"}
    if region:
        query += " AND region = :region"
        params["region"] = region
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(query), params).first()
    except sa.exc.ProgrammingError:  # the replicas have not created the tables yet
        return None


def _ec2_state(members: _MemberClients, account_id: str, instance_id: str) -> str:
    members.account = account_id
    ec2 = members.clients[("ec2", "us-east-1")]
    found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return str(found["State"]["Name"])


@pytest.fixture
def moto_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    """moto in a process of its own, with AWS-like pages and 10 ms a call: three replicas and
    the test then share no interpreter lock, and a unit lasts long enough to be caught."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.moto_process", "0.01", "g5g.xlarge,m7i.xlarge"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    endpoint = proc.stdout.readline().strip()
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in fake_aws_env(endpoint).items():
        monkeypatch.setenv(name, value)
    yield MotoServer(endpoint)
    proc.kill()
    proc.wait(10)


def test_three_replicas_share_an_organization_and_act_once(
    moto_process: MotoServer,
    postgres: PostgresServer,
    http_receiver: HttpReceiver,
    tmp_path: Path,
) -> None:
    moto_server = moto_process
    began = time.monotonic()
    now = datetime.now(UTC)
    accounts = _organization(moto_server)
    url = postgres.create_database()
    replicas = []
    for n in range(3):
        workdir = tmp_path / f"replica{n}"
        workdir.mkdir()
        replica = GuardianProcess(workdir, _environment(moto_server.endpoint_url))
        replica.write_config(_config(workdir, url, http_receiver))
        replicas.append(replica)
    for replica in replicas:  # at the same moment, on an empty database
        replica.start()
    # The instances are launched while the replicas start: a unit audited before its
    # instance exists finds none, and the next cycle finds it.
    local = threading.local()  # clients per seeding thread: each names its own account

    def seed(account: str) -> dict[str, str]:
        if not hasattr(local, "members"):
            local.members = _MemberClients()
        members: _MemberClients = local.members
        return members.seed(account, now)

    with ThreadPoolExecutor(max_workers=4) as pool:  # moto answers each on its own thread
        seeded = dict(zip(accounts, pool.map(seed, accounts), strict=True))
    members = _MemberClients()
    seeded_s = time.monotonic() - began
    engine = sa.create_engine(url)
    try:
        killed, paused, survivor = replicas
        assert killed.proc is not None
        assert paused.proc is not None
        # kill -9 one replica while it holds a unit.
        held = wait_for(lambda: _held_unit(engine, killed.proc.pid), timeout=60, interval=0.02)
        killed.kill9()
        killed_at = time.monotonic()

        def taken_over(condition: str) -> Any:
            with engine.connect() as conn:
                return conn.execute(
                    sa.text(
                        "SELECT owner FROM work_units WHERE key = :key AND owner NOT LIKE :dead "
                        f"AND {condition}"
                    ),
                    {
                        "key": held.key,
                        "cycle": held.cycle,
                        "token": held.token,
                        "dead": f"%-{killed.proc.pid}-%",
                    },
                ).first()

        # Claimed by another replica once the lease ran out, in the same cycle or the next.
        wait_for(lambda: taken_over("token > :token"), timeout=LEASE_S + 10, interval=0.05)
        takeover_s = time.monotonic() - killed_at
        wait_for(lambda: taken_over("done_cycle >= :cycle"), timeout=30, interval=0.1)

        # Pause another while it holds a unit, past its lease; then let it go on.
        stale = wait_for(lambda: _held_unit(engine, paused.proc.pid), timeout=60, interval=0.02)
        marks = {"killed": killed_at - began, "taken over": time.monotonic() - began}
        paused.signal(signal.SIGSTOP)
        time.sleep(LEASE_S + 2)
        paused.signal(signal.SIGCONT)

        idle = {account: ids["us-east-1"] for account, ids in seeded.items()}

        def stopped() -> int:
            with engine.connect() as conn:
                return int(
                    conn.execute(
                        sa.text("SELECT count(*) FROM actions WHERE phase = 'outcome'")
                    ).scalar_one()
                )

        marks["resumed"] = time.monotonic() - began
        wait_for(lambda: stopped() >= ACCOUNTS, timeout=90, interval=0.5)
        marks["all stopped"] = time.monotonic() - began
        wait_for(lambda: len(stopped_titles(http_receiver)) >= ACCOUNTS, timeout=20)
        time.sleep(LEASE_S)  # a few more cycles: nothing new may happen
        shown, table = _status_both_ways(survivor)
        status = json.loads(shown)
        for replica in (paused, survivor):  # SIGTERM to both, then wait for both
            assert replica.proc is not None
            replica.proc.send_signal(signal.SIGTERM)
        for replica in (paused, survivor):
            assert replica.proc is not None
            assert replica.proc.wait(timeout=30) == 0
    finally:
        for replica in replicas:
            if replica.proc is not None and replica.alive():
                os.kill(replica.proc.pid, signal.SIGCONT)
            replica.ensure_dead()

    with engine.connect() as conn:
        actions = conn.execute(
            sa.text(
                "SELECT id, at, instance_id, action, phase, outcome, replica, reason, intent_id"
                " FROM actions"
            )
        ).all()
    engine.dispose()
    warns = Counter(a.instance_id for a in actions if a.action == "warn")
    intents = Counter(a.instance_id for a in actions if a.phase == "intent")
    stops = Counter(a.instance_id for a in actions if a.phase == "outcome" and a.outcome == "ok")
    assert warns == dict.fromkeys(idle.values(), 1)  # every idle instance warned, once
    assert stops == dict.fromkeys(idle.values(), 1)  # and stopped, once
    # Every intent has exactly one outcome. An intent may end without a stop — its lease ran
    # out before the call (the paused replica), or the replica died after it and the new
    # holder found the instance still running — and the next holder stops it then: one
    # successful stop each, whatever the number of intents.
    answered = Counter(a.intent_id for a in actions if a.phase == "outcome")
    assert all(answered[a.id] == 1 for a in actions if a.phase == "intent"), actions
    unstopped = [
        a for a in actions if a.phase == "outcome" and a.outcome != "ok" and a.action != "warn"
    ]
    assert all(a.outcome == "not_executed" or "lease" in (a.reason or "") for a in unstopped), (
        unstopped
    )
    assert set(intents) == set(stops)
    for account, instance_id in idle.items():
        assert _ec2_state(members, account, instance_id) in ("stopping", "stopped")
    busy = {ids["eu-west-1"] for ids in seeded.values()}
    assert not busy & {a.instance_id for a in actions}
    titles = [t for t in http_receiver.titles() if t.startswith("Idle GPU instance")]
    assert len(titles) == len(set(titles)) == ACCOUNTS
    assert len(stopped_titles(http_receiver)) == ACCOUNTS

    done_by = Counter(pid for pid, r in enumerate(replicas) for _ in r.events("unit_done", start=1))
    # The units spread over the replicas: the killed one held one, the other two did many.
    assert done_by[1] > 0
    assert done_by[2] > 0
    # A lease, and the waiting replicas' next look; on a loaded 2-core machine a few seconds
    # more (the units.timeout of 60 s would be the takeover without leases).
    assert takeover_s <= LEASE_S + 6
    lost = [e for e in paused.events() if e.get("event") in ("unit_lease_lost", "unit_taken_over")]
    assert any(e.get("unit") == stale.key for e in lost), lost
    assert all(r.events("daemon_started") for r in replicas)  # all three came up
    assert status["backend"] == "postgresql"
    alive = {r["pid"] for r in status["replicas"]}
    assert alive == {paused.proc.pid, survivor.proc.pid}  # the killed one is not alive
    assert len(status["units"]) == (ACCOUNTS + 1) * len(REGIONS)  # members and management
    assert {u["state"] for u in status["units"]} <= {"running", "done", "waiting"}
    assert status["last_completed_cycle"] is not None
    assert status["open_episodes"] == []  # every idle instance stopped
    assert "Replicas alive (2)" in table
    print(
        f"\ne2e replicas: {ACCOUNTS} accounts x {len(REGIONS)} regions, units done per replica "
        f"{dict(done_by)}, claimed by another {takeover_s:.1f} s after kill -9 "
        f"(lease {LEASE_S:g} s), "
        f"seeding {seeded_s:.1f} s, whole test {time.monotonic() - began:.1f} s, "
        + ", ".join(f"{k} at {v:.1f} s" for k, v in marks.items())
    )


def _status_both_ways(replica: GuardianProcess) -> tuple[str, str]:
    """``guardian status --format json`` and the table, run at the same time."""
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", ENTRY, "status", *extra, "-c", str(replica.config_path)],
            env=replica.env,
            cwd=replica.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for extra in (["--format", "json"], [])
    ]
    outputs = []
    for run in runs:
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        outputs.append(out)
    return outputs[0], outputs[1]


def stopped_titles(http: HttpReceiver) -> list[str]:
    return [t for t in http.titles() if t.startswith("Stopped idle GPU instance")]
