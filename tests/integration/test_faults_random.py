"""An enforcing daemon with 20 % of every AWS call broken: it does less, never something wrong.

The short version of ``bench/faults.py`` (hundreds of cycles): a fleet of idle, busy, protected
and unmeasured machines on a simulated clock, every EC2, CloudWatch and STS call through a
``FaultProxy`` that throttles, fails (500/503), delays, truncates, drops, or forwards and then
drops one call in five, with only one SDK retry so guardian itself meets the faults. After the
run: no busy, protected or unmeasured machine was stopped; every idle one was warned once and
stopped once (one alert each); every stop intent in the action log has its outcome.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from botocore.config import Config as BotoConfig

from guardian.providers.aws.discovery import GpuTypeCatalog
from guardian.simulated import moto_speedups
from guardian.simulated.aws import Reading, constant
from tests.conftest import MotoServer
from tests.e2e.receivers import HttpReceiver
from tests.fakes.fault_proxy import FAULT_KINDS, RandomFaults
from tests.fault_world import FaultWorld, Machine, busy, idle_after, world_config

HISTORY, FUTURE = 60, 45  # minutes of metrics before the start and after it
CYCLES = 30  # one simulated minute each; the last deadline falls in cycle 27
MORE = 12  # cycles allowed on top for what the faults delayed
ONE_RETRY = BotoConfig(retries={"mode": "standard", "total_max_attempts": 2})


def fleet() -> list[Machine]:
    total = HISTORY + FUTURE
    stale = constant(91.0, 20_000.0, HISTORY - 30) + [Reading(None, None)] * (FUTURE + 30)
    return [
        Machine("idle-0", "idle", idle_after(0, total)),  # idle all along: warned at once
        Machine("idle-1", "idle", idle_after(HISTORY - 12, total, mem_mib=0.0)),  # job ended
        Machine("idle-2", "idle", idle_after(HISTORY - 5, total)),  # idle from minute 15
        Machine("idle-3", "idle", idle_after(HISTORY + 2, total, mem_mib=0.0)),  # from 12
        Machine("idle-4", "idle", idle_after(HISTORY + 2, total)),  # from minute 22
        Machine("busy-0", "busy", busy(total)),
        Machine("busy-1", "busy", idle_after(HISTORY + 10, total)[::-1]),  # idle, then works
        Machine("kept", "protected", idle_after(0, total), tags={"guardian:protect": "true"}),
        Machine("dark", "unmeasured", None),  # no agent
        Machine("stale", "unmeasured", stale),  # its agent stopped 30 minutes ago
    ]


@pytest.fixture
def indexed_moto(moto_server: MotoServer) -> Iterator[MotoServer]:
    """Stock moto's ListMetrics is quadratic in datums: index it for this test only."""
    moto_speedups.install()
    try:
        yield moto_server
    finally:
        moto_speedups.uninstall()
        moto_server.reset()


def test_twenty_percent_faults_on_every_call_make_it_do_less_never_wrong(
    tmp_path: Path, indexed_moto: MotoServer, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    receiver = HttpReceiver()
    world = FaultWorld(
        tmp_path,
        indexed_moto.endpoint_url,
        fleet(),
        world_config(tmp_path, receiver.url()),
        history=timedelta(minutes=HISTORY),
        future=timedelta(minutes=FUTURE),
        catalog=aws_gpu_catalog,
        client_config=ONE_RETRY,
    )
    world.proxy.plan = RandomFaults(
        0.2, kinds=(*FAULT_KINDS, "forward_then_drop"), seed=13, delay_s=0.05
    )
    idle = [name for name, m in world.machines.items() if m.role == "idle"]
    try:
        world.run(CYCLES)
        extra = 0
        while extra < MORE and (
            world.pending_intents() or any(world.stopped_at(n) is None for n in idle)
        ):
            world.cycle()
            extra += 1
        world.daemon.flush_outbox()
        actions = world.actions()
        titles = receiver.titles()
    finally:
        world.close()
        receiver.close()

    for name, machine in world.machines.items():
        mine = [a for a in actions if a.ref.instance_id == world.ids[name]]
        stops = [a for a in mine if a.action == "stop"]
        if machine.role != "idle":
            assert world.state(name) == "running", name
            assert stops == [], name
            continue
        assert world.state(name) in ("stopping", "stopped"), name
        assert [a.action for a in mine if a.action == "warn"] == ["warn"], name
        assert [a.outcome for a in stops if a.phase == "outcome"].count("ok") == 1, name
        label = f"{name} ({world.ids[name]})"
        assert sum(t.startswith(f"Idle GPU instance {label}") for t in titles) == 1, name
        assert titles.count(f"Stopped idle GPU instance {label}") == 1, name
    intents = {a.id for a in actions if a.phase == "intent"}
    answered = {a.intent_id for a in actions if a.phase == "outcome"}
    assert intents == answered  # every intent has its outcome
    injected = Counter(kind for (_, kind), n in world.proxy.injected.items() for _ in range(n))
    calls = sum(world.proxy.calls.values())
    assert world.proxy.injected_total() >= calls // 10  # about one in five (seeded)
    assert all(report is not None for report in world.reports)  # no cycle crashed
    delays = {
        name: (world.stopped_at(name) - world.deadline(name)).total_seconds() / 60  # type: ignore[operator]
        for name in idle
    }
    print(
        f"\n20% faults: {len(world.reports)} cycles, {calls} calls, "
        f"{world.proxy.injected_total()} faults {dict(injected)}, "
        f"stop delays past the deadline (min) {delays}"
    )
