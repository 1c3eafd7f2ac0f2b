"""Finding Jupyter servers (runtime files, configured URLs, token files) and reading one over a
Unix socket; the status shows who holds the GPUs; the warning says what to save."""

from __future__ import annotations

import json
import os
import socketserver
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from guardian.agent.jupyter import JupyterServer, Kernel, find_servers, read_kernels, read_tokens
from guardian.agent.notebook import build_notebook_watch, notebook_signal
from guardian.agent.processes import ProcessInfo, ProcessKind
from guardian.commands.agent import render_status
from guardian.config import parse_config
from guardian.errors import ConfigError
from tests.clock import DAY, at

NOW = at(20)
TODAY = f"{DAY:%Y-%m-%d}"  # Jupyter writes ISO times: f"{TODAY}T18:00:00Z"


def runtime_file(directory: Path, name: str, **info: object) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(json.dumps(info))


def test_servers_from_runtime_files_and_urls(tmp_path: Path) -> None:
    ada, bob = tmp_path / "ada", tmp_path / "bob"
    runtime_file(ada, "jpserver-41.json", url="http://127.0.0.1:8888/", token="t1", pid=41)
    runtime_file(ada, "jpserver-42.json", url="http://127.0.0.1:8889/", token="t2", pid=42)
    runtime_file(bob, "nbserver-43.json", url="http://0.0.0.0:9999/lab/", token="", pid=43)
    runtime_file(bob, "jpserver-44.json", url="", sock="/run/jp.sock", base_url="/", pid=44)
    (bob / "jpserver-45.json").write_text("{half")  # being written: skipped this time
    alive = {41, 43, 44}.__contains__  # 42 died and left its file behind
    servers = find_servers(
        [ada, bob, tmp_path / "nobody"],
        urls=["http://10.0.0.5:8888", "http://127.0.0.1:8888/"],
        tokens={"http://10.0.0.5:8888/": "t3"},
        is_alive=alive,
    )
    assert [(s.label, s.token) for s in servers] == [
        ("http://127.0.0.1:8888/", "t1"),
        ("unix:/run/jp.sock", ""),
        ("http://127.0.0.1:9999/lab/", ""),  # every interface: asked on the loopback
        ("http://10.0.0.5:8888/", "t3"),  # the runtime file's own entry wins for 8888
    ]


def test_token_file_lines(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# tokens\nshared-token\nhttp://10.0.0.5:8888 own-token  # that one\n")
    urls = ["http://10.0.0.5:8888/", "http://10.0.0.6:8888"]
    assert read_tokens(path, urls) == {
        "http://10.0.0.5:8888/": "own-token",
        "http://10.0.0.6:8888/": "shared-token",
    }
    path.write_text("a b c\n")
    with pytest.raises(ConfigError, match=r"line 1: expected TOKEN or URL TOKEN"):
        read_tokens(path, urls)
    with pytest.raises(ConfigError, match=r"agent.jupyter.token_file: cannot read"):
        read_tokens(tmp_path / "missing", urls)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("urls", ["localhost:8888"], "is not an http:// or https:// URL"),
        ("timeout", "0s", "between 1s and 30s"),
        ("timeout", "2m", "between 1s and 30s"),
    ],
)
def test_jupyter_config_is_validated(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=f"agent.jupyter.{key}: .*{message}"):
        parse_config({"agent": {"jupyter": {key: value}}})


def test_a_token_file_problem_stops_the_agent_before_it_starts(tmp_path: Path) -> None:
    config = parse_config(
        {"agent": {"jupyter": {"urls": ["http://x:1/"], "token_file": str(tmp_path / "no")}}}
    )
    with pytest.raises(ConfigError, match=r"agent\.jupyter\.token_file"):
        build_notebook_watch(config)
    off = parse_config({"agent": {"jupyter": {"enabled": False}}})
    assert build_notebook_watch(off).jupyter is None


