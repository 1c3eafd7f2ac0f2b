"""Who holds the GPU: each process NVML lists, classified from ``/proc`` as a notebook kernel, a
server or a job.

Only a notebook kernel can earn the notebook shortcut (``guardian.agent.notebook``); a server
never can, and neither can a process we could not read (``unknown``): doubt keeps today's waits.

- **server**: a known serving binary (Triton, vLLM, TGI, TorchServe, Ray Serve, and a few more),
  itself or among its ancestors, or any process listening on a TCP port — for a kernel, any port
  outside its connection file that is not on the loopback interface (a notebook kernel running a
  Gradio app for others is serving, not idle; ipykernel's own IOPub pipe listens on 127.0.0.1);
- **notebook kernel**: ipykernel / ipykernel_launcher (Jupyter, VS Code), xeus kernels, IRkernel,
  IJulia, or any command started with a Jupyter connection file (``-f …/kernel-ID.json``, which
  every kernel launcher passes). A ``multiprocessing`` child inherits its parent's class;
- **job**: anything else.

``ProcFs`` reads one ``/proc`` root, injectable so that tests build fake trees. Listening sockets
are read in the process's own network namespace (``/proc/PID/net/tcp{,6}``) and matched to its
descriptors by inode, so a kernel in a container is judged by its own sockets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise
from pathlib import Path

__all__ = ["ProcFs", "ProcessInfo", "ProcessKind", "classify"]

_MAX_ANCESTORS = 16  # far more than any real launcher chain; a guard against a cycle in a fake
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column
_KERNEL_PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
# Loopback addresses as /proc/net/tcp{,6} spell them (little-endian words): 127.0.0.1, ::1 and
# ::ffff:127.0.0.1.
_LOOPBACK = frozenset(
    {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
)

# Serving programs by a word of their command line (a path's last part, ``.py`` dropped) ...
_SERVER_WORDS = frozenset(
    {
        "tritonserver",
        "triton_python_backend_stub",
        "text-generation-launcher",
        "text-generation-server",
        "text-generation-router",
        "torchserve",
        "model_service_worker",  # TorchServe's Python worker
        "org.pytorch.serve.ModelServer",  # TorchServe's Java frontend
        "llama-server",
        "ollama",
    }
)
# ... by a Python module they are started as (``-m vllm.entrypoints.openai.api_server``) ...
_SERVER_MODULES = (
    "vllm.entrypoints",
    "sglang.launch_server",
    "ray.serve",
    "text_generation_server",
)
# ... by a sub-command (``vllm serve MODEL``, Ray Serve's ``serve run app:app``) ...
_SERVER_COMMANDS = frozenset({("vllm", "serve"), ("serve", "run"), ("serve", "deploy")})
# ... and by the title Ray gives its actor processes.
_SERVER_TITLES = ("ray::ServeReplica", "ray::ServeController", "ray::ProxyActor", "ray::HTTPProxy")

_KERNEL_WORDS = frozenset(
    {
        "ipykernel",
        "ipykernel_launcher",
        "xpython",
        "kernel_launcher_daemon",  # VS Code's older Jupyter kernel daemon
    }
)
_MULTIPROCESSING = ("multiprocessing.spawn", "multiprocessing.forkserver", "--multiprocessing-fork")


class ProcessKind(StrEnum):
    NOTEBOOK_KERNEL = "notebook-kernel"
    SERVER = "server"
    JOB = "job"
    UNKNOWN = "unknown"  # /proc could not say: treated like a job, never like a kernel


@dataclass(frozen=True)
class ProcessInfo:
    """One GPU-holding process as classified; ``why`` is what a person reads in the status."""

    pid: int
    kind: ProcessKind
    why: str
    command: str | None = None  # the command line, shortened
    kernel_id: str | None = None  # a Jupyter kernel's id, from its connection file's name


def _word(arg: str) -> str:
    base = arg.rstrip("/").rsplit("/", 1)[-1]
    return base.removesuffix(".py")


def _short(argv: tuple[str, ...]) -> str:
    text = " ".join(argv)
    return text if len(text) <= 160 else text[:159] + "…"


class ProcFs:
    """Reads what classification needs from one ``/proc`` tree; every miss is ``None``."""

    def __init__(self, root: Path = Path("/proc")) -> None:
        self.root = root

    def exists(self, pid: int) -> bool:
        return (self.root / str(pid)).is_dir()

    def cmdline(self, pid: int) -> tuple[str, ...] | None:
        try:
            raw = (self.root / str(pid) / "cmdline").read_bytes()
        except OSError:
            return None
        if not raw:
            return None  # a kernel thread or a zombie: nothing to classify by
        return tuple(part.decode("utf-8", "replace") for part in raw.rstrip(b"\0").split(b"\0"))

    def parent(self, pid: int) -> int | None:
        try:
            stat = (self.root / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after
        # the last ")".
        fields = stat.rpartition(")")[2].split()
        try:
            ppid = int(fields[1])
        except (IndexError, ValueError):
            return None
        return ppid if ppid > 0 else None

    def socket_inodes(self, pid: int) -> set[int] | None:
        """The inodes of the sockets this process holds open; None if its fds are unreadable."""
        fd_dir = self.root / str(pid) / "fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            return None
        inodes: set[int] = set()
        for name in names:
            try:
                target = os.readlink(fd_dir / name)
            except OSError:
                continue  # closed between listing and reading
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
        return inodes

    def listening_ports(self, pid: int) -> dict[int, tuple[int, bool]] | None:
        """Listening TCP sockets of the process's network namespace: inode → (port, whether
        bound to the loopback interface only).

        Linux lists the listening sockets first (``tcp_seq_start`` walks the listening hash
        before the established one), so reading stops at the first other line: on a busy server
        the connections after them can be thousands of lines the kernel need not format.
        """
        found: dict[int, tuple[int, bool]] = {}
        readable = False
        for name in ("tcp", "tcp6"):
            try:
                with (self.root / str(pid) / "net" / name).open(encoding="ascii") as table:
                    readable = True
                    next(table, None)  # the header
                    for line in table:
                        fields = line.split()
                        if len(fields) <= 9 or fields[3] != _LISTEN:
                            break
                        address, _, port = fields[1].rpartition(":")
                        found[int(fields[9])] = (int(port, 16), address.upper() in _LOOPBACK)
            except OSError:
                continue
        return found if readable else None

    def read_file(self, pid: int, path: str) -> str | None:
        """A file as the process sees it (through its root, so inside its container)."""
        for candidate in (self.root / str(pid) / "root" / path.lstrip("/"), Path(path)):
            try:
                return candidate.read_text(encoding="utf-8")
            except OSError:
                continue
        return None


def _server_reason(argv: tuple[str, ...]) -> str | None:
    if argv[0].startswith(_SERVER_TITLES):
        return argv[0].split(":", 3)[2] if argv[0].count(":") >= 2 else argv[0]
    words = [_word(arg) for arg in argv]
    for word in words:
        if word in _SERVER_WORDS:
            return word
        if word.startswith(_SERVER_MODULES):
            return word
    for pair in pairwise(words):
        if pair in _SERVER_COMMANDS:
            return " ".join(pair)
    return None


def _connection_file(argv: tuple[str, ...]) -> str | None:
    """The Jupyter connection file a kernel was started with (``-f F``, ``--f=F``,
    ``--connection-file F``, or IRkernel's bare ``…/kernel-ID.json``), if any."""
    for n, arg in enumerate(argv):
        for flag in ("-f", "--f", "--connection-file", "--connection_file"):
            if arg == flag and n + 1 < len(argv):
                return argv[n + 1]
            if arg.startswith(flag + "="):
                return arg.partition("=")[2]
    for arg in argv[1:]:
        if arg.endswith(".json") and _word(arg).startswith("kernel-"):
            return arg
    return None


def _kernel_reason(argv: tuple[str, ...], connection: str | None) -> str | None:
    for arg in argv:
        for part in arg.split("/"):
            word = part.removesuffix(".py")
            if word in _KERNEL_WORDS or word.startswith("xeus"):
                return word
        if "IRkernel::main" in arg or "IJulia" in arg:
            return "IRkernel" if "IRkernel" in arg else "IJulia"
    if connection is not None and _word(connection).startswith("kernel-"):
        return "Jupyter kernel launcher"
    return None


def _kernel_id(connection: str | None) -> str | None:
    if connection is None:
        return None
    name = _word(connection).removesuffix(".json")
    return name.removeprefix("kernel-") if name.startswith("kernel-") else None


def _own_ports(proc: ProcFs, pid: int, connection: str | None) -> set[int] | None:
    """The kernel's own ZeroMQ ports, from its connection file; None if unreadable."""
    if connection is None:
        return None
    text = proc.read_file(pid, connection)
    if text is None:
        return None
    try:
        data = json.loads(text)
        return {int(data[key]) for key in _KERNEL_PORTS if key in data}
    except (ValueError, TypeError):
        return None


def _listening(proc: ProcFs, pid: int) -> set[tuple[int, bool]] | None:
    """(port, loopback only) of each TCP socket this process listens on; None if unreadable."""
    inodes = proc.socket_inodes(pid)
    ports = proc.listening_ports(pid)
    if inodes is None or ports is None:
        return None
    return {listener for inode, listener in ports.items() if inode in inodes}


def _ports(ports: Iterable[int]) -> str:
    listed = sorted(ports)
    return ", ".join(str(p) for p in listed[:4]) + (" …" if len(listed) > 4 else "")


def _ancestors(proc: ProcFs, pid: int) -> list[tuple[int, tuple[str, ...]]]:
    chain: list[tuple[int, tuple[str, ...]]] = []
    seen = {pid}
    current = proc.parent(pid)
    while current is not None and current not in seen and len(chain) < _MAX_ANCESTORS:
        seen.add(current)
        argv = proc.cmdline(current)
        if argv is not None:
            chain.append((current, argv))
        current = proc.parent(current)
    return chain


def classify(pid: int, proc: ProcFs) -> ProcessInfo:
    """What one GPU-holding process is, and why we think so."""
    argv = proc.cmdline(pid)
    if argv is None:
        return ProcessInfo(pid, ProcessKind.UNKNOWN, "its command line cannot be read")
    command = _short(argv)
    ancestors = _ancestors(proc, pid)
    reason = _server_reason(argv)
    if reason is not None:
        return ProcessInfo(pid, ProcessKind.SERVER, reason, command)
    for parent, parent_argv in ancestors:
        reason = _server_reason(parent_argv)
        if reason is not None:
            why = f"child of {reason} (pid {parent})"
            return ProcessInfo(pid, ProcessKind.SERVER, why, command)
    if any(marker in arg for arg in argv for marker in _MULTIPROCESSING) and ancestors:
        # A worker of a multiprocessing pool (a DataLoader's, say) belongs to whoever started it.
        owner = classify(ancestors[0][0], proc)
        why = f"multiprocessing child of pid {owner.pid}: {owner.why}"
        return ProcessInfo(pid, owner.kind, why, command, owner.kernel_id)
    connection = _connection_file(argv)
    listening = _listening(proc, pid)
    kernel = _kernel_reason(argv, connection)
    if kernel is not None:
        kernel_id = _kernel_id(connection)
        own = _own_ports(proc, pid, connection)
        if listening is None:
            why = f"{kernel}, but its sockets cannot be read (is the agent root?)"
            return ProcessInfo(pid, ProcessKind.UNKNOWN, why, command, kernel_id)
        # Ports on the loopback interface are the kernel's own plumbing (its ZeroMQ channels,
        # ipykernel's IOPub pipe for forked children, the debugger); one open to the network
        # and not in its connection file serves something.
        exposed = {port for port, loopback in listening if not loopback}
        if exposed and own is None:
            why = f"{kernel}, but its connection file cannot be read to tell its own ports"
            return ProcessInfo(pid, ProcessKind.UNKNOWN, why, command, kernel_id)
        serving = exposed - (own or set())
        if serving:
            why = f"{kernel} serving on TCP port {_ports(serving)}"
            return ProcessInfo(pid, ProcessKind.SERVER, why, command, kernel_id)
        label = f"{kernel}, kernel {kernel_id}" if kernel_id else kernel
        return ProcessInfo(pid, ProcessKind.NOTEBOOK_KERNEL, label, command, kernel_id)
    if listening is None:
        return ProcessInfo(pid, ProcessKind.UNKNOWN, "its sockets cannot be read", command)
    if listening:
        why = f"listens on TCP port {_ports(port for port, _ in listening)}"
        return ProcessInfo(pid, ProcessKind.SERVER, why, command)
    return ProcessInfo(pid, ProcessKind.JOB, _word(argv[0]) or "a program", command)
