"""The notebook signal against a real Jupyter Server: a kernel started through its REST API, its
PID matched to the fake NVML's process list, a browser (a websocket) connecting and leaving, code
running — and the agent stopping the machine once the kernel is left alone, not before.

One server for the module (it takes seconds to start), on 127.0.0.1 with a token.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import websocket
from structlog.testing import capture_logs

from guardian.agent.autostop import Alerter, Autostop, CloudTarget
from guardian.agent.gpu import Snapshot
from guardian.agent.gpu.fake import FakeNvml, ManualClock, Scenario
from guardian.agent.gpu.nvml import Nvml
from guardian.agent.jupyter import JupyterWatch
from guardian.agent.loop import Agent, local_instance
from guardian.agent.notebook import NotebookReport, NotebookWatch
from guardian.agent.processes import ProcessKind, ProcFs, classify
from guardian.agent.status import RunDir
from guardian.config import parse_config
from guardian.model import Verdict
from guardian.policy import NOTEBOOK_ADVICE, Step
from tests.fake_provider import FakeProvider, make_instance

TOKEN = "guardian-test-token"


class Jupyter:
    """A real Jupyter Server in a subprocess, and what a browser would do to it."""

    def __init__(self, root: Path) -> None:
        self.runtime = root / "runtime"
        env = {
            **os.environ,
            "JUPYTER_RUNTIME_DIR": str(self.runtime),
            "JUPYTER_CONFIG_DIR": str(root / "config"),
            "JUPYTER_DATA_DIR": str(root / "data"),
            "JUPYTER_PLATFORM_DIRS": "1",
            "IPYTHONDIR": str(root / "ipython"),
        }
        self.log = (root / "server.log").open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_server",
                "--ServerApp.ip=127.0.0.1",
                "--ServerApp.port=0",
                f"--ServerApp.root_dir={root}",
                f"--IdentityProvider.token={TOKEN}",
                "--ServerApp.open_browser=False",
                "--ServerApp.terminals_enabled=False",
                "--allow-root",  # CI runs as root
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        info = self._runtime_file(timeout_s=60)
        self.url: str = info["url"]
        # The runtime file can come before the port answers: ready when the API does.
        wait_for(self._answers, "the Jupyter API", timeout_s=60)

    def _answers(self) -> bool:
        try:
            self.api("GET", "api/status")
        except OSError:  # refused (urllib wraps it in URLError, an OSError)
            return False
        return True

    def _runtime_file(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter_server exited: see {self.log.name}")
            for path in self.runtime.glob("jpserver-*.json"):
                try:
                    return dict(json.loads(path.read_text()))
                except ValueError:
                    pass  # being written
            time.sleep(0.05)
        raise RuntimeError("jupyter_server did not start")

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Authorization": f"token {TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
        return json.loads(text) if text else None

    def kernel(self, kernel_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"api/kernels/{kernel_id}"))

    def start_kernel(self) -> tuple[str, int]:
        kernel_id = str(self.api("POST", "api/kernels", {"name": "python3"})["id"])
        return kernel_id, wait_for(lambda: _pid_of(kernel_id), "the kernel's process")

    def connect(self, kernel_id: str) -> websocket.WebSocket:
        ws_url = self.url.replace("http://", "ws://") + f"api/kernels/{kernel_id}/channels"
        return websocket.create_connection(
            ws_url, header=[f"Authorization: token {TOKEN}"], timeout=10
        )

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)  # it shuts its kernels down first
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def _pid_of(kernel_id: str) -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if kernel_id.encode() in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    return None


def wait_for(probe: Callable[[], Any], what: str, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def execute(ws: websocket.WebSocket, code: str, on_busy: Callable[[], None] | None = None) -> None:
    """Run code in the kernel as a notebook does, until the kernel is idle again."""
    msg_id = uuid.uuid4().hex
    ws.send(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "session": uuid.uuid4().hex,
                    "username": "test",
                    "date": datetime.now(UTC).isoformat(),
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "content": {"code": code, "silent": False, "store_history": False},
                "channel": "shell",
            }
        )
    )
    while True:
        message = json.loads(ws.recv())
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if message["msg_type"] == "status":
            state = message["content"]["execution_state"]
            if state == "busy" and on_busy is not None:
                on_busy()
            if state == "idle":
                return


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jupyter]:
    server = Jupyter(tmp_path_factory.mktemp("jupyter"))
    try:
        yield server
    finally:
        server.close()


def gpu_snapshot(pid: int, now: datetime) -> Snapshot:
    scenario = Scenario.from_dict(
        {"phases": [{"util_pct": 0, "mem_used_mib": 9000, "processes": [{"pid": pid}]}]}
    )
    nvml = Nvml.open(FakeNvml(scenario))
    try:
        return nvml.sample(now)
    finally:
        nvml.close()


def watch(jupyter: Jupyter) -> NotebookWatch:
    proc = ProcFs()
    return NotebookWatch(proc, JupyterWatch([jupyter.runtime], timeout_s=5, is_alive=proc.exists))


def test_a_real_kernel_is_a_notebook_kernel_by_its_proc_entries(jupyter: Jupyter) -> None:
    kernel_id, pid = jupyter.start_kernel()
    try:
        info = classify(pid, ProcFs())
        # Its five ZeroMQ ports listen; they are its own (its connection file says so).
        assert info.kind is ProcessKind.NOTEBOOK_KERNEL, info.why
        assert info.kernel_id == kernel_id
        assert info.why == f"ipykernel_launcher, kernel {kernel_id}"
        assert classify(jupyter.process.pid, ProcFs()).kind is ProcessKind.SERVER
    finally:
        jupyter.api("DELETE", f"api/kernels/{kernel_id}")


def test_the_signal_appears_when_the_last_browser_leaves_and_resets_when_code_runs(
    jupyter: Jupyter,
) -> None:
    kernel_id, pid = jupyter.start_kernel()
    notebooks = watch(jupyter)
    later = datetime.now(UTC) + timedelta(hours=2)  # one moment to compare readings at

    def observe(at: datetime | None = None) -> NotebookReport:
        moment = at or datetime.now(UTC)
        return notebooks.observe(gpu_snapshot(pid, moment), moment)

    try:
        first, second = jupyter.connect(kernel_id), jupyter.connect(kernel_id)
        wait_for(lambda: jupyter.kernel(kernel_id)["connections"] == 2, "two connections")
        wait_for(lambda: jupyter.kernel(kernel_id)["execution_state"] == "idle", "idle")
        report = observe()
        assert report.idle_s is None
        assert report.why == f"kernel {kernel_id} has 2 browser connection(s)"
        assert [p.kind for p in report.processes] == [ProcessKind.NOTEBOOK_KERNEL]

        busy: list[NotebookReport] = []

        def while_busy() -> None:
            # The server learns of "busy" from its own iopub subscription: wait until it says so.
            wait_for(lambda: jupyter.kernel(kernel_id)["execution_state"] == "busy", "busy", 5)
            busy.append(observe())

        execute(first, "import time; time.sleep(1.5)", on_busy=while_busy)
        assert busy
        assert busy[0].why == f"kernel {kernel_id} is busy"

        first.close()
        wait_for(lambda: jupyter.kernel(kernel_id)["connections"] == 1, "one connection")
        assert observe().idle_s is None  # one browser still there
        second.close()
        wait_for(lambda: jupyter.kernel(kernel_id)["connections"] == 0, "no connection")
        report = observe()
        assert report.idle_s is not None
        assert report.idle_s < 60
        assert report.why.startswith("the notebook kernel holding the GPUs idle for")
        before = observe(later).idle_s
        assert before is not None

        time.sleep(0.2)  # code runs again, later: the kernel's last activity moves
        again = jupyter.connect(kernel_id)
        execute(again, "x = 1")
        again.close()
        wait_for(lambda: jupyter.kernel(kernel_id)["connections"] == 0, "no connection")
        after = observe(later).idle_s
        assert after is not None
        assert after < before
    finally:
        jupyter.api("DELETE", f"api/kernels/{kernel_id}")


def test_a_server_that_cannot_be_read_counts_as_a_browser_connected(
    jupyter: Jupyter, tmp_path: Path
) -> None:
    kernel_id, pid = jupyter.start_kernel()
    wrong = JupyterWatch([tmp_path], urls=[jupyter.url], tokens={jupyter.url: "wrong"})
    notebooks = NotebookWatch(ProcFs(), wrong)
    try:
        with capture_logs() as logs:
            reports = [notebooks.observe(gpu_snapshot(pid, datetime.now(UTC)), datetime.now(UTC))]
            reports += [
                notebooks.observe(gpu_snapshot(pid, datetime.now(UTC)), datetime.now(UTC))
                for _ in range(2)
            ]
        assert {r.idle_s for r in reports} == {None}
        assert reports[0].unread_servers == (jupyter.url,)
        assert "a Jupyter server could not be read" in reports[0].why
        unread = [e for e in logs if e["event"] == "jupyter_unreadable"]
        assert len(unread) == 1  # reported once, not on every poll
        assert unread[0]["error"].startswith("HTTP 403")
        assert TOKEN not in json.dumps(logs, default=str)
    finally:
        jupyter.api("DELETE", f"api/kernels/{kernel_id}")


def run_agent(
    jupyter: Jupyter, pid: int, tmp_path: Path, minutes: int
) -> tuple[list[Any], FakeProvider, RunDir, list[str]]:
    """The agent with autostop on a manual clock that starts now, polling every minute: three
    notebook cells (GPU busy 5 minutes, then a 15-minute think pause), the last pause never
    ending, the kernel holding the GPU throughout. The usual wait is 2 hours: longer than the
    notebook window, so the two cannot be confused."""
    clock = ManualClock(datetime.now(UTC))
    config = parse_config(
        {
            "agent": {"interval": "60s", "listen": "", "autostop": True},
            "idle": {"grace": "15m", "window": "2h"},
        }
    )
    held = {"pid": pid, "mem_mib": 9000}
    cells = [
        phase
        for _ in range(3)
        for phase in (
            {"for": "5m", "util_pct": 90, "mem_used_mib": 9000, "processes": [held]},
            {"for": "15m", "util_pct": 0, "mem_used_mib": 9000, "processes": [held]},
        )
    ]
    quiet = {"util_pct": 0, "mem_used_mib": 9000, "processes": [held]}
    nvml = Nvml.open(FakeNvml(Scenario.from_dict({"phases": [*cells, quiet]}), clock.monotonic))
    provider = FakeProvider([make_instance("i-0nb")])
    walls: list[str] = []

    class Wall(Alerter):
        def send(self, title: str, body: str) -> None:
            walls.append(f"{title}\n{body}")

    instance = dataclasses.replace(
        local_instance(1, "T4", clock.now() - timedelta(hours=1)),
        provider="aws",
        account="123456789012",
        region="us-east-1",
        instance_id="i-0nb",
    )
    run_dir = RunDir(tmp_path / "run")
    agent = Agent(
        config,
        nvml,
        instance,
        clock=clock,
        autostop=Autostop(config, CloudTarget(provider, "i-0nb"), Wall([], None)),
        run_dir=run_dir,
        notebooks=watch(jupyter),
    )
    results = []
    for _ in range(minutes):
        results.append(agent.poll())
        clock.advance(60)
    return results, provider, run_dir, walls


def minute_of(results: list[Any], step: Step) -> float | None:
    start = results[0].snapshot.sampled_at
    for result in results:
        if result.autostop is not None and result.autostop.step is step:
            return float((result.snapshot.sampled_at - start).total_seconds() / 60)
    return None


def test_the_agent_stops_a_machine_left_with_an_open_kernel_and_not_one_in_use(
    jupyter: Jupyter, tmp_path: Path
) -> None:
    kernel_id, pid = jupyter.start_kernel()
    browser = jupyter.connect(kernel_id)
    try:
        wait_for(lambda: jupyter.kernel(kernel_id)["execution_state"] == "idle", "idle")
        # A browser connected: today's waits (here at least the 2-hour window) apply.
        results, provider, _, _ = run_agent(jupyter, pid, tmp_path / "open", 125)
        assert provider.stopped == []
        assert Verdict.IDLE not in {r.decision.verdict for r in results}
        assert any("not yet idle" in r for r in results[-1].decision.reasons)
        assert results[-1].notebook is not None
        assert results[-1].notebook.why == f"kernel {kernel_id} has 1 browser connection(s)"

        browser.close()  # the person goes home, the kernel stays
        wait_for(lambda: jupyter.kernel(kernel_id)["connections"] == 0, "no connection")
        results, provider, run_dir, walls = run_agent(jupyter, pid, tmp_path / "left", 125)
        # The GPU has been quiet since minute 45 and the kernel since before the run: idle at
        # minute 104 (60 one-minute samples), warned, stopped after the 15-minute grace.
        assert minute_of(results, Step.WARN) == 104
        assert minute_of(results, Step.STOP) == 119
        assert provider.stopped == ["aws:123456789012:i-0nb"]
        warned = next(r for r in results if r.autostop and r.autostop.step is Step.WARN)
        assert warned.decision.reasons[0].startswith("notebook kernel idle for ")
        assert "no browser connected" in warned.decision.reasons[0]
        assert NOTEBOOK_ADVICE in walls[0]
        status = run_dir.read_status()
        assert status is not None
        [proc] = status["gpus"][0]["processes"]
        assert (proc["kind"], proc["kernel_id"]) == ("notebook-kernel", kernel_id)
        assert status["notebook"]["idle_s"] > 3600
        assert status["notebook"]["kernels"][0]["connections"] == 0
    finally:
        browser.close()
        jupyter.api("DELETE", f"api/kernels/{kernel_id}")
