"""``kill -9`` at each point of the stop path in turn: on restart nothing is repeated, nothing
is missing.

Four idle instances are warned; then a daemon process is started for each kill point and dies
there (``GUARDIAN_TEST_CRASH_AT``, ``guardian.daemon.crashpoints``) by SIGKILL, with at most one
stop a cycle so each life attempts exactly one; a last one runs undisturbed. A counting proxy in
front of moto sees every StopInstances. After the last: each instance stopped by exactly one
call, each with one successful outcome, every intent answered, one warning and one "Stopped"
alert each.

- ``before_intent`` (instance A): nothing recorded, nothing called — the next life stops it;
- ``after_intent`` (A): an intent without a call — reconciled as ``not_executed`` (A is still
  running), then stopped afresh;
- ``after_stop_call`` (A): stopped, outcome unwritten — reconciled as ``ok`` from A's state, not
  stopped again, its "Stopped" alert sent then;
- ``after_outcome`` (B): outcome and alert committed, the alert not delivered — delivered by the
  next life, once.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from guardian.daemon.crashpoints import POINTS
from guardian.daemon.store import Store
from guardian.simulated.aws import SimInstance, constant, seed_fleet
from tests.conftest import MotoServer
from tests.e2e.receivers import HttpReceiver
from tests.fakes.fault_proxy import FaultProxy

pytestmark = pytest.mark.slow

NAMES = ("a", "b", "c", "d")
GRACE_MIN = 2


@pytest.fixture(scope="module")
def forkserver() -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.e2e.crash_child"])
    return context


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    yield receiver
    receiver.close()


def _life(
    context: Any, config: Path, endpoint: str, start: datetime, *, cycles: int, point: str | None
) -> int:
    """One daemon process from start to exit (or death); its exit code (-9 = SIGKILL)."""
    process = context.Process(
        target=_run_child, args=(str(config), endpoint, start, cycles, point), daemon=True
    )
    process.start()
    process.join(timeout=120)
    if process.is_alive():
        process.kill()
        process.join()
        raise AssertionError(f"the daemon life for {point} hung")
    return int(process.exitcode or 0)


def _run_child(config: str, endpoint: str, start: datetime, cycles: int, point: str | None) -> None:
    from tests.e2e.crash_child import run

    run(config, endpoint, start, cycles, point)


def test_kill_9_at_each_point_of_the_stop_path_repeats_nothing_and_loses_nothing(
    tmp_path: Path, moto_server: MotoServer, http: HttpReceiver, forkserver: Any
) -> None:
    start = datetime.now(UTC).replace(second=0, microsecond=0)
    minutes = 60
    idle = constant(0.0, 20_000.0, minutes)
    launched = seed_fleet(
        moto_server.client("ec2"),
        moto_server.client("cloudwatch"),
        [SimInstance("g5g.xlarge", idle, tags={"Name": name}) for name in NAMES],
        start + timedelta(minutes=20),  # metrics reach 20 minutes past the start
    )
    ids = {spec.tags["Name"]: instance_id for instance_id, spec in launched}
    config = tmp_path / "guardian.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "mode": "enforce",
                "state_dir": str(tmp_path / "state"),
                "metrics": {"listen": ""},
                "cost": {"lookback": "1h"},
                "limits": {"max_idle_fraction": 1.0, "max_stops_per_cycle": 1},
                "idle": {
                    "window": "20m",
                    "grace": f"{GRACE_MIN}m",
                    "history_margin": 0,
                    "window_bursty": "0s",
                },
                "notify": {"urls": [http.url()], "digest": ""},
            }
        )
    )
    with FaultProxy(moto_server.endpoint_url) as proxy:  # counts; breaks nothing
        minute = 0
        lives: list[tuple[str | None, int]] = []
        # The first life warns all four and dies at its first stop, at the deadline.
        for point in POINTS:
            cycles = GRACE_MIN + 1 if point == "before_intent" else 1
            at = start + timedelta(minutes=minute)
            code = _life(forkserver, config, proxy.endpoint, at, cycles=cycles, point=point)
            lives.append((point, code))
            minute += cycles
        later = start + timedelta(minutes=minute)
        code = _life(forkserver, config, proxy.endpoint, later, cycles=4, point=None)
        lives.append((None, code))
        stop_calls = proxy.calls["ec2:StopInstances"]

    assert lives == [(point, -signal.SIGKILL) for point in POINTS] + [(None, 0)]
    states = moto_server.client("ec2").describe_instances(InstanceIds=list(ids.values()))
    assert {i["State"]["Name"] for r in states["Reservations"] for i in r["Instances"]} == {
        "stopped"
    }
    assert stop_calls == len(NAMES)  # one StopInstances per instance, none repeated

    store = Store.open(f"sqlite:///{tmp_path / 'state' / 'state.db'}")
    try:
        with store.reader() as tx:
            actions = tx.actions_since(start - timedelta(days=1))
            assert tx.pending_intents() == []  # every intent has its outcome
    finally:
        store.close()
    # (A stop deferred by max_stops_per_cycle is recorded as a block: not what this is about.)
    by_name = {
        name: [a for a in actions if a.ref.instance_id == ids[name] and a.action != "block"]
        for name in NAMES
    }
    first = min(NAMES, key=lambda n: min(a.id for a in by_name[n] if a.action == "stop"))
    assert [(a.action, a.phase, a.outcome) for a in by_name[first]] == [
        ("warn", "event", "stop"),
        ("stop", "intent", None),  # after_intent: no call made ...
        ("stop", "outcome", "not_executed"),  # ... so reconciled as not executed
        ("stop", "intent", None),  # after_stop_call: called, then killed ...
        ("stop", "outcome", "ok"),  # ... so reconciled from its state: stopped
    ]
    for name in set(NAMES) - {first}:
        assert [(a.action, a.phase, a.outcome) for a in by_name[name]] == [
            ("warn", "event", "stop"),
            ("stop", "intent", None),
            ("stop", "outcome", "ok"),
        ], name

    titles = http.titles()
    for name in NAMES:
        label = f"{name} ({ids[name]})"
        assert sum(t.startswith(f"Idle GPU instance {label}") for t in titles) == 1, name
        assert titles.count(f"Stopped idle GPU instance {label}") == 1, name
    assert (
        titles.count(
            f"Stop unconfirmed (restart or lost answer): {first} ({ids[first]}) — not_executed"
        )
        == 1
    )
    log = [json.loads(line) for line in (tmp_path / "daemon.log").read_text().splitlines()]
    reconciled = [e["outcome"] for e in log if e.get("event") == "stop_reconciled"]
    assert reconciled == ["not_executed", "ok"]
