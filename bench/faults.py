"""The long fault run: an enforcing daemon for hundreds of cycles, 20 % of every AWS call broken.

    .venv/bin/python -m bench.faults                      # 300 cycles, 40 machines, ~5-10 min
    .venv/bin/python -m bench.faults --cycles 100 --json faults.json

``tests/integration/test_faults_random.py`` is the short version in ``make test``; this runs the
same harness (``tests/fault_world.py``: the real ``Daemon`` cycle by cycle on a simulated clock,
the real ``AwsProvider`` reading an in-process moto server through a ``FaultProxy``, apprise
alerting a local webhook receiver, SQLite state) over a larger, seeded fleet whose machines go
idle all through the run, twice side by side: once without faults (the baseline) and once with
``--rate`` of every EC2, CloudWatch and STS call thrown, delayed, failed, truncated, dropped, or
forwarded and then dropped. By default the SDK keeps its shipped retry settings; ``--attempts
1`` takes its retries away so that guardian meets every fault itself.

The roles, and what must happen to them:

- ``idle``: goes idle at a seeded minute (memory held, or released: the job ended) — warned
  once, stopped once, one alert of each;
- ``resumes``: idle long enough to be warned, busy again before its deadline — never stopped;
- ``busy``, ``protected`` (tagged ``guardian:protect``), ``unmeasured`` (no agent, or an agent
  that stopped) — never stopped.

Printed (and with ``--json``, written): cycles, API calls, faults injected by kind, warnings,
stops, wrong stops (must be 0), intents without an outcome (must be 0), cycles that failed, and
per idle machine how much later than in the baseline it was warned and stopped — the longest is
the longest an idle instance waited beyond its deadline because of faults.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/faults.py` as well as `-m bench.faults`
    sys.path.insert(0, str(ROOT))

from tests.e2e.receivers import HttpReceiver  # noqa: E402
from tests.fakes.fault_proxy import FAULT_KINDS, RandomFaults  # noqa: E402
from tests.fault_world import FaultWorld, Machine, busy, idle_after, world_config  # noqa: E402

HISTORY = 60  # minutes of metrics before the start
SPARE = 40  # minutes of metrics past the planned cycles, for the cycles faults add
WINDOW, GRACE = 20, 5  # idle.window and idle.grace of world_config, in minutes
REGIONS = ("us-east-1", "us-west-2")
ROLES = {"idle": 0.40, "resumes": 0.10, "busy": 0.25, "protected": 0.10, "unmeasured": 0.15}


def fleet(count: int, cycles: int, seed: int) -> list[Machine]:
    """``count`` machines whose roles and onsets come from ``seed``; every idle one is due to
    be stopped with at least 20 cycles to spare."""
    from guardian.simulated.aws import Reading, constant

    rng = random.Random(seed)
    total = HISTORY + cycles + SPARE
    roles = [role for role, share in ROLES.items() for _ in range(round(share * count))]
    roles = (roles + ["busy"] * count)[:count]
    rng.shuffle(roles)
    machines = []
    for number, role in enumerate(roles):
        name, region = f"{role}-{number:03d}", REGIONS[number % len(REGIONS)]
        latest = HISTORY + cycles - WINDOW - GRACE - 20
        onset = rng.randint(HISTORY - WINDOW, max(HISTORY - WINDOW, latest))
        tags: dict[str, str] = {}
        readings: list[Reading] | None
        if role == "idle":
            readings = idle_after(onset, total, mem_mib=rng.choice([20_000.0, 0.0]))
        elif role == "resumes":  # warned after the window, busy again before the deadline
            back = onset + WINDOW + 2
            readings = idle_after(onset, back) + busy(total - back)
        elif role == "protected":
            readings, tags = idle_after(0, total), {"guardian:protect": "true"}
        elif role == "unmeasured" and rng.random() < 0.5:
            readings = None  # no agent at all
        elif role == "unmeasured":  # the agent stopped before the run began
            readings = constant(90.0, 20_000.0, HISTORY - 30) + [Reading(None, None)] * (
                total - HISTORY + 30
            )
        else:
            readings = busy(total)
        machines.append(Machine(name, role, readings, tags=tags, region=region))  # type: ignore[arg-type]
    return machines


def run_world(
    workdir: Path,
    endpoint: str,
    machines: Sequence[Machine],
    *,
    cycles: int,
    rate: float,
    seed: int,
    attempts: int | None,
    catalog: Any,
) -> dict[str, Any]:
    """One run of ``cycles`` (and up to 30 more to finish what faults delayed); its figures."""
    from botocore.config import Config as BotoConfig

    receiver = HttpReceiver()
    client_config = (
        BotoConfig(retries={"mode": "standard", "total_max_attempts": attempts})
        if attempts
        else None
    )
    world = FaultWorld(
        workdir,
        endpoint,
        machines,
        world_config(workdir, receiver.url(), aws={"regions": list(REGIONS)}),
        history=timedelta(minutes=HISTORY),
        future=timedelta(minutes=cycles + SPARE),
        catalog=catalog,
        client_config=client_config,
    )
    if rate:
        kinds = (*FAULT_KINDS, "forward_then_drop")
        world.proxy.plan = RandomFaults(rate, kinds=kinds, seed=seed, delay_s=0.05)
    idle = [m.name for m in machines if m.role == "idle"]
    started = time.perf_counter()
    try:
        world.run(cycles)
        extra = 0
        while extra < SPARE - 10 and (
            world.pending_intents() or any(world.stopped_at(name) is None for name in idle)
        ):
            world.cycle()
            extra += 1
        world.daemon.flush_outbox()
        wall = time.perf_counter() - started
        actions = world.actions()
        titles = receiver.titles()
        pending = len(world.pending_intents())
        states = {name: world.state(name) for name in world.ids}
        # Minutes from the run's start: the two runs start at different wall-clock times.
        warned_at: dict[str, float] = {}
        stopped_at: dict[str, float] = {}
        deadline: dict[str, float] = {}
        for name in idle:
            stop, due = world.stopped_at(name), world.deadline(name)
            if stop is not None:
                stopped_at[name] = (stop - world.start).total_seconds() / 60
            if due is not None:
                deadline[name] = (due - world.start).total_seconds() / 60
                warned_at[name] = deadline[name] - GRACE
    finally:
        world.close()
        receiver.close()
    by_id = {world.ids[m.name]: m for m in machines}
    wrong = sorted(
        {by_id[a.ref.instance_id].name for a in actions if a.action == "stop"} - set(idle)
    ) + sorted(name for name, state in states.items() if state != "running" and name not in idle)
    warnings = Counter(by_id[a.ref.instance_id].name for a in actions if a.action == "warn")
    stops_ok = Counter(
        by_id[a.ref.instance_id].name
        for a in actions
        if a.action == "stop" and a.phase == "outcome" and a.outcome == "ok"
    )
    alerts = Counter(
        name
        for name in idle
        for title in titles
        if title.startswith(f"Stopped idle GPU instance {name} (")
    )
    odd = set().union(
        *(
            {n for n in idle if warnings[n] != 1},
            {n for n in idle if stops_ok[n] != 1},
            {n for n in idle if alerts[n] != 1},
        )
    )
    histories = {
        name: [
            [
                round((a.at - world.start).total_seconds() / 60),
                a.action,
                a.phase,
                a.outcome,
                (a.reason or "")[:160],
            ]
            for a in actions
            if a.ref.instance_id == world.ids[name]
        ]
        for name in sorted(odd)
    }
    return {
        "histories": histories,
        "rate": rate,
        "attempts": attempts or "shipped default",
        "cycles": len(world.reports),
        "extra_cycles": len(world.reports) - cycles,
        "wall_s": round(wall, 1),
        "calls": sum(world.proxy.calls.values()),
        "faults": world.proxy.injected_total(),
        "faults_by_kind": dict(
            Counter(k for (_, k), n in world.proxy.injected.items() for _ in range(n))
        ),
        "failed_cycles": sum(1 for report in world.reports if report is None),
        "idle_machines": len(idle),
        "warnings": sum(warnings.values()),
        "stops": sum(stops_ok.values()),
        "wrong_stops": sorted(set(wrong)),
        "intents_without_outcome": pending,
        "idle_not_warned_once": sorted(n for n in idle if warnings[n] != 1),
        "idle_not_stopped_once": sorted(n for n in idle if stops_ok[n] != 1),
        "idle_stop_alerts_not_one": sorted(n for n in idle if alerts[n] != 1),
        "warned_at": warned_at,
        "deadline": deadline,
        "stopped_at": stopped_at,
    }


def compare(baseline: dict[str, Any], faulty: dict[str, Any]) -> dict[str, Any]:
    """How much later than without faults each idle machine was warned and stopped, and how long
    past its own deadline it was stopped."""
    warn_late = {
        name: at - baseline["warned_at"][name]
        for name, at in faulty["warned_at"].items()
        if name in baseline["warned_at"]
    }
    stop_late = {
        name: at - baseline["stopped_at"][name]
        for name, at in faulty["stopped_at"].items()
        if name in baseline["stopped_at"]
    }
    past_deadline = {
        name: at - faulty["deadline"][name] for name, at in faulty["stopped_at"].items()
    }
    base_past = {
        name: at - baseline["deadline"][name] for name, at in baseline["stopped_at"].items()
    }
    beyond = {name: past_deadline[name] - base_past.get(name, 0.0) for name in past_deadline}
    return {
        "max_warning_later_min": max(warn_late.values(), default=0.0),
        "max_stop_later_min": max(stop_late.values(), default=0.0),
        "max_past_own_deadline_min": max(past_deadline.values(), default=0.0),
        "max_beyond_deadline_because_of_faults_min": max(beyond.values(), default=0.0),
        "worst": max(beyond, key=lambda n: beyond[n], default=None),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="guardian under injected faults")
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--machines", type=int, default=40)
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--attempts", type=int, default=None, help="SDK attempts per call (default: as shipped)"
    )
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument(
        "--faults-only", action="store_true", help="skip the baseline (no delays then)"
    )
    args = parser.parse_args(argv)

    from moto.ec2.models.instance_types import INSTANCE_TYPES

    from guardian.logs import configure_logging
    from guardian.providers.aws.discovery import GpuTypeCatalog
    from guardian.simulated.aws import fake_aws_env, reset_moto_server, start_moto_server

    configure_logging("json", "error")  # a stop is a warning line: one per stop otherwise
    server, endpoint = start_moto_server(indexed_metrics=True)
    os.environ.update(fake_aws_env(endpoint))
    catalog = GpuTypeCatalog()
    catalog.prime(INSTANCE_TYPES.values())
    machines = fleet(args.machines, args.cycles, args.seed)
    results = {}
    try:
        runs = (("baseline", 0.0), ("faults", args.rate))
        for label, rate in runs[1:] if args.faults_only else runs:
            reset_moto_server(endpoint)
            with tempfile.TemporaryDirectory(prefix=f"guardian-faults-{label}-") as tmp:
                print(
                    f"{label}: {args.cycles} cycles, {len(machines)} machines ...", file=sys.stderr
                )
                results[label] = run_world(
                    Path(tmp),
                    endpoint,
                    machines,
                    cycles=args.cycles,
                    rate=rate,
                    seed=args.seed,
                    attempts=args.attempts,
                    catalog=catalog,
                )
    finally:
        server.stop()
    faulty = results["faults"]
    baseline = results.get("baseline", faulty)
    delays = compare(baseline, faulty)
    for label, figures in results.items():
        print(
            f"\n{label}: {figures['cycles']} cycles ({figures['extra_cycles']} extra) in "
            f"{figures['wall_s']} s; {figures['calls']} API calls, {figures['faults']} faults "
            f"{figures['faults_by_kind']}; SDK attempts: {figures['attempts']}"
        )
        print(
            f"  {figures['idle_machines']} idle machines; {figures['warnings']} warnings in all, "
            f"{figures['stops']} stops; wrong stops {len(figures['wrong_stops'])}; intents "
            f"without outcome {figures['intents_without_outcome']}; failed cycles "
            f"{figures['failed_cycles']}; not warned once {figures['idle_not_warned_once']}; "
            f"not stopped once {figures['idle_not_stopped_once']}; stop alerts not one "
            f"{figures['idle_stop_alerts_not_one']}"
        )
    print(
        f"\ndelays from faults: warned up to {delays['max_warning_later_min']:g} min later, "
        f"stopped up to {delays['max_stop_later_min']:g} min later than without faults; "
        f"longest wait beyond the deadline because of faults "
        f"{delays['max_beyond_deadline_because_of_faults_min']:g} min ({delays['worst']}); "
        f"longest past its own deadline {delays['max_past_own_deadline_min']:g} min"
    )
    checks = [
        ("no wrong stop", not faulty["wrong_stops"] and not baseline["wrong_stops"]),
        ("every intent has an outcome", faulty["intents_without_outcome"] == 0),
        ("every idle machine warned once", not faulty["idle_not_warned_once"]),
        ("every idle machine stopped once", not faulty["idle_not_stopped_once"]),
        ("one stop alert each", not faulty["idle_stop_alerts_not_one"]),
    ]
    for name, passed in checks:
        print(f"{'PASS' if passed else 'FAIL'}  {name}")
    if args.json:
        args.json.write_text(
            json.dumps({"results": results, "delays": delays, "checks": dict(checks)}, indent=1)
            + "\n"
        )
    return 0 if all(passed for _, passed in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
