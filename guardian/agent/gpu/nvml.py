"""The only door to NVML: start it, read every GPU into one ``Snapshot`` per poll.

Every NVML call goes through ``Nvml._call``, which raises ``NvmlCallError`` (with the NVML
error code and a ``Severity``) instead of returning a placeholder. Errors become *unknown* in
exactly one place, ``_Reader.guard``, which keeps NVML's reason next to the ``None``. NVML that
cannot start at all is ``NvmlUnavailable`` ("NVML not available: …"), which the CLI prints as
one line with exit code 2.

The backend is ``pynvml`` (from the ``nvidia-ml-py`` distribution) or, through the one seam
``load_backend("fake:SCENARIO")`` / ``GUARDIAN_NVML_BACKEND``, the scripted fake.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from guardian.agent.gpu import GpuProcess, GpuReading, Problem, Severity, Snapshot
from guardian.errors import NvmlUnavailable

__all__ = [
    "BACKEND_ENV",
    "ERROR_SEVERITY",
    "Nvml",
    "NvmlBackend",
    "NvmlCallError",
    "load_backend",
    "process_name",
    "severity_of",
]

BACKEND_ENV = "GUARDIAN_NVML_BACKEND"
_MIB = 1024 * 1024
T = TypeVar("T")

# NVML's error codes (stable ABI numbers, the NVML_ERROR_* constants) by how we treat them.
# Every code NVML defines is listed on purpose (a unit test checks this against pynvml), so a
# new code forces a decision; a code missing here still counts as a fault, never as "fine".
ERROR_SEVERITY: dict[int, Severity] = {
    1: Severity.OFF,  # UNINITIALIZED: NVML was shut down under us
    2: Severity.FAULT,  # INVALID_ARGUMENT: a handle went stale (GPU gone)
    3: Severity.UNSUPPORTED,  # NOT_SUPPORTED
    4: Severity.FAULT,  # NO_PERMISSION
    5: Severity.FAULT,  # ALREADY_INITIALIZED (not returned by modern NVML)
    6: Severity.FAULT,  # NOT_FOUND
    7: Severity.FAULT,  # INSUFFICIENT_SIZE
    8: Severity.FAULT,  # INSUFFICIENT_POWER
    9: Severity.OFF,  # DRIVER_NOT_LOADED
    10: Severity.FAULT,  # TIMEOUT
    11: Severity.FAULT,  # IRQ_ISSUE
    12: Severity.OFF,  # LIBRARY_NOT_FOUND
    13: Severity.UNSUPPORTED,  # FUNCTION_NOT_FOUND: an older driver lacks the call
    14: Severity.FAULT,  # CORRUPTED_INFOROM
    15: Severity.FAULT,  # GPU_IS_LOST
    16: Severity.FAULT,  # RESET_REQUIRED
    17: Severity.FAULT,  # OPERATING_SYSTEM
    18: Severity.OFF,  # LIB_RM_VERSION_MISMATCH: driver upgraded without reboot
    19: Severity.FAULT,  # IN_USE
    20: Severity.FAULT,  # MEMORY
    21: Severity.UNSUPPORTED,  # NO_DATA
    22: Severity.UNSUPPORTED,  # VGPU_ECC_NOT_SUPPORTED
    23: Severity.FAULT,  # INSUFFICIENT_RESOURCES
    24: Severity.UNSUPPORTED,  # FREQ_NOT_SUPPORTED
    25: Severity.FAULT,  # ARGUMENT_VERSION_MISMATCH: binding and driver disagree
    26: Severity.UNSUPPORTED,  # DEPRECATED
    27: Severity.FAULT,  # NOT_READY
    28: Severity.FAULT,  # GPU_NOT_FOUND
    29: Severity.FAULT,  # INVALID_STATE
    30: Severity.UNSUPPORTED,  # RESET_TYPE_NOT_SUPPORTED
    999: Severity.FAULT,  # UNKNOWN
}


def severity_of(code: int | None) -> Severity:
    """How to treat an NVML error code; anything unrecognised is a fault, never harmless."""
    if code is None:
        return Severity.FAULT
    return ERROR_SEVERITY.get(code, Severity.FAULT)


class NvmlBackend(Protocol):
    """The subset of the ``pynvml`` module we call; ``guardian.agent.gpu.fake`` implements it
    too."""

    NVMLError: type[Exception]

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetDriverVersion(self) -> str: ...
    def nvmlSystemGetProcessName(self, pid: int) -> str: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str: ...
    def nvmlDeviceGetName(self, handle: Any) -> str: ...
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any: ...
    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> Sequence[Any]: ...


class NvmlCallError(Exception):
    """One NVML call failed. Raised, never swallowed, until ``_Reader.guard`` records it."""

    def __init__(self, call: str, code: int | None, message: str) -> None:
        super().__init__(f"{call}: {message}")
        self.call = call
        self.code = code
        self.message = message
        self.severity = severity_of(code)


def load_backend(spec: str | None = None, *, clock: Callable[[], float] | None = None) -> Any:
    """The NVML backend named by ``spec`` (else ``$GUARDIAN_NVML_BACKEND``, else ``nvml``).

    ``nvml`` is the real ``pynvml`` module; ``fake:NAME`` or ``fake:path.json`` is the
    scripted fake, whose scenario time runs on ``clock`` (monotonic seconds).
    """
    chosen = spec or os.environ.get(BACKEND_ENV) or "nvml"
    if chosen == "nvml":
        try:
            import pynvml
        except ImportError as exc:  # the nvidia-ml-py distribution is not installed
            raise NvmlUnavailable(f"NVML not available: cannot import pynvml ({exc})") from exc
        return pynvml
    if chosen.startswith("fake:"):
        from guardian.agent.gpu.fake import FakeNvml, load_scenario

        return FakeNvml(load_scenario(chosen.removeprefix("fake:")), clock=clock)
    raise NvmlUnavailable(
        f"NVML not available: unknown backend {chosen!r} (use nvml or fake:SCENARIO)"
    )


def process_name(pid: int, proc_root: Path = Path("/proc")) -> str | None:
    """The short command name of ``pid`` from /proc, or None (gone, or another PID namespace)."""
    try:
        return (proc_root / str(pid) / "comm").read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


class Nvml:
    """A started NVML: ``Nvml.open(backend)``, then ``sample(now)`` once per poll, ``close()``."""

    def __init__(self, lib: Any, *, proc_root: Path = Path("/proc")) -> None:
        self._lib = lib
        self._proc_root = proc_root
        self._started = False
        self.expected_gpus = 0
        self.driver_version: str | None = None
        self._names: dict[int, str | None] = {}
        self._memory_v2 = True
        errors: list[type[BaseException]] = [lib.NVMLError]
        mismatch = getattr(lib, "NVMLLibraryMismatchError", None)
        if isinstance(mismatch, type) and issubclass(mismatch, Exception):
            errors.append(mismatch)
        self._errors = tuple(errors)

    @classmethod
    def open(cls, lib: Any, *, proc_root: Path = Path("/proc")) -> Nvml:
        """Start NVML and count the GPUs; ``NvmlUnavailable`` with one clear line if it can't."""
        nvml = cls(lib, proc_root=proc_root)
        try:
            nvml._start()
            nvml.expected_gpus = nvml._call("nvmlDeviceGetCount")
        except NvmlCallError as exc:
            raise NvmlUnavailable(f"NVML not available: {exc.message}") from exc
        return nvml

    def _start(self) -> None:
        self._call("nvmlInit")
        self._started = True
        try:
            self.driver_version = str(self._call("nvmlSystemGetDriverVersion"))
        except NvmlCallError:
            self.driver_version = None  # informational only

    def close(self) -> None:
        if self._started:
            self._started = False
            # Shutting down a broken NVML has nothing left to report.
            with contextlib.suppress(NvmlCallError):
                self._call("nvmlShutdown")

    def _call(self, name: str, *args: Any) -> Any:
        """Call one NVML function; its failure is an ``NvmlCallError`` carrying the code."""
        try:
            return getattr(self._lib, name)(*args)
        except self._errors as exc:
            code = getattr(exc, "value", None)
            return self._raise(name, code if isinstance(code, int) else None, exc)

    @staticmethod
    def _raise(name: str, code: int | None, exc: BaseException) -> Any:
        try:
            message = str(exc) or type(exc).__name__
        except Exception:  # pynvml's __str__ itself calls into NVML, which may be gone
            message = f"NVML error code {code}"
        raise NvmlCallError(name, code, message) from exc

    def sample(self, now: datetime) -> Snapshot:
        """Read every GPU once. Never raises for NVML errors: they become Problems.

        NVML that went away mid-run (driver unloaded) is restarted on the next poll; until
        then each snapshot carries the reason and the machine is unmeasured.
        """
        reader = _Reader()
        count: int | None = None
        if not self._started:
            reader.guard("init", None, self._start)
        if self._started:
            count = reader.guard("count", None, lambda: int(self._call("nvmlDeviceGetCount")))
        if any(p.severity is Severity.OFF for p in reader.problems):
            self.close()
        self._names = {}  # one lookup per process per poll, never carried to the next
        gpus = tuple(self._read_gpu(index) for index in range(count or 0))
        self.expected_gpus = max(self.expected_gpus, count or 0)
        return Snapshot(
            sampled_at=now,
            gpus=gpus,
            expected_gpus=self.expected_gpus,
            problems=tuple(reader.problems),
            driver_version=self.driver_version,
        )

    def _read_gpu(self, index: int) -> GpuReading:
        reader = _Reader(index)
        handle = reader.guard(
            "device", None, lambda: self._call("nvmlDeviceGetHandleByIndex", index)
        )
        if reader.problems:
            return GpuReading(index, None, None, None, None, None, None, None, reader.problems_t)
        uuid = reader.guard("uuid", None, lambda: str(self._call("nvmlDeviceGetUUID", handle)))
        name = reader.guard("name", None, lambda: str(self._call("nvmlDeviceGetName", handle)))
        rates = reader.guard(
            "utilization", None, lambda: self._call("nvmlDeviceGetUtilizationRates", handle)
        )
        memory = reader.guard("memory", None, lambda: self._memory(handle))
        processes = reader.guard("processes", None, lambda: self._processes(handle))
        return GpuReading(
            index=index,
            uuid=uuid,
            name=name,
            gpu_util_pct=float(rates.gpu) if rates is not None else None,
            mem_util_pct=float(rates.memory) if rates is not None else None,
            mem_used_mib=round(memory.used / _MIB, 1) if memory is not None else None,
            mem_total_mib=round(memory.total / _MIB, 1) if memory is not None else None,
            processes=processes,
            problems=reader.problems_t,
        )

    def _memory(self, handle: Any) -> Any:
        """Memory info, v2 where the driver has it (R510+): its ``used`` leaves out the memory
        the driver reserves for itself, as nvidia-smi (and so the CloudWatch agent) reports.
        v1's ``used`` includes it: hundreds of MiB on an idle data-centre GPU, which would hide
        a released GPU from ``idle.released_below_mib``."""
        version = getattr(self._lib, "nvmlMemory_v2", None)
        if version is not None and self._memory_v2:
            try:
                return self._call("nvmlDeviceGetMemoryInfo", handle, version)
            except NvmlCallError as exc:
                if exc.severity is not Severity.UNSUPPORTED:
                    raise
                self._memory_v2 = False  # an older driver: v1 from now on
        return self._call("nvmlDeviceGetMemoryInfo", handle)

    def _processes(self, handle: Any) -> tuple[GpuProcess, ...]:
        found = self._call("nvmlDeviceGetComputeRunningProcesses", handle)
        return tuple(
            GpuProcess(
                pid=int(proc.pid),
                name=self._process_name(int(proc.pid)),
                gpu_mem_used_mib=(
                    round(proc.usedGpuMemory / _MIB, 1)
                    if getattr(proc, "usedGpuMemory", None) is not None
                    else None
                ),
            )
            for proc in found
        )

    def _process_name(self, pid: int) -> str | None:
        if pid not in self._names:  # a process spanning 8 GPUs is looked up once
            self._names[pid] = self._lookup_name(pid)
        return self._names[pid]

    def _lookup_name(self, pid: int) -> str | None:
        # /proc first (cheap, no driver call); NVML knows processes of other PID namespaces.
        name = process_name(pid, self._proc_root)
        if name is not None:
            return name
        try:
            return str(self._call("nvmlSystemGetProcessName", pid)).rsplit("/", 1)[-1] or None
        except NvmlCallError:
            return None


class _Reader:
    """Reads one GPU (or the poll), turning each failed call into a recorded ``Problem``.

    The one place where an NVML error becomes *unknown*. After a fault (GPU lost, no
    permission) or NVML going off, the remaining calls are skipped: a lost GPU can take
    seconds per call to answer, and its other values would be unknown anyway.
    """

    def __init__(self, gpu_index: int | None = None) -> None:
        self.gpu_index = gpu_index
        self.problems: list[Problem] = []

    @property
    def problems_t(self) -> tuple[Problem, ...]:
        return tuple(self.problems)

    def guard(self, what: str, default: T, read: Callable[[], T]) -> T:
        if any(p.severity is not Severity.UNSUPPORTED for p in self.problems):
            return default
        try:
            return read()
        except NvmlCallError as exc:
            self.problems.append(Problem(what, exc.severity, exc.message, self.gpu_index))
            return default
