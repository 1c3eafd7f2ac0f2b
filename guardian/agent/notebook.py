"""The notebook signal: how long the notebook kernels holding the GPUs have been left alone.

``notebook_idle_s`` is the seconds since the last activity of any kernel holding a GPU, given only
when *every* GPU-holding process is a notebook kernel (``guardian.agent.processes``) that a Jupyter
server we can read (``guardian.agent.jupyter``) reports idle with no browser connected. Anything
else — a server or a job beside it, a kernel no server owns (VS Code's), a server we cannot read,
a busy kernel, a browser tab still open — leaves the signal absent, and the policy keeps today's
waits. The agent publishes it beside the GPU metrics; the policy reads it in ``decide``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import structlog

from guardian.agent.gpu import Snapshot
from guardian.agent.jupyter import JupyterWatch, Kernel, ServerReading, read_tokens
from guardian.agent.processes import ProcessInfo, ProcessKind, ProcFs, classify
from guardian.config import Config

__all__ = ["NotebookReport", "NotebookWatch", "build_notebook_watch", "notebook_signal"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class NotebookReport:
    """One poll's view of who holds the GPUs and what their notebook kernels are doing."""

    processes: tuple[ProcessInfo, ...]  # every GPU-holding process, classified
    kernels: tuple[Kernel, ...]  # the Jupyter kernels matched to those processes
    idle_s: float | None  # the signal; None = absent
    why: str  # why it is present or absent, for `guardian agent status`
    unread_servers: tuple[str, ...] = ()  # servers that could not be read this poll

    def kind_of(self, pid: int) -> ProcessInfo | None:
        return next((p for p in self.processes if p.pid == pid), None)


def _gpu_pids(snapshot: Snapshot) -> list[int] | None:
    """Distinct PIDs holding any GPU, in order; None if any GPU's process list is unknown."""
    pids: dict[int, None] = {}
    for gpu in snapshot.gpus:
        if gpu.processes is None:
            return None
        pids.update((proc.pid, None) for proc in gpu.processes)
    return list(pids) if snapshot.gpus else None


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min"


def notebook_signal(
    processes: Sequence[ProcessInfo],
    kernels: Mapping[str, Kernel],
    servers_unread: bool,
    now: datetime,
) -> tuple[float | None, str]:
    """The signal and why: pure, so the rule is tested without /proc or Jupyter."""
    if not processes:
        return None, "no process holds a GPU"
    for proc in processes:
        if proc.kind is not ProcessKind.NOTEBOOK_KERNEL:
            return None, f"pid {proc.pid} is a {proc.kind} ({proc.why})"
    latest: datetime | None = None
    for proc in processes:
        kernel = kernels.get(proc.kernel_id or "")
        if kernel is None:
            unread = " (a Jupyter server could not be read)" if servers_unread else ""
            return None, f"the kernel of pid {proc.pid} is on no Jupyter server we read{unread}"
        if kernel.execution_state != "idle":
            return None, f"kernel {kernel.id} is {kernel.execution_state}"
        if kernel.connections is None or kernel.connections > 0:
            count = "?" if kernel.connections is None else kernel.connections
            return None, f"kernel {kernel.id} has {count} browser connection(s)"
        if kernel.last_activity is None:
            return None, f"kernel {kernel.id} reports no last activity"
        latest = kernel.last_activity if latest is None else max(latest, kernel.last_activity)
    assert latest is not None  # processes is not empty and each set it
    idle_s = max(0.0, (now - latest).total_seconds())
    count = len(processes)
    what = "the notebook kernel" if count == 1 else f"all {count} notebook kernels"
    return idle_s, f"{what} holding the GPUs idle for {_minutes(idle_s)}, no browser connected"


def _kernels(readings: Iterable[ServerReading]) -> dict[str, Kernel]:
    return {k.id: k for r in readings if r.kernels is not None for k in r.kernels}


class NotebookWatch:
    """Classifies the GPU-holding processes each poll and, when they are all notebook kernels,
    reads Jupyter: a machine running a job or a server never costs an HTTP request."""

    def __init__(self, proc: ProcFs, jupyter: JupyterWatch | None) -> None:
        self.proc = proc
        self.jupyter = jupyter
        self._present = False

    def poll(self, snapshot: Snapshot, now: datetime) -> NotebookReport | None:
        """``observe`` for the agent's loop: a bug reading /proc or Jupyter must not stop the
        measuring (no report, so no signal), and the signal's coming and going is logged once."""
        try:
            report = self.observe(snapshot, now)
        except Exception:
            log.exception("notebook_observe_crashed")
            return None
        present = report.idle_s is not None
        if present != self._present:
            log.info("notebook_signal", present=present, why=report.why)
            self._present = present
        return report

    def observe(self, snapshot: Snapshot, now: datetime) -> NotebookReport:
        pids = _gpu_pids(snapshot)
        if pids is None:
            return NotebookReport((), (), None, "the GPUs' process lists are unknown")
        processes = tuple(classify(pid, self.proc) for pid in pids)
        all_kernels = bool(processes) and all(
            p.kind is ProcessKind.NOTEBOOK_KERNEL for p in processes
        )
        readings: list[ServerReading] = []
        if all_kernels and self.jupyter is not None:
            readings = self.jupyter.read()
        unread = tuple(r.server.label for r in readings if r.kernels is None)
        kernels = _kernels(readings)
        idle_s, why = notebook_signal(processes, kernels, bool(unread), now)
        if all_kernels and self.jupyter is None:
            why = "notebook kernels hold the GPUs, but reading Jupyter is off (agent.jupyter)"
        matched = tuple(kernels[p.kernel_id] for p in processes if p.kernel_id in kernels)
        return NotebookReport(processes, tuple(dict.fromkeys(matched)), idle_s, why, unread)


def build_notebook_watch(config: Config, proc_root: Path = Path("/proc")) -> NotebookWatch:
    """The watch ``agent.jupyter`` asks for; a token file it cannot read is a ConfigError."""
    proc = ProcFs(proc_root)
    settings = config.agent.jupyter
    jupyter = None
    if settings.enabled:
        jupyter = JupyterWatch(
            settings.runtime_dirs or None,
            urls=settings.urls,
            tokens=read_tokens(settings.token_file, settings.urls),
            timeout_s=settings.timeout.total_seconds(),
            is_alive=proc.exists,
        )
    return NotebookWatch(proc, jupyter)
