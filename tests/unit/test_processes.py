"""Who holds the GPU: process classification against fake /proc trees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guardian.agent.processes import ProcessKind, ProcFs, classify
from tests.fakes.procfs import FakeProc

PY = "/opt/conda/bin/python3.11"
KERNEL_ID = "5135ce62-bf93-4fa9-a87f-3926e451322e"
CONNECTION = f"/home/ada/.local/share/jupyter/runtime/kernel-{KERNEL_ID}.json"
PORTS = {"shell_port": 40001, "iopub_port": 40002, "stdin_port": 40003, "control_port": 40004}
PORTS["hb_port"] = 40005


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    fake = FakeProc(tmp_path / "proc")
    fake.add(1, ["/sbin/init"], ppid=0)
    fake.add(100, [PY, "-m", "jupyter_server", "--port=8888"], listening=[8888])
    return fake


def kernel(
    proc: FakeProc, pid: int = 200, *, extra_ports: tuple[int, ...] = (), ipv6: bool = False
) -> None:
    proc.add(
        pid,
        [PY, "-m", "ipykernel_launcher", "-f", CONNECTION],
        ppid=100,
        loopback=[*PORTS.values(), 38605],  # and ipykernel's IOPub pipe, in no connection file
        listening=extra_ports,
        ipv6=ipv6,
        connected=2,
        files={CONNECTION: json.dumps({**PORTS, "ip": "127.0.0.1", "key": "k"})},
    )


def kind_of(proc: FakeProc, pid: int) -> tuple[ProcessKind, str, str | None]:
    info = classify(pid, ProcFs(proc.root))
    return info.kind, info.why, info.kernel_id


def test_a_jupyter_kernel_is_a_notebook_kernel_despite_its_own_zmq_ports(proc: FakeProc) -> None:
    kernel(proc)
    kind, why, kernel_id = kind_of(proc, 200)
    assert kind is ProcessKind.NOTEBOOK_KERNEL
    assert kernel_id == KERNEL_ID
    assert why == f"ipykernel_launcher, kernel {KERNEL_ID}"


@pytest.mark.parametrize("ipv6", [False, True])
def test_a_kernel_that_serves_an_app_to_others_is_a_server(proc: FakeProc, ipv6: bool) -> None:
    kernel(proc, extra_ports=(7860,), ipv6=ipv6)  # a Gradio app on 0.0.0.0, from a cell
    kind, why, _ = kind_of(proc, 200)
    assert kind is ProcessKind.SERVER
    assert why == "ipykernel_launcher serving on TCP port 7860"


def test_a_kernel_whose_sockets_or_ports_cannot_be_read_is_unknown(proc: FakeProc) -> None:
    proc.add(
        300,
        [PY, "-m", "ipykernel_launcher", "-f", CONNECTION],
        listening=[40001],
        readable_fds=False,
        files={CONNECTION: json.dumps(PORTS)},
    )
    assert kind_of(proc, 300)[0] is ProcessKind.UNKNOWN
    # Listening, but without its connection file nobody can tell its own ports from a server's.
    proc.add(301, [PY, "-m", "ipykernel_launcher", "-f", "/gone/kernel-x.json"], listening=[1])
    kind, why, kernel_id = kind_of(proc, 301)
    assert kind is ProcessKind.UNKNOWN
    assert "connection file" in why
    assert kernel_id == "x"
    # Only loopback listeners (as a kernel's own are by default): nothing it could serve to.
    proc.add(302, [PY, "-m", "ipykernel_launcher", "-f", "/gone/kernel-y.json"], loopback=[1, 2])
    assert kind_of(proc, 302)[0] is ProcessKind.NOTEBOOK_KERNEL


@pytest.mark.parametrize(
    ("argv", "kernel_id"),
    [
        # VS Code's Jupyter extension: --f=..., a kernel no Jupyter server owns.
        (
            [PY, "-m", "ipykernel_launcher", "--f=/home/ada/.local/share/jupyter/runtime/"
             "kernel-v2-3021abcd.json"],
            "v2-3021abcd",
        ),
        ([PY, "/opt/conda/lib/python3.11/site-packages/ipykernel/__main__.py", "-f", CONNECTION],
         KERNEL_ID),
        (["/opt/conda/bin/xpython", "-f", CONNECTION], KERNEL_ID),
        (["/usr/lib/R/bin/exec/R", "--slave", "-e", "IRkernel::main()", "--args", CONNECTION],
         KERNEL_ID),
        (["/opt/julia/bin/julia", "-i", "/home/ada/.julia/packages/IJulia/x/src/kernel.jl",
          CONNECTION], KERNEL_ID),
        # Any kernelspec's argv: Jupyter passes the connection file.
        (["/usr/local/bin/my-kernel", "--connection-file", CONNECTION], KERNEL_ID),
    ],
)  # fmt: skip
def test_kernel_flavours(proc: FakeProc, argv: list[str], kernel_id: str) -> None:
    path = next(a.partition("=")[2] or a for a in argv if a.endswith(".json"))
    proc.add(400, argv, ppid=100, listening=[*PORTS.values()], files={path: json.dumps(PORTS)})
    kind, _, found = kind_of(proc, 400)
    assert kind is ProcessKind.NOTEBOOK_KERNEL
    assert found == kernel_id


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["/opt/tritonserver/bin/tritonserver", "--model-repository=/models"], "tritonserver"),
        (["/usr/bin/python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "m"],
         "vllm.entrypoints.openai.api_server"),
        (["/usr/local/bin/vllm", "serve", "meta-llama/Llama-3-8B"], "vllm serve"),
        (["text-generation-launcher", "--model-id", "m"], "text-generation-launcher"),
        (["java", "-cp", "ts.jar", "org.pytorch.serve.ModelServer"],
         "org.pytorch.serve.ModelServer"),
        (["ray::ServeReplica:default:Model"], "ServeReplica"),
        ([PY, "/opt/conda/bin/serve", "run", "app:app"], "serve run"),
    ],
)  # fmt: skip
def test_serving_binaries_are_servers_even_without_a_socket(
    proc: FakeProc, argv: list[str], why: str
) -> None:
    proc.add(500, argv)
    assert kind_of(proc, 500)[:2] == (ProcessKind.SERVER, why)


def test_a_child_of_a_serving_binary_is_a_server(proc: FakeProc) -> None:
    proc.add(600, ["/opt/tritonserver/bin/tritonserver", "--model-repository=/m"])
    proc.add(601, ["/usr/bin/python3", "worker.py"], ppid=600)  # a Python backend's stub
    assert kind_of(proc, 601)[:2] == (ProcessKind.SERVER, "child of tritonserver (pid 600)")


def test_any_listener_is_a_server_and_the_rest_are_jobs(proc: FakeProc) -> None:
    proc.add(700, [PY, "app.py"], loopback=[8000], ipv6=True)  # a job's listener, even local
    proc.add(701, [PY, "train.py", "--epochs", "3"], connected=3)  # clients only: a job
    assert kind_of(proc, 700)[:2] == (ProcessKind.SERVER, "listens on TCP port 8000")
    assert kind_of(proc, 701)[:2] == (ProcessKind.JOB, "python3.11")


def test_multiprocessing_workers_belong_to_whoever_started_them(proc: FakeProc) -> None:
    kernel(proc)
    spawn = "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7)"
    proc.add(800, [PY, "-c", spawn, "--multiprocessing-fork"], ppid=200)
    kind, why, kernel_id = kind_of(proc, 800)
    assert kind is ProcessKind.NOTEBOOK_KERNEL
    assert kernel_id == KERNEL_ID
    assert why.startswith("multiprocessing child of pid 200")
    # A program the kernel started with its own command line is a job of its own.
    proc.add(801, [PY, "train.py"], ppid=200)
    assert kind_of(proc, 801)[0] is ProcessKind.JOB


def test_unreadable_or_odd_processes(proc: FakeProc) -> None:
    assert kind_of(proc, 999)[:2] == (ProcessKind.UNKNOWN, "its command line cannot be read")
    proc.add(900, [PY, "job.py"], readable_fds=False)
    assert kind_of(proc, 900)[:2] == (ProcessKind.UNKNOWN, "its sockets cannot be read")
    # comm with spaces and parentheses does not confuse the parent's pid.
    proc.add(901, [PY, "x.py"], ppid=600, comm="a) b (c")
    proc.add(600, ["/opt/tritonserver/bin/tritonserver"])
    assert ProcFs(proc.root).parent(901) == 600
    assert kind_of(proc, 901)[0] is ProcessKind.SERVER
