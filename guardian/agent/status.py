"""The agent's run directory (``/run/gpu-guardian``) and what lives there.

Two small files, both plain text a person can read: ``agent-status.json``, which the running
agent rewrites (GPUs, processes, verdict, pending stop) and ``guardian agent status`` reads, and
``keep-until``, which ``guardian agent keep 2h`` writes and the agent honours. The status format
is built here for both writers: the running agent, and ``status`` sampling by itself when no
agent runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from guardian.agent.gpu import GpuProcess, GpuReading, Snapshot
from guardian.errors import GuardianError

if TYPE_CHECKING:
    from guardian.agent.notebook import NotebookReport
    from guardian.agent.poll import PollResult
    from guardian.model import GpuInstance

__all__ = [
    "DEFAULT_RUN_DIR",
    "MAX_KEEP",
    "RUN_DIR_ENV",
    "AgentFacts",
    "RunDir",
    "sample_document",
    "status_document",
]

log = structlog.get_logger(__name__)

DEFAULT_RUN_DIR = Path("/run/gpu-guardian")
RUN_DIR_ENV = "GUARDIAN_RUN_DIR"
MAX_KEEP = timedelta(days=7)  # longer than this is a job for the guardian:keep-until tag
STATUS_FILE = "agent-status.json"
KEEP_FILE = "keep-until"


@dataclass(frozen=True)
class AgentFacts:
    """The running agent as the status file shows it (the agent builds it for each write)."""

    started_at: datetime
    interval: timedelta
    backend: str
    window_samples: int
    window_capacity: int
    autostop: bool
    dry_run: bool
    instance: GpuInstance


class RunDir:
    """The agent's run directory: its status file and the keep-until file people write."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or Path(os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR)
        self.status_path = self.path / STATUS_FILE
        self.keep_path = self.path / KEEP_FILE
        self._status_error: str | None = None

    def ensure_writable(self) -> None:
        """Fail early, in one line, if the agent cannot keep its status here."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".probe-{os.getpid()}"
            probe.write_text("", encoding="ascii")
            probe.unlink()
        except OSError as exc:
            raise GuardianError(
                f"cannot write to the run directory {self.path}: {exc.strerror or exc} "
                f"(run as root, or set --run-dir / ${RUN_DIR_ENV})"
            ) from exc

    def keep_until(self, now: datetime) -> datetime | None:
        """The time a person asked to keep the machine until, if still in the future."""
        try:
            text = self.keep_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("keep_file_unreadable", path=str(self.keep_path), error=str(exc))
            return now + MAX_KEEP  # someone meant to keep the machine: safety wins
        try:
            until = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            log.warning("keep_file_malformed", path=str(self.keep_path), content=text[:80])
            return now + MAX_KEEP
        until = until if until.tzinfo else until.replace(tzinfo=UTC)
        return until if until > now else None

    def write_keep(self, until: datetime) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._atomic_write(self.keep_path, until.astimezone(UTC).isoformat() + "\n")

    def clear_keep(self) -> bool:
        try:
            self.keep_path.unlink()
        except FileNotFoundError:
            return False
        return True

    def write_status(self, document: dict[str, Any]) -> None:
        text = json.dumps(document, separators=(",", ":")) + "\n"  # the C encoder: cheap
        try:
            try:
                self._atomic_write(self.status_path, text)
            except FileNotFoundError:  # /run is a tmpfs: the directory may be gone
                self.path.mkdir(parents=True, exist_ok=True)
                self._atomic_write(self.status_path, text)
        except OSError as exc:  # a full /run must not stop the measuring; say so once
            if str(exc) != self._status_error:
                log.warning("status_write_failed", path=str(self.status_path), error=str(exc))
            self._status_error = str(exc)
        else:
            self._status_error = None

    def read_status(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.status_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def remove_status(self) -> None:
        with contextlib.suppress(OSError):
            self.status_path.unlink()

    @staticmethod
    def _atomic_write(path: Path, text: str) -> None:
        # Readers never see half a file: write a sibling, then rename over. The directory may
        # be shared (mode 1777, so anyone can `keep`): never follow a link planted there.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


def _process(proc: GpuProcess, notebook: NotebookReport | None) -> dict[str, Any]:
    info = notebook.kind_of(proc.pid) if notebook is not None else None
    return {
        **dataclasses.asdict(proc),
        "kind": str(info.kind) if info else None,
        "why": info.why if info else None,
        "kernel_id": info.kernel_id if info else None,
    }


def _notebook(report: NotebookReport | None) -> dict[str, Any] | None:
    """Who holds the GPUs and the notebook signal, as the status shows them."""
    if report is None:
        return None
    return {
        "idle_s": None if report.idle_s is None else round(report.idle_s, 1),
        "why": report.why,
        "kernels": [
            {
                "id": k.id,
                "name": k.name,
                "execution_state": k.execution_state,
                "last_activity": _iso(k.last_activity),
                "connections": k.connections,
                "server": k.server,
            }
            for k in report.kernels
        ],
        "unread_servers": list(report.unread_servers),
    }


def _gpus(
    gpus: tuple[GpuReading, ...], notebook: NotebookReport | None = None
) -> list[dict[str, Any]]:
    return [
        {
            "index": g.index,
            "uuid": g.uuid,
            "name": g.name,
            "gpu_util_pct": g.gpu_util_pct,
            "mem_util_pct": g.mem_util_pct,
            "mem_used_mib": g.mem_used_mib,
            "mem_total_mib": g.mem_total_mib,
            "processes": (
                [_process(p, notebook) for p in g.processes] if g.processes is not None else None
            ),
            "problems": [str(p) for p in g.problems],
        }
        for g in gpus
    ]


def status_document(agent: AgentFacts, result: PollResult) -> dict[str, Any]:
    """What ``guardian agent status`` shows: GPUs, processes, verdict, any pending stop."""
    snap, decision, stop = result.snapshot, result.decision, result.autostop
    inst = agent.instance
    return {
        "agent": {
            "running": True,
            "pid": os.getpid(),
            "started_at": _iso(agent.started_at),
            "updated_at": _iso(snap.sampled_at),
            "interval_s": agent.interval.total_seconds(),
            "backend": agent.backend,
            "window_samples": agent.window_samples,
            "window_capacity": agent.window_capacity,
            "autostop": agent.autostop,
            "dry_run": agent.dry_run,
        },
        "instance": {
            "provider": inst.provider,
            "account": inst.account,
            "region": inst.region,
            "zone": inst.zone,
            "instance_id": inst.instance_id,
            "instance_type": inst.instance_type,
            "launch_time": _iso(inst.launch_time),
        },
        "driver_version": snap.driver_version,
        "gpus": _gpus(snap.gpus, result.notebook),
        "expected_gpus": snap.expected_gpus,
        "problems": [str(p) for p in snap.problems],
        "notebook": _notebook(result.notebook),
        "verdict": str(decision.verdict),
        "reasons": list(decision.reasons),
        "idle_minutes": decision.idle_minutes,
        "idle_window_minutes": decision.idle_window_minutes,
        "keep_until": _iso(result.keep_until),
        "pending_stop": (
            {"warned_at": _iso(stop.episode.warned_at), "deadline": _iso(stop.episode.deadline)}
            if stop is not None and stop.episode is not None
            else None
        ),
        "stop": (
            {"step": str(stop.step), "message": stop.message, "stopped": stop.stopped}
            if stop is not None
            else None
        ),
        "local_disks": (
            {
                "devices": list(result.local_disks.devices),
                "mounts": list(result.local_disks.mounts),
                "used_mib": result.local_disks.used_mib,
            }
            if result.local_disks is not None
            else None
        ),
    }


def sample_document(
    snapshot: Snapshot, keep_until: datetime | None, notebook: NotebookReport | None = None
) -> dict[str, Any]:
    """The same shape from one direct NVML sample, when no agent runs: no verdict, by design
    (one sample cannot show idleness)."""
    return {
        "agent": {"running": False, "updated_at": _iso(snapshot.sampled_at)},
        "driver_version": snapshot.driver_version,
        "gpus": _gpus(snapshot.gpus, notebook),
        "expected_gpus": snapshot.expected_gpus,
        "problems": [str(p) for p in snapshot.problems],
        "notebook": _notebook(notebook),
        "verdict": None,
        "reasons": ["the agent is not running: no verdict from a single sample"],
        "keep_until": _iso(keep_until),
        "pending_stop": None,
    }
