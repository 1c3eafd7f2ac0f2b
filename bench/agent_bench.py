"""How much does ``guardian agent`` cost the machine it watches? CPU time and memory.

Two measurements, both with the scripted fake NVML (8 GPUs) so they run anywhere:

1. **The real process.** ``guardian agent`` runs as a subprocess at a 1 s interval for
   ``--seconds`` with the Prometheus endpoint on (scraped every 15 s, as a Prometheus server
   would) and its status file kept. CPU time comes from ``/proc/PID/task/*/schedstat`` (all
   threads, in nanoseconds) after a warm-up, memory from ``/proc/PID/status`` (VmRSS, VmHWM).
2. **A full window, in process.** A subprocess run of a minute keeps a minute of history, but
   the policy's work grows with the window (2 h at 1 s = 7,200 polls, merged 5 to a sample:
   1,440 samples). So the same agent is driven by a manual clock through a full window of idle
   GPUs (the idle scans then walk every sample: the worst case), and the CPU time of further
   polls is measured.

Goal: under 1 % of one core and under 60 MB RSS. ``--json`` prints the figures as JSON.
NVML itself costs a little more on a real GPU (each call is an ioctl); ``bench/gpu_smoke.sh``
runs the real thing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

EIGHT_IDLE = {
    "gpus": 8,
    "model": "NVIDIA H100 80GB HBM3",
    "mem_total_mib": 81559,
    "phases": [{"util_pct": 0, "mem_used_mib": 1, "processes": []}],
}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of a process, in seconds: from /proc/PID/task/*/schedstat
    (nanoseconds; the Prometheus server is a thread of its own), else utime + stime from
    /proc/PID/stat (clock ticks, too coarse for a process that uses 0.1 % of a core)."""
    try:
        return (
            sum(
                int((task / "schedstat").read_text().split()[0])
                for task in Path(f"/proc/{pid}/task").iterdir()
            )
            / 1e9
        )
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS


def memory_mib(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_process(seconds: float, warmup: float, scenario: str | None) -> dict[str, Any]:
    """The agent as a subprocess; ``scenario`` None reads the real NVML."""
    # ``python -m guardian``: on a GPU box the package may be on PYTHONPATH, with no script.
    guardian = [sys.executable, "-m", "guardian"]
    simulate = ["--simulate", scenario] if scenario else []
    port = free_port()
    with tempfile.TemporaryDirectory() as run_dir:
        command = [
            *guardian,
            "--log-level",
            "warning",
            "agent",
            *simulate,
            "--run-dir",
            run_dir,
            "--set",
            "agent.interval=1s",
            "--set",
            f"agent.listen=127.0.0.1:{port}",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GUARDIAN_", "AWS_"))}
        if scenario is None and "GUARDIAN_NVML_BACKEND" in os.environ:  # a rehearsal
            env["GUARDIAN_NVML_BACKEND"] = os.environ["GUARDIAN_NVML_BACKEND"]
        started = time.monotonic()
        agent = subprocess.Popen(command, env=env)
        try:
            status = Path(run_dir) / "agent-status.json"
            while not status.exists():
                if agent.poll() is not None:
                    raise SystemExit(f"the agent exited with {agent.returncode}")
                time.sleep(0.05)
            ready_s = time.monotonic() - started
            time.sleep(warmup)
            cpu0, wall0 = cpu_seconds(agent.pid), time.monotonic()
            startup_cpu_s = cpu0
            scrapes = 0
            next_scrape = wall0
            while time.monotonic() - wall0 < seconds:
                if time.monotonic() >= next_scrape:
                    url = f"http://127.0.0.1:{port}/metrics"
                    with urllib.request.urlopen(url, timeout=5) as response:
                        response.read()
                    scrapes += 1
                    next_scrape += 15
                time.sleep(0.25)
            cpu1, wall1 = cpu_seconds(agent.pid), time.monotonic()
            memory = memory_mib(agent.pid)
            samples = json.loads(status.read_text())["agent"]["window_samples"]
        finally:
            agent.terminate()
            agent.wait(timeout=15)
    return {
        "seconds_measured": round(wall1 - wall0, 1),
        "ready_after_s": round(ready_s, 2),
        "startup_cpu_s": round(startup_cpu_s, 2),
        "cpu_pct_of_one_core": round(100 * (cpu1 - cpu0) / (wall1 - wall0), 3),
        "rss_mib": round(memory["VmRSS"], 1),
        "peak_rss_mib": round(memory["VmHWM"], 1),
        "window_samples": samples,
        "prometheus_scrapes": scrapes,
    }


def bench_full_window(extra_polls: int) -> dict[str, Any]:
    """Per-poll CPU with the 2 h window full (1,440 samples at 1 s) and every GPU idle."""
    from guardian.agent.gpu.fake import FakeNvml, ManualClock, Scenario
    from guardian.agent.gpu.nvml import Nvml
    from guardian.agent.loop import Agent, local_instance
    from guardian.agent.publish import PrometheusSink
    from guardian.agent.status import RunDir
    from guardian.config import parse_config
    from guardian.logs import configure_logging

    configure_logging("console", "warning")
    config = parse_config({"agent": {"interval": "1s", "listen": ""}})
    clock = ManualClock()
    nvml = Nvml.open(FakeNvml(Scenario.from_dict(EIGHT_IDLE, "idle-8gpu"), clock=clock.monotonic))
    instance = local_instance(8, "H100", clock.now(), "bench")
    with tempfile.TemporaryDirectory() as run_dir:
        sink = PrometheusSink("", serve=False)
        agent = Agent(
            config, nvml, instance, clock=clock, sinks=[sink], run_dir=RunDir(Path(run_dir))
        )
        while len(agent.window) < agent.window.capacity:
            agent.poll()
            clock.advance(1)
        assert len(agent.window) == agent.window.capacity
        verdict = agent.last.decision.verdict if agent.last else None
        started = time.process_time()
        for _ in range(extra_polls):
            agent.poll()
            clock.advance(1)
        per_poll_ms = 1000 * (time.process_time() - started) / extra_polls
        agent.close()
    return {
        "window_samples": agent.window.capacity,
        "polls_per_sample": agent.window.per_sample,
        "verdict": str(verdict),
        "cpu_ms_per_poll": round(per_poll_ms, 3),
        "cpu_pct_of_one_core_at_1s": round(per_poll_ms / 10, 3),
    }


def bench_nvml_sample(samples: int) -> dict[str, Any]:
    """Wall and CPU time of one direct sample of every GPU through the real NVML."""
    from datetime import UTC, datetime

    from guardian.agent.gpu.nvml import Nvml, load_backend

    nvml = Nvml.open(load_backend())
    try:
        first = nvml.sample(datetime.now(UTC))
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(samples):
            nvml.sample(datetime.now(UTC))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        nvml.close()
    return {
        "gpus": len(first.gpus),
        "samples": samples,
        "wall_ms_per_sample": round(1000 * wall / samples, 3),
        "cpu_ms_per_sample": round(1000 * cpu / samples, 3),
    }


def main_real_nvml(seconds: float, warmup: float, samples: int) -> dict[str, Any]:
    return {
        "cpu": os.cpu_count(),
        "python": sys.version.split()[0],
        "nvml_sample": bench_nvml_sample(samples),
        "process_real_nvml": bench_process(seconds, warmup, None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=45.0, help="measured run (default 45)")
    parser.add_argument("--warmup", type=float, default=5.0, help="ignored start (default 5)")
    parser.add_argument("--polls", type=int, default=600, help="full-window polls to time")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument(
        "--real-nvml",
        action="store_true",
        help="on a GPU machine: the real NVML instead of the fake (per-sample cost, the process)",
    )
    args = parser.parse_args()
    if args.real_nvml:
        print(json.dumps(main_real_nvml(args.seconds, args.warmup, args.polls), indent=2))
        return
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as scenario:
        json.dump(EIGHT_IDLE, scenario)
    try:
        process = bench_process(args.seconds, args.warmup, scenario.name)
    finally:
        os.unlink(scenario.name)
    window = bench_full_window(args.polls)
    busy = bench_process(min(args.seconds, 20.0), args.warmup, "busy-8gpu")
    result: dict[str, Any] = {
        "cpu": os.cpu_count(),
        "python": sys.version.split()[0],
        "process_idle_8gpu": process,
        "process_busy_8gpu": busy,
        "full_window": window,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"guardian agent, fake NVML, 8 GPUs, 1 s interval, Python {result['python']}")
    for name in ("process_idle_8gpu", "process_busy_8gpu"):
        p = result[name]
        print(
            f"  {name}: {p['cpu_pct_of_one_core']}% of one core over {p['seconds_measured']} s, "
            f"RSS {p['rss_mib']} MiB (peak {p['peak_rss_mib']}), ready in {p['ready_after_s']} s "
            f"({p['startup_cpu_s']} s CPU)"
        )
    w = result["full_window"]
    print(
        f"  full 2 h window ({w['window_samples']} samples, verdict {w['verdict']}): "
        f"{w['cpu_ms_per_poll']} ms CPU per poll = {w['cpu_pct_of_one_core_at_1s']}% of one core"
    )


if __name__ == "__main__":
    main()