class _Kernels(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path == "/api/kernels" and self.headers["Authorization"] == "token s3"
        body = json.dumps(
            [
                {
                    "id": "k1",
                    "name": "python3",
                    "execution_state": "idle",
                    "last_activity": f"{TODAY}T18:00:00.5Z",
                    "connections": 0,
                },
                {"id": 7},  # not a kernel entry: skipped
            ]
        ).encode()
        self.send_response(200 if ok else 403)
        self.end_headers()
        self.wfile.write(body if ok else b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def unix_server(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "jp.sock")
    server = socketserver.UnixStreamServer(path, _Kernels)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path
    server.shutdown()
    server.server_close()
    os.unlink(path)


def test_a_server_on_a_unix_socket_is_read(unix_server: str) -> None:
    reading = read_kernels(JupyterServer("http://localhost/", "s3", unix_server))
    assert reading.error is None
    assert reading.kernels is not None
    (kernel,) = reading.kernels
    assert (kernel.id, kernel.execution_state, kernel.connections) == ("k1", "idle", 0)
    assert kernel.last_activity == at(18) + timedelta(milliseconds=500)
    assert kernel.server == f"unix:{unix_server}"
    refused = read_kernels(JupyterServer("http://localhost/", "wrong", unix_server))
    assert (refused.kernels, refused.error) == (None, "HTTP 403 Forbidden")


def kernel(kernel_id: str, state: str = "idle", connections: int | None = 0) -> Kernel:
    return Kernel(kernel_id, "python3", state, at(18),
                  connections, "http://127.0.0.1:8888/")  # fmt: skip


def test_the_signal_rule() -> None:
    k1 = ProcessInfo(1, ProcessKind.NOTEBOOK_KERNEL, "ipykernel_launcher", kernel_id="k1")
    k2 = ProcessInfo(2, ProcessKind.NOTEBOOK_KERNEL, "ipykernel_launcher", kernel_id="k2")
    job = ProcessInfo(3, ProcessKind.JOB, "python3")
    two = {"k1": kernel("k1"), "k2": kernel("k2")}
    idle_s, why = notebook_signal([k1, k2], two, False, NOW)
    assert idle_s == 7200.0
    assert why == "all 2 notebook kernels holding the GPUs idle for 120 min, no browser connected"
    assert notebook_signal([k1, job], two, False, NOW) == (None, "pid 3 is a job (python3)")
    assert notebook_signal([], two, False, NOW) == (None, "no process holds a GPU")
    assert notebook_signal([k1], {}, True, NOW)[1] == (
        "the kernel of pid 1 is on no Jupyter server we read (a Jupyter server could not be read)"
    )
    assert notebook_signal([k1], {"k1": kernel("k1", "busy")}, False, NOW)[1] == "kernel k1 is busy"
    for connections in (1, None):
        assert (
            notebook_signal([k1], {"k1": kernel("k1", connections=connections)}, False, NOW)[0]
            is None
        )


def test_status_shows_who_holds_the_gpus_and_the_signal() -> None:
    document = {
        "agent": {"running": True, "pid": 1, "interval_s": 10, "backend": "nvml"},
        "instance": {"provider": "aws", "instance_id": "i-1"},
        "verdict": "idle",
        "reasons": ["notebook kernel idle for 75 min, no browser connected"],
        "notebook": {
            "idle_s": 4500.0,
            "why": "the notebook kernel holding the GPUs idle for 75 min, no browser connected",
            "kernels": [
                {
                    "id": "k1",
                    "name": "python3",
                    "execution_state": "idle",
                    "connections": 0,
                    "last_activity": f"{TODAY}T18:45:00Z",
                }
            ],
            "unread_servers": ["http://127.0.0.1:9999/"],
        },
        "gpus": [
            {
                "index": 0,
                "name": "NVIDIA A10G",
                "processes": [
                    {
                        "pid": 4242,
                        "name": "python",
                        "gpu_mem_used_mib": 16000,
                        "kind": "notebook-kernel",
                        "why": "ipykernel_launcher, kernel k1",
                    }
                ],
            }
        ],
    }
    text = "\n".join(render_status(document))
    assert "pid 4242 python 16000 MiB  notebook-kernel: ipykernel_launcher, kernel k1" in text
    assert "notebook: signal: the notebook kernel holding the GPUs idle for 75 min" in text
    assert f"kernel k1 (python3): idle, 0 connection(s), last activity {TODAY}T18:45:00Z" in text
    assert (
        "unreadable Jupyter server: http://127.0.0.1:9999/ (counts as a browser connected)" in text
    )
