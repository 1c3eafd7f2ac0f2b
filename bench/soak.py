"""Daemon soak: 200 cycles of ``guardian.daemon.service.Daemon`` against the simulated AWS; RSS
must not grow by 5 MB or more after warm-up.

    .venv/bin/python -m bench.soak --cycles 200 --instances 200

The daemon runs in a child process (its RSS is its own), one ``Daemon.run_cycle()`` after
another — the scheduler's job, without waiting out ``poll_interval`` between cycles — in
``enforce`` mode with real stops, alerts delivered by apprise to a local JSON receiver, and
state in SQLite. Its clock is simulated: it starts at the seeded ``now`` and advances one
``--step`` (60 s) per cycle, and the metrics are seeded that far ahead, so over the soak
instances keep going idle, get warned, are stopped after the grace period and drop out of
discovery, as in a real day — every cycle does real work, not a replay of the first.

RSS (VmRSS) is read after every cycle. Warm-up is the first ``--warmup`` cycles (20): imports,
caches and the SQLite page cache settle there. The check: RSS after the last cycle minus RSS
after warm-up < 5 MB.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GROWTH_BUDGET_MB = 5.0


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def child(config_path: str, start_iso: str, cycles: int, step_s: float, out_path: str) -> int:
    """Run the daemon's cycles on a simulated clock; write RSS and counts per cycle."""
    from guardian.config import load_config
    from guardian.daemon.service import Daemon
    from guardian.logs import configure_logging
    from guardian.malloc_tuning import limit_malloc_arenas

    limit_malloc_arenas()  # as `guardian run` does (guardian.cli.main)
    configure_logging("json", "error")  # stops are logged as warnings: one line each
    config, path = load_config(Path(config_path), ())
    now = [datetime.fromisoformat(start_iso).astimezone(UTC)]
    daemon = Daemon(config, config_path=path, clock=lambda: now[0])
    rows: list[dict[str, Any]] = []
    try:
        for cycle in range(cycles):
            started = time.perf_counter()
            report = daemon.run_cycle()
            elapsed = time.perf_counter() - started
            row: dict[str, Any] = {"cycle": cycle + 1, "seconds": elapsed, "rss_mb": _rss_mb()}
            if report is None:
                row["failed"] = True
            else:
                summary = report.enforcement
                row |= {
                    "instances": len(report.result.findings),
                    "idle": sum(1 for f in report.result.findings if f.decision.verdict == "idle"),
                    "warned": summary.warned,
                    "stopped": sum(n for (_, dry), n in summary.stops.items() if not dry),
                    "blocked": dict(summary.blocked),
                    "errors": len(report.result.errors),
                }
            rows.append(row)
            now[0] += timedelta(seconds=step_s)
    finally:
        daemon.close()
    Path(out_path).write_text(json.dumps(rows))
    return 0


class _Receiver(http.server.BaseHTTPRequestHandler):
    """apprise's json:// target: count the alerts, answer 200."""

    received = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with _Receiver.lock:
            _Receiver.received += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return


