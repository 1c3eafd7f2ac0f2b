"""What the GPUs of this machine reported at one poll: immutable snapshots, unknowns kept visible.

``guardian.agent.gpu.nvml`` is the only module that talks to NVML (and the only one importing
``pynvml``); ``guardian.agent.gpu.fake`` scripts the same calls for tests and ``--simulate``. This
module holds the plain data they produce. A value NVML could not give is ``None`` together with
a ``Problem`` saying why — never 0, because a GPU we could not read is not an idle GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from guardian.model import GpuSample

__all__ = ["GpuProcess", "GpuReading", "Problem", "Severity", "Snapshot"]


class Severity(StrEnum):
    """How bad a failed NVML call is; decides whether we warn and whether NVML is usable."""

    UNSUPPORTED = "unsupported"  # this GPU or driver has no such metric: unknown, no alarm
    FAULT = "fault"  # the GPU or driver misbehaves (GPU is lost, no permission): warn
    OFF = "off"  # NVML itself cannot be used (no library, driver not loaded)


@dataclass(frozen=True)
class Problem:
    """Why one value (or a whole GPU, or the whole poll) is unknown, in NVML's own words."""

    what: str  # utilization | memory | processes | uuid | name | device | count | init
    severity: Severity
    error: str  # e.g. "GPU is lost"
    gpu_index: int | None = None

    def __str__(self) -> str:
        where = f"GPU {self.gpu_index} " if self.gpu_index is not None else ""
        return f"{where}{self.what}: {self.error}"


@dataclass(frozen=True)
class GpuProcess:
    """A compute process holding a GPU. ``name`` is None where /proc and NVML cannot say."""

    pid: int
    name: str | None
    gpu_mem_used_mib: float | None


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one poll. ``processes`` is None when the process list is unknown."""

    index: int
    uuid: str | None
    name: str | None
    gpu_util_pct: float | None
    mem_util_pct: float | None
    mem_used_mib: float | None
    mem_total_mib: float | None
    processes: tuple[GpuProcess, ...] | None
    problems: tuple[Problem, ...] = ()

    @property
    def faulty(self) -> bool:
        return any(p.severity is not Severity.UNSUPPORTED for p in self.problems)


@dataclass(frozen=True)
class Snapshot:
    """Every GPU of the machine at one poll; ``expected_gpus`` is how many the machine has.

    ``problems`` holds failures that concern the whole poll (NVML off, device count unreadable).
    """

    sampled_at: datetime
    gpus: tuple[GpuReading, ...]
    expected_gpus: int
    problems: tuple[Problem, ...] = ()
    driver_version: str | None = None

    @property
    def all_problems(self) -> tuple[Problem, ...]:
        return self.problems + tuple(p for gpu in self.gpus for p in gpu.problems)

    @property
    def warnings(self) -> tuple[Problem, ...]:
        """Problems worth a warning: faults and NVML off, not merely unsupported metrics."""
        return tuple(p for p in self.all_problems if p.severity is not Severity.UNSUPPORTED)

    def unmeasured_reason(self) -> str | None:
        """Why this poll cannot vouch for the machine's idleness, or None when it can.

        Any fault, a missing GPU, or a GPU whose utilisation is unknown (even merely
        unsupported) makes the machine unmeasured: the GPU we could not read may be working.
        """
        if self.problems:
            return "; ".join(str(p) for p in self.problems)
        if len(self.gpus) < self.expected_gpus:
            return (
                f"only {len(self.gpus)} of {self.expected_gpus} GPUs visible: "
                "a GPU disappeared from NVML"
            )
        if not self.gpus:
            return "NVML reports no GPU on this machine"
        for gpu in self.gpus:
            if gpu.faulty:
                label = f" ({gpu.uuid})" if gpu.uuid else ""
                first = next(p for p in gpu.problems if p.severity is not Severity.UNSUPPORTED)
                return f"GPU {gpu.index}{label} {first.what}: {first.error}"
            if gpu.gpu_util_pct is None:
                why = next((p.error for p in gpu.problems if p.what == "utilization"), "unknown")
                return f"GPU {gpu.index} utilization unknown: {why}"
        return None

    @property
    def process_count(self) -> int | None:
        """Distinct compute processes holding any GPU; None if any GPU's list is unknown."""
        pids: set[int] = set()
        for gpu in self.gpus:
            if gpu.processes is None:
                return None
            pids.update(proc.pid for proc in gpu.processes)
        return len(pids) if self.gpus else None

    def as_sample(self) -> GpuSample | None:
        """This poll reduced over the GPUs as the policy expects, or None if nothing was read.

        The sample is complete only when every expected GPU reported utilisation and nothing
        failed; memory is known only when every GPU reported it.
        """
        utils = [g.gpu_util_pct for g in self.gpus if g.gpu_util_pct is not None]
        if not utils:
            return None
        mems = [g.mem_used_mib for g in self.gpus if g.mem_used_mib is not None]
        return GpuSample(
            at=self.sampled_at,
            gpu_util_pct=max(utils),
            mem_used_mib=max(mems) if mems and len(mems) == len(self.gpus) else None,
            complete=self.unmeasured_reason() is None,
            processes=self.process_count,
        )
