"""Fleet-scale benchmark: one ``guardian audit`` of N GPU instances against a simulated AWS.

    .venv/bin/python -m bench.fleet --instances 1000 --gpus 1 --regions 3 --latency-ms 40

1. Starts moto in this process with ``guardian.simulated.moto_speedups`` enabled: CloudWatch
   indexed per series (so moto is not the bottleneck) and a fixed server-side round trip per
   AWS request (so calls cost what they cost against AWS). See bench/README.md.
2. Seeds N instances of G GPUs over R regions with a realistic mix of verdicts
   (``bench.fleet_seed``): 2 h of per-minute agent metrics, ``cost.lookback: 2h``.
3. Runs ``guardian audit --format json`` in a child process (the CLI path), counting every API
   call by operation with botocore event hooks, timing it and taking its peak RSS.
4. Runs the obvious alternative on the same fleet in another child: one GetMetricStatistics per
   instance, GPU and metric, as Cloud Custodian's metrics filter reads metrics
   (``bench.fleet_child``), with verdicts from the same ``policy.decide``.
5. Runs ``guardian audit`` once more on the same state dir, as a second audit within the day
   would: the instance-type catalog is then read from disk (``--no-second-audit`` skips it).
6. Prints both side by side with the ratio, then checks the budgets and prints PASS/FAIL:
   - CloudWatch calls <= sum over regions of (2 x ceil(series_r / 500) + 1 + L), series_r = GPU
     series seeded in the region (both metrics), L = the agent's listed per-instance series read
     beside them (local disks, notebooks: one ListMetrics each per region), plus, with the host
     series read (the default; ``--no-host-series`` turns them off), ceil(mem_r / 500) more
     listing pages and ceil(2 x mem_r / 500) more GetMetricData calls, mem_r = instances with
     the agent's memory series (each measured instance adds a CPU and a memory query);
   - EC2 calls <= sum over regions of (ceil(N_r / 1000) + P) + ceil(spot_r / 200), P = pages of
     a full DescribeInstanceTypes on this server; the last term is the spot-request lookup;
   - peak RSS of the audit <= 200 MB;
   - ``guardian --help`` imports no cloud SDK;
   - the verdict of every instance identical in both methods.
   The exit status is 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.fleet_seed import FleetShape, SeededFleet, seed
from guardian.config import Config
from guardian.model import InstanceMetric
from guardian.providers.factory import aws_instance_series

ROOT = Path(__file__).resolve().parent.parent
ALL_REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
RSS_BUDGET_MB = 200.0
LIST_PAGE = 500  # ListMetrics series per page
QUERIES_PER_CALL = 500  # GetMetricData queries per call
INSTANCES_PER_PAGE = 1000  # DescribeInstances MaxResults
SPOT_IDS_PER_CALL = 200  # DescribeSpotInstanceRequests instance-id filter values


@dataclass
class Run:
    """One child process: what it called, how long it took, its peak RSS."""

    calls: dict[str, int]
    wall_s: float  # the whole process, interpreter start included
    work_s: float  # inside the process, from the start of the work to its end
    peak_rss_mb: float
    discovery_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def total(self, service: str | None = None) -> int:
        return sum(n for op, n in self.calls.items() if service is None or op.startswith(service))


def _child(
    args: Sequence[str], env: Mapping[str, str], stdout: Path, stderr: Path
) -> tuple[int, float]:
    """Run ``python -m bench.fleet_child ARGS``; (exit status, wall seconds). The child reports
    its own peak RSS (VmHWM): the ``ru_maxrss`` a parent sees can include the pages of the
    fork before ``exec``, that is this process with its simulated cloud."""
    started = time.perf_counter()
    with stdout.open("wb") as out, stderr.open("wb") as err:
        code = subprocess.call(
            [sys.executable, "-m", "bench.fleet_child", *args],
            cwd=ROOT,
            env=dict(env),
            stdout=out,
            stderr=err,
        )
    return code, time.perf_counter() - started


def _config(workdir: Path, regions: Sequence[str], *, host_series: bool = True) -> Path:
    path = workdir / "guardian.yaml"
    region_list = ", ".join(regions)
    path.write_text(
        "mode: audit\n"
        f"state_dir: {workdir / 'state'}\n"
        "metrics: {listen: ''}\n"
        "cost: {lookback: 2h}\n"
        f"rightsize: {{host_metrics: {str(host_series).lower()}}}\n"
        f"aws: {{regions: [{region_list}]}}\n"
    )
    return path


def run_guardian(config: Path, env: Mapping[str, str], workdir: Path) -> tuple[Run, dict[str, Any]]:
    calls_path = workdir / "audit-calls.json"
    out, err = workdir / "audit.json", workdir / "audit.log"
    args = [
        "--log-format",
        "json",
        "--log-level",
        "debug",
        "audit",
        "--config",
        str(config),
        "--format",
        "json",
    ]
    code, wall = _child(["audit", str(calls_path), "--", *args], env, out, err)
    if code != 0:
        raise SystemExit(f"guardian audit failed ({code}):\n{err.read_text()[-3000:]}")
    report = json.loads(calls_path.read_text())
    discovery = None
    for line in err.read_text().splitlines():
        if '"aws_discovered"' in line:
            discovery = float(json.loads(line)["seconds"])
    run = Run(report["calls"], wall, report["seconds"], report["peak_rss_mb"], discovery)
    return run, json.loads(out.read_text())


def run_per_instance(
    config: Path, now_iso: str, env: Mapping[str, str], workdir: Path, workers: int
) -> Run:
    out = workdir / "per-instance.json"
    code, wall = _child(
        ["per-instance", str(config), now_iso, str(out), str(workers)],
        env,
        workdir / "per-instance.out",
        workdir / "per-instance.log",
    )
    if code != 0:
        log = (workdir / "per-instance.log").read_text()
        raise SystemExit(f"per-instance method failed ({code}):\n{log[-3000:]}")
    report = json.loads(out.read_text())
    run = Run(
        report["calls"],
        wall,
        report["seconds"],
        report["peak_rss_mb"],
        report["discovery_seconds"],
    )
    run.extra["verdicts"] = report["verdicts"]
    return run


def help_imports(env: Mapping[str, str], workdir: Path) -> list[str]:
    out = workdir / "help.json"
    code, _ = _child(["help-imports"], env, out, workdir / "help.log")
    if code != 0:
        raise SystemExit(f"guardian --help failed:\n{(workdir / 'help.log').read_text()[-2000:]}")
    loaded: list[str] = json.loads(out.read_text())
    return loaded


def instance_type_pages(session: Any, region: str) -> int:
    """Pages of a full DescribeInstanceTypes at guardian's page size on this server (AWS
    serves 100 a page; stock moto answers in one, ``moto_speedups`` pages as AWS does)."""
    paginator = session.client("ec2", region_name=region).get_paginator("describe_instance_types")
    return sum(1 for _ in paginator.paginate(PaginationConfig={"PageSize": 100}))


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def budgets(
    fleet: SeededFleet,
    regions: Sequence[str],
    guardian: Run,
    type_pages: int,
    *,
    host_series: bool = True,
) -> list[Check]:
    # One more ListMetrics per region for each of the agent's listed series (local disks,
    # notebooks); the host memory listing is counted with the host series below.
    listed = sum(
        1
        for spec in aws_instance_series(Config())
        if spec.listed and spec.key is not InstanceMetric.HOST_MEM_PCT
    )
    cw_budget = sum(2 * math.ceil(fleet.series.get(r, 0) / LIST_PAGE) + 1 + listed for r in regions)
    if host_series:
        cw_budget += sum(
            math.ceil(fleet.host_mem.get(r, 0) / LIST_PAGE)
            + math.ceil(2 * fleet.host_mem.get(r, 0) / QUERIES_PER_CALL)
            for r in regions
        )
    ec2_budget = sum(
        math.ceil(len(fleet.in_region(r)) / INSTANCES_PER_PAGE)
        + type_pages
        + math.ceil(sum(i.spot for i in fleet.in_region(r)) / SPOT_IDS_PER_CALL)
        for r in regions
    )
    cw, ec2 = guardian.total("cloudwatch:"), guardian.total("ec2:")
    return [
        Check("CloudWatch calls", cw <= cw_budget, f"{cw} <= {cw_budget}"),
        Check("EC2 calls", ec2 <= ec2_budget, f"{ec2} <= {ec2_budget}"),
        Check(
            "peak RSS of the audit",
            guardian.peak_rss_mb <= RSS_BUDGET_MB,
            f"{guardian.peak_rss_mb:.0f} MB <= {RSS_BUDGET_MB:.0f} MB",
        ),
    ]


def compare(fleet: SeededFleet, audit: Mapping[str, Any], alternative: Run) -> Check:
    ours = {f["instance_id"]: f["verdict"] for f in audit["findings"]}
    theirs: dict[str, str] = alternative.extra["verdicts"]
    seeded = {i.instance_id for i in fleet.instances}
    missing = seeded - ours.keys()
    differ = sorted(i for i in seeded if ours.get(i) != theirs.get(i))
    detail = f"{len(seeded) - len(differ)}/{len(seeded)} identical"
    if missing:
        detail += f"; guardian did not report {len(missing)}"
    if differ:
        examples = ", ".join(f"{i}: {ours.get(i)} vs {theirs.get(i)}" for i in differ[:3])
        detail += f"; differ: {examples}"
    return Check("verdicts identical to the per-instance method", not differ, detail)


def _fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def side_by_side(guardian: Run, alternative: Run | None) -> list[str]:
    def ratio(a: float, b: float | None) -> str:
        return "" if b is None or a <= 0 else f"{b / a:.1f}x"

    alt = alternative
    rows = [("", "guardian", "per-instance", "ratio")]
    operations = sorted(set(guardian.calls) | set(alt.calls if alt else {}))
    rows.append(
        (
            "API calls",
            str(guardian.total()),
            str(alt.total()) if alt else "-",
            ratio(guardian.total(), alt.total() if alt else None),
        )
    )
    for op in operations:
        rows.append(
            (
                f"  {op}",
                str(guardian.calls.get(op, 0)),
                str(alt.calls.get(op, 0)) if alt else "-",
                "",
            )
        )
    rows.append(
        (
            "wall time (process)",
            _fmt_s(guardian.wall_s),
            _fmt_s(alt.wall_s if alt else None),
            ratio(guardian.wall_s, alt.wall_s if alt else None),
        )
    )
    rows.append(
        (
            "  discovery (EC2)",
            _fmt_s(guardian.discovery_s),
            _fmt_s(alt.discovery_s if alt else None),
            "",
        )
    )
    g_metrics = guardian.work_s - (guardian.discovery_s or 0.0)
    a_metrics = alt.work_s - (alt.discovery_s or 0.0) if alt else None
    rows.append(
        (
            "  metrics, pricing, verdicts",
            _fmt_s(g_metrics),
            _fmt_s(a_metrics),
            ratio(g_metrics, a_metrics),
        )
    )
    rows.append(
        (
            "peak RSS",
            f"{guardian.peak_rss_mb:.0f} MB",
            f"{alt.peak_rss_mb:.0f} MB" if alt else "-",
            "",
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]


def cold_and_warm(cold: Run, warm: Run) -> list[str]:
    """The first audit and a second one within the day, which finds the instance-type catalog
    in the state dir: what the catalog costs and what a second audit saves."""
    rows = [("", "first audit", "second audit", "ratio")]
    for label, a, b in (
        ("wall time (process)", cold.wall_s, warm.wall_s),
        ("  discovery (EC2)", cold.discovery_s or 0.0, warm.discovery_s or 0.0),
        (
            "  the rest",
            cold.work_s - (cold.discovery_s or 0),
            warm.work_s - (warm.discovery_s or 0),
        ),
    ):
        rows.append((label, _fmt_s(a), _fmt_s(b), f"{a / b:.1f}x" if b > 0 else ""))
    for op in ("ec2:DescribeInstanceTypes", "ec2:DescribeInstanceTypeOfferings"):
        rows.append((f"  {op}", str(cold.calls.get(op, 0)), str(warm.calls.get(op, 0)), ""))
    rows.append(("API calls", str(cold.total()), str(warm.total()), ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--instances", "-n", type=int, default=100)
    parser.add_argument("--gpus", "-g", type=int, default=1, choices=(1, 4, 8))
    parser.add_argument(
        "--regions", "-r", type=int, default=3, choices=range(1, len(ALL_REGIONS) + 1)
    )
    parser.add_argument(
        "--latency-ms", type=float, default=40.0, help="server-side round trip per AWS call"
    )
    parser.add_argument(
        "--workers", type=int, default=3, help="the per-instance method's threads (Custodian: 3)"
    )
    parser.add_argument(
        "--no-per-instance",
        action="store_true",
        help="skip the alternative (and the verdict check)",
    )
    parser.add_argument(
        "--no-host-series",
        action="store_true",
        help="audit with rightsize.host_metrics false (no host CPU and memory queries)",
    )
    parser.add_argument(
        "--no-second-audit",
        action="store_true",
        help="skip the second audit (the instance-type catalog then on disk)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)

    from guardian.simulated import moto_speedups
    from guardian.simulated.aws import fake_aws_env, start_moto_server

    regions = ALL_REGIONS[: args.regions]
    server, endpoint = start_moto_server(indexed_metrics=True)
    moto_speedups.enable(latency_s=0.0)  # no latency while seeding
    env = {**os.environ, **fake_aws_env(endpoint)}
    env.pop("AWS_PROFILE", None)
    os.environ.update(fake_aws_env(endpoint))
    import boto3

    session = boto3.Session()
    try:
        started = time.perf_counter()
        shape = FleetShape(instances=args.instances, gpus=args.gpus, regions=regions)
        fleet = seed(shape, session, progress=lambda line: print(f"  {line}", file=sys.stderr))
        seeding_s = time.perf_counter() - started
        type_pages = instance_type_pages(session, regions[0])
        with tempfile.TemporaryDirectory(prefix="guardian-fleet-") as tmp:
            workdir = Path(tmp)
            host_series = not args.no_host_series
            config = _config(workdir, regions, host_series=host_series)
            sdk_modules = help_imports(env, workdir)
            moto_speedups.enable(latency_s=args.latency_ms / 1000)
            guardian, audit = run_guardian(config, env, workdir)
            # The same audit again within the day: the type catalog is now in the state dir.
            warm = None if args.no_second_audit else run_guardian(config, env, workdir)[0]
            alternative = None
            if not args.no_per_instance:
                alternative = run_per_instance(
                    config, audit["generated_at"], env, workdir, args.workers
                )
    finally:
        moto_speedups.enable(latency_s=0.0)
        server.stop()

    series = sum(fleet.series.values())
    verdicts = Counter(f["verdict"] for f in audit["findings"])
    print(
        f"\nfleet: {args.instances} instances x {args.gpus} GPU over {len(regions)} regions "
        f"({', '.join(regions)}), {series:,} GPU series, {fleet.datums:,} datums "
        f"(seeded in {seeding_s:.0f} s); latency {args.latency_ms:g} ms a call"
    )
    print("verdicts: " + ", ".join(f"{v} {n}" for v, n in sorted(verdicts.items())))
    print()
    for line in side_by_side(guardian, alternative):
        print(line)
    if warm is not None:
        print()
        for line in cold_and_warm(guardian, warm):
            print(line)
    checks = budgets(fleet, regions, guardian, type_pages, host_series=host_series)
    checks.append(
        Check(
            "guardian --help imports no cloud SDK",
            not sdk_modules,
            ", ".join(sdk_modules[:5]) or "none imported",
        )
    )
    if alternative is not None:
        checks.append(compare(fleet, audit, alternative))
    print()
    for check in checks:
        print(f"{'PASS' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
    if args.json:
        figures = {
            "instances": args.instances,
            "gpus": args.gpus,
            "regions": list(regions),
            "series": series,
            "host_series": host_series,
            "host_memory_series": sum(fleet.host_mem.values()),
            "datums": fleet.datums,
            "latency_ms": args.latency_ms,
            "seeding_s": round(seeding_s, 1),
            "verdicts": dict(verdicts),
            "guardian": _figures(guardian),
            "per_instance": _figures(alternative) if alternative else None,
            "second_audit": _figures(warm) if warm else None,
            "checks": {c.name: {"passed": c.passed, "detail": c.detail} for c in checks},
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if all(c.passed for c in checks) else 1


def _figures(run: Run) -> dict[str, Any]:
    return {
        "calls": run.calls,
        "calls_total": run.total(),
        "wall_s": round(run.wall_s, 2),
        "work_s": round(run.work_s, 2),
        "discovery_s": None if run.discovery_s is None else round(run.discovery_s, 2),
        "peak_rss_mb": round(run.peak_rss_mb, 1),
    }


if __name__ == "__main__":
    sys.exit(main())