def _config(workdir: Path, regions: Sequence[str], receiver_port: int) -> Path:
    path = workdir / "guardian.yaml"
    path.write_text(
        "mode: enforce\n"
        "poll_interval: 1m\n"
        f"state_dir: {workdir / 'state'}\n"
        "metrics: {listen: ''}\n"
        "cost: {lookback: 2h}\n"
        "idle: {grace: 15m}\n"
        # Every GPU type in the mix has local NVMe: without this every stop is blocked.
        "enforce: {local_disks: stop}\n"
        f"aws: {{regions: [{', '.join(regions)}]}}\n"
        f"notify: {{urls: ['json://127.0.0.1:{receiver_port}/'], digest: ''}}\n"
    )
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="guardian daemon soak")
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--regions", type=int, default=2, choices=(1, 2, 3))
    parser.add_argument("--step", type=float, default=60.0, help="simulated seconds per cycle")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    if args.warmup >= args.cycles:
        parser.error("--warmup must be smaller than --cycles")

    import boto3

    from bench.fleet_seed import FleetShape, seed
    from guardian.simulated import moto_speedups
    from guardian.simulated.aws import fake_aws_env, start_moto_server

    regions = ("us-east-1", "us-west-2", "eu-west-1")[: args.regions]
    server, endpoint = start_moto_server(indexed_metrics=True)
    moto_speedups.enable()
    os.environ.update(fake_aws_env(endpoint))
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        simulated = timedelta(seconds=args.step * args.cycles)
        shape = FleetShape(instances=args.instances, regions=regions, future=simulated)
        fleet = seed(shape, boto3.Session(), progress=lambda s: print(f"  {s}", file=sys.stderr))
        moto_speedups.enable(latency_s=args.latency_ms / 1000)
        with tempfile.TemporaryDirectory(prefix="guardian-soak-") as tmp:
            workdir = Path(tmp)
            config = _config(workdir, regions, receiver.server_address[1])
            out = workdir / "soak.json"
            started = time.perf_counter()
            code = subprocess.call(
                [
                    sys.executable,
                    "-m",
                    "bench.soak",
                    "child",
                    str(config),
                    fleet.now.isoformat(),
                    str(args.cycles),
                    str(args.step),
                    str(out),
                ],
                cwd=ROOT,
                env=dict(os.environ),
            )
            wall = time.perf_counter() - started
            if code != 0:
                raise SystemExit(f"the soak's daemon exited {code}")
            rows: list[dict[str, Any]] = json.loads(out.read_text())
    finally:
        receiver.shutdown()
        moto_speedups.enable()
        server.stop()

    failed = [r["cycle"] for r in rows if r.get("failed")]
    warm, last = rows[args.warmup - 1]["rss_mb"], rows[-1]["rss_mb"]
    growth = last - warm
    after_warmup = [r["rss_mb"] for r in rows[args.warmup - 1 :]]
    seconds = [r["seconds"] for r in rows]
    print(
        f"\nsoak: {args.cycles} cycles of the daemon (enforce, {len(regions)} region(s), "
        f"{args.instances} instances, {args.step:g} s of simulated time a cycle) in {wall:.0f} s"
    )
    print(
        f"cycle time: median {statistics.median(seconds):.2f} s, max {max(seconds):.2f} s; "
        f"warned {sum(r.get('warned', 0) for r in rows)}, stopped "
        f"{sum(r.get('stopped', 0) for r in rows)}, alerts received {_Receiver.received}, "
        f"running at the end {rows[-1].get('instances', '?')}"
    )
    print(
        f"RSS: {rows[0]['rss_mb']:.1f} MB after cycle 1, {warm:.1f} MB after warm-up "
        f"(cycle {args.warmup}), {last:.1f} MB after cycle {args.cycles}; "
        f"max after warm-up {max(after_warmup):.1f} MB"
    )
    checks = [
        ("every cycle completed", not failed, f"failed cycles: {failed[:10]}" if failed else "all"),
        (
            "RSS growth after warm-up",
            growth < GROWTH_BUDGET_MB,
            f"{growth:+.2f} MB < {GROWTH_BUDGET_MB:g} MB",
        ),
    ]
    for name, passed, detail in checks:
        print(f"{'PASS' if passed else 'FAIL'}  {name}: {detail}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "cycles": args.cycles,
                    "instances": args.instances,
                    "regions": list(regions),
                    "wall_s": round(wall, 1),
                    "alerts_received": _Receiver.received,
                    "warned": sum(r.get("warned", 0) for r in rows),
                    "stopped": sum(r.get("stopped", 0) for r in rows),
                    "rows": rows,
                    "checks": {n: {"passed": p, "detail": d} for n, p, d in checks},
                },
                indent=1,
            )
            + "\n"
        )
    return 0 if all(passed for _, passed, _ in checks) else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        _, _, config_arg, start_arg, cycles_arg, step_arg, out_arg = sys.argv
        sys.exit(child(config_arg, start_arg, int(cycles_arg), float(step_arg), out_arg))
    sys.exit(main())
