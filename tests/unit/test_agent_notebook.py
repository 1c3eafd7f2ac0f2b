"""The agent applies the notebook rule itself: a fake /proc tree says the GPU's process is a
kernel, a local HTTP server answers /api/kernels as Jupyter does, the clock is manual — and
`guardian agent keep` still wins."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from guardian.agent.gpu.fake import FakeNvml, ManualClock, load_scenario
from guardian.agent.gpu.nvml import Nvml
from guardian.agent.jupyter import JupyterWatch
from guardian.agent.loop import Agent, local_instance
from guardian.agent.notebook import NotebookWatch
from guardian.agent.poll import PollResult
from guardian.agent.processes import ProcFs
from guardian.agent.status import RunDir
from guardian.config import parse_config
from guardian.model import Verdict
from tests.fakes.procfs import FakeProc

KERNEL_PID = 5_000_002  # the fake NVML's "paused-job" kernel
CONNECTION = "/home/ada/.local/share/jupyter/runtime/kernel-k1.json"


class Kernels:
    """Jupyter's GET /api/kernels, answering with whatever ``state`` holds."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        kernels = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps([{"id": "k1", "name": "python3", **kernels.state}]).encode()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kernels() -> Iterator[Kernels]:
    server = Kernels()
    yield server
    server.close()


def make_agent(tmp_path: Path, kernels: Kernels, clock: ManualClock) -> tuple[Agent, RunDir]:
    proc = FakeProc(tmp_path / "proc")
    proc.add(1, ["/sbin/init"], ppid=0)
    ports = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}
    proc.add(
        KERNEL_PID,
        ["/usr/bin/python3", "-m", "ipykernel_launcher", "-f", CONNECTION],
        loopback=list(ports.values()),
        files={CONNECTION: json.dumps(ports)},
    )
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / "jpserver-1.json").write_text(json.dumps({"url": kernels.url, "pid": 1}))
    procfs = ProcFs(proc.root)
    watch = NotebookWatch(procfs, JupyterWatch([runtime], is_alive=procfs.exists))
    # A 2-hour usual wait, so that only the notebook rule can call it idle within the hour.
    config = parse_config({"agent": {"interval": "60s", "listen": ""}, "idle": {"window": "2h"}})
    nvml = Nvml.open(FakeNvml(load_scenario("paused-job"), clock=clock.monotonic))
    instance = local_instance(1, "A10G", clock.now() - timedelta(hours=1), "nb")
    run_dir = RunDir(tmp_path / "run")
    return Agent(config, nvml, instance, clock=clock, run_dir=run_dir, notebooks=watch), run_dir


def run(agent: Agent, clock: ManualClock, minutes: int) -> list[PollResult]:
    results = []
    for _ in range(minutes):
        results.append(agent.poll())
        clock.advance(60)
    return results


def first_idle(results: list[PollResult]) -> int | None:
    return next((n for n, r in enumerate(results) if r.decision.verdict is Verdict.IDLE), None)


def test_an_idle_kernel_with_no_browser_makes_the_machine_idle_after_the_window(
    tmp_path: Path, kernels: Kernels
) -> None:
    clock = ManualClock()
    kernels.state = {
        "execution_state": "idle",
        "connections": 0,
        "last_activity": (clock.now() + timedelta(minutes=5)).isoformat(),  # the last cell
    }
    agent, run_dir = make_agent(tmp_path, kernels, clock)
    results = run(agent, clock, 70)
    # Training for 5 minutes, then the kernel pauses holding 16 GB. At minute 64 the GPU has
    # been idle 60 one-minute samples but the kernel only 59 minutes; at 65 both are.
    assert results[64].notebook is not None
    assert results[64].notebook.idle_s == 59 * 60.0
    assert first_idle(results) == 65
    assert results[65].decision.reasons[0].startswith("notebook kernel idle for 60 min")
    status = run_dir.read_status()
    assert status is not None
    assert status["gpus"][0]["processes"][0]["kind"] == "notebook-kernel"

    # `guardian agent keep` still wins over the notebook rule.
    run_dir.write_keep(clock.now() + timedelta(hours=1))
    kept = run(agent, clock, 3)
    assert {r.decision.verdict for r in kept} == {Verdict.PROTECTED}


def test_with_a_browser_connected_the_usual_wait_applies(tmp_path: Path, kernels: Kernels) -> None:
    clock = ManualClock()
    kernels.state = {
        "execution_state": "idle",
        "connections": 1,
        "last_activity": clock.now().isoformat(),
    }
    agent, _ = make_agent(tmp_path, kernels, clock)
    results = run(agent, clock, 100)
    assert first_idle(results) is None
    assert results[-1].notebook is not None
    assert results[-1].notebook.why == "kernel k1 has 1 browser connection(s)"
