"""A scripted stand-in for ``pynvml``: the calls ``guardian.agent.gpu.nvml`` makes, driven by a
scenario.

It lives in the package (not only in tests) so that ``guardian agent --simulate SCENARIO`` can
show the agent end to end on a laptop. A scenario is a list of phases, each lasting a duration
of *scenario time*, read from the ``clock`` it is given (monotonic seconds; tests pass a
``ManualClock`` so that an hour of scenario takes no real time). The last phase lasts forever.

Scenario JSON (every key optional except ``phases``)::

    {"gpus": 2, "model": "NVIDIA A100-SXM4-40GB", "mem_total_mib": 40960,
     "driver_version": "550.54.15", "init_error": null,
     "phases": [
       {"for": "10m", "util_pct": 90, "mem_used_mib": 30000,
        "processes": [{"pid": 5000001, "name": "python", "mem_mib": 30000}]},
       {"for": "5m", "util_pct": 0, "mem_used_mib": 0, "processes": [],
        "gpu": {"1": {"error": "GpuIsLost"}},
        "errors": {"processes": "NotSupported"}, "count": 2}
     ]}

``mem_reserved_mib`` is memory the driver keeps for itself: NVML's v1 memory call counts it as
used, v2 does not (``"memory_v2": false`` plays a driver without v2).
``gpu`` overrides keys for single GPUs by index; ``error`` fails every call on that GPU,
``errors`` fails one kind of call (utilization, memory, processes, uuid, name, device) on
every GPU; ``count`` changes what nvmlDeviceGetCount says. Fake PIDs sit above Linux's
``pid_max`` limit (2**22) so they never collide with a real process in /proc.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from guardian.durations import parse_duration
from guardian.errors import ConfigError

__all__ = [
    "ERROR_CODES",
    "SCENARIOS",
    "FakeNVMLError",
    "FakeNvml",
    "ManualClock",
    "Scenario",
    "load_scenario",
]

_MIB = 1024 * 1024
_FOREVER = float("inf")

# NVML's stable error numbers by the names pynvml gives its exception classes (NVMLError_*).
ERROR_CODES: dict[str, int] = {
    "Uninitialized": 1,
    "InvalidArgument": 2,
    "NotSupported": 3,
    "NoPermission": 4,
    "NotFound": 6,
    "DriverNotLoaded": 9,
    "Timeout": 10,
    "LibraryNotFound": 12,
    "FunctionNotFound": 13,
    "GpuIsLost": 15,
    "ResetRequired": 16,
    "LibRmVersionMismatch": 18,
    "NoData": 21,
    "Unknown": 999,
}
_MESSAGES = {
    1: "Uninitialized",
    2: "Invalid Argument",
    3: "Not Supported",
    4: "Insufficient Permissions",
    6: "Not Found",
    9: "Driver Not Loaded",
    10: "Timeout",
    12: "NVML Shared Library Not Found",
    13: "Function Not Found",
    15: "GPU is lost",
    16: "GPU requires restart",
    18: "RM has detected an NVML/RM version mismatch.",
    21: "No data",
    999: "Unknown Error",
}


class FakeNVMLError(Exception):
    """Like ``pynvml.NVMLError``: carries NVML's numeric code in ``value``."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML Error with code {self.value}")


@dataclass(frozen=True)
class Phase:
    seconds: float
    state: Mapping[str, Any]  # keys as in the module docstring
    per_gpu: Mapping[int, Mapping[str, Any]]


@dataclass(frozen=True)
class Scenario:
    name: str
    gpu_count: int
    model: str
    mem_total_mib: float
    driver_version: str
    init_error: str | None
    phases: tuple[Phase, ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "scenario") -> Scenario:
        try:
            phases = tuple(
                Phase(
                    seconds=_phase_seconds(raw.get("for", "forever")),
                    state={k: v for k, v in raw.items() if k not in ("for", "gpu")},
                    per_gpu={int(k): v for k, v in dict(raw.get("gpu", {})).items()},
                )
                for raw in data["phases"]
            )
            for phase in phases:
                _check_error_name(phase.state.get("error"))
                for kind in dict(phase.state.get("errors", {})).values():
                    _check_error_name(kind)
                for override in phase.per_gpu.values():
                    _check_error_name(override.get("error"))
            _check_error_name(data.get("init_error"))
            return cls(
                name=str(data.get("name", name)),
                gpu_count=int(data.get("gpus", 1)),
                model=str(data.get("model", "NVIDIA A10G")),
                mem_total_mib=float(data.get("mem_total_mib", 23028)),
                driver_version=str(data.get("driver_version", "550.54.15")),
                init_error=data.get("init_error"),
                phases=phases or (Phase(_FOREVER, {}, {}),),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"fake NVML scenario {name}: {exc}") from exc

    def phase_at(self, elapsed_s: float) -> Phase:
        for phase in self.phases:
            if elapsed_s < phase.seconds:
                return phase
            elapsed_s -= phase.seconds
        return self.phases[-1]


def _phase_seconds(value: object) -> float:
    if value in ("forever", None):
        return _FOREVER
    return parse_duration(value).total_seconds()  # type: ignore[arg-type]


def _check_error_name(name: object) -> None:
    if name is not None and name not in ERROR_CODES:
        raise ValueError(f"unknown NVML error {name!r} (use one of {', '.join(ERROR_CODES)})")


def _training(minutes: float, mem_total: float) -> dict[str, Any]:
    return {
        "for": f"{minutes:g}m",
        "util_pct": 90,
        "mem_used_mib": round(mem_total * 0.7),
        "processes": [{"pid": 5_000_001, "name": "python", "mem_mib": round(mem_total * 0.7)}],
    }


# Built-in scenarios, by name, for tests, the demo and the benchmark.
SCENARIOS: dict[str, dict[str, Any]] = {
    # A training run at 90 % ends after 10 min; the process exits and frees the memory.
    "training-then-idle": {
        "gpus": 2,
        "model": "NVIDIA A100-SXM4-40GB",
        "mem_total_mib": 40960,
        "phases": [
            _training(10, 40960),
            # NVML's v1 memory call would count the driver's 400 MiB as used: v2 does not.
            {"util_pct": 0, "mem_used_mib": 1, "mem_reserved_mib": 400, "processes": []},
        ],
    },
    # A notebook kernel paused after 5 min: 0 % utilisation, but it still holds the memory.
    "paused-job": {
        "gpus": 1,
        "model": "NVIDIA A10G",
        "mem_total_mib": 23028,
        "phases": [
            _training(5, 23028),
            {
                "util_pct": 0,
                "mem_used_mib": 16000,
                "processes": [{"pid": 5_000_002, "name": "jupyter-kernel", "mem_mib": 16000}],
            },
        ],
    },
    # GPU 1 falls off the bus after 5 idle minutes: NVML answers "GPU is lost".
    "lost-gpu": {
        "gpus": 2,
        "model": "NVIDIA L4",
        "mem_total_mib": 23034,
        "phases": [
            {"for": "5m", "util_pct": 0, "mem_used_mib": 1, "processes": []},
            {
                "util_pct": 0,
                "mem_used_mib": 1,
                "processes": [],
                "gpu": {"1": {"error": "GpuIsLost"}},
            },
        ],
    },
    # Idle from the start, memory released: the shortest way to see a verdict of idle.
    "idle": {
        "gpus": 1,
        "model": "NVIDIA T4",
        "mem_total_mib": 15360,
        "phases": [{"util_pct": 0, "mem_used_mib": 0, "processes": []}],
    },
    # Eight busy GPUs forever, for the CPU and memory benchmark.
    "busy-8gpu": {
        "gpus": 8,
        "model": "NVIDIA H100 80GB HBM3",
        "mem_total_mib": 81559,
        "phases": [
            {
                "util_pct": 97,
                "mem_used_mib": 70000,
                "processes": [{"pid": 5_000_010, "name": "torchrun", "mem_mib": 70000}],
            }
        ],
    },
    # A machine whose driver is not loaded.
    "no-driver": {"gpus": 1, "init_error": "DriverNotLoaded", "phases": []},
}


def load_scenario(spec: str) -> Scenario:
    """A built-in scenario by name, or a JSON file by path."""
    if spec in SCENARIOS:
        return Scenario.from_dict(SCENARIOS[spec], spec)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(
            f"fake NVML scenario {spec!r}: not a file and not one of {', '.join(SCENARIOS)}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"fake NVML scenario {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"fake NVML scenario {path}: the top level must be an object")
    return Scenario.from_dict(data, path.stem)


class ManualClock:
    """A clock that only moves when told to: ``sleep`` advances it instantly.

    Shared by the agent under test and the fake NVML so that scenario time and agent time
    are one and the same, and an hour-long scenario runs in milliseconds.
    """

    def __init__(self, start: datetime | None = None) -> None:
        # By default the same hour yesterday, on the hour: a day of scenario time stays in the
        # past, and seconds count from a round minute.
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        self._start = start or hour - timedelta(days=1)
        self._elapsed = 0.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        return self._elapsed

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._elapsed += max(0.0, seconds)


class FakeNvml:
    """Implements the ``NvmlBackend`` protocol of ``guardian.agent.gpu.nvml`` from a
    ``Scenario``."""

    NVMLError = FakeNVMLError
    nvmlMemory_v2 = 0x02000028  # pynvml's constant: sizeof(c_nvmlMemory_v2_t) | 2 << 24

    def __init__(self, scenario: Scenario, clock: Callable[[], float] | None = None) -> None:
        self.scenario = scenario
        self._clock = clock or time.monotonic
        self._t0: float | None = None
        self.calls = 0  # how many NVML calls were made, for tests of frugality

    # --- helpers -------------------------------------------------------------------------
    def _phase(self) -> Phase:
        if self._t0 is None:
            raise FakeNVMLError(1)  # NVML_ERROR_UNINITIALIZED, as the real library
        self.calls += 1
        return self.scenario.phase_at(self._clock() - self._t0)

    def _state(self, index: int, kind: str) -> Mapping[str, Any]:
        phase = self._phase()
        state = {**phase.state, **phase.per_gpu.get(index, {})}
        error = state.get("error") or dict(state.get("errors", {})).get(kind)
        if error:
            raise FakeNVMLError(ERROR_CODES[error])
        if index >= self._count(phase):
            raise FakeNVMLError(2)  # a stale handle: NVML_ERROR_INVALID_ARGUMENT
        return state

    def _count(self, phase: Phase) -> int:
        return int(phase.state.get("count", self.scenario.gpu_count))

    # --- the pynvml subset ---------------------------------------------------------------
    def nvmlInit(self) -> None:
        if self.scenario.init_error:
            raise FakeNVMLError(ERROR_CODES[self.scenario.init_error])
        if self._t0 is None:
            self._t0 = self._clock()

    def nvmlShutdown(self) -> None:
        self._phase()

    def nvmlSystemGetDriverVersion(self) -> str:
        self._phase()
        return self.scenario.driver_version

    def nvmlSystemGetProcessName(self, pid: int) -> str:
        phase = self._phase()
        for state in (phase.state, *phase.per_gpu.values()):
            for proc in state.get("processes", ()):
                if int(proc["pid"]) == pid:
                    return str(proc.get("name", "python"))
        raise FakeNVMLError(6)  # NOT_FOUND

    def nvmlDeviceGetCount(self) -> int:
        phase = self._phase()
        errors = dict(phase.state.get("errors", {}))
        if "count" in errors:
            raise FakeNVMLError(ERROR_CODES[errors["count"]])
        return self._count(phase)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._state(index, "device")
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        self._state(handle, "uuid")
        return f"GPU-fa4e0000-0000-4000-8000-{handle:012d}"

    def nvmlDeviceGetName(self, handle: int) -> str:
        self._state(handle, "name")
        return self.scenario.model

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        state = self._state(handle, "utilization")
        util = int(state.get("util_pct", 0))
        return SimpleNamespace(gpu=util, memory=int(state.get("mem_util_pct", util // 2)))

    def nvmlDeviceGetMemoryInfo(self, handle: int, version: int | None = None) -> SimpleNamespace:
        """v1 counts the driver's reserved memory as used; v2 reports it apart, as NVML does.
        ``"memory_v2": false`` in a phase plays an old driver without the v2 call."""
        state = self._state(handle, "memory")
        total = int(self.scenario.mem_total_mib * _MIB)
        used = int(float(state.get("mem_used_mib", 0)) * _MIB)
        reserved = int(float(state.get("mem_reserved_mib", 0)) * _MIB)
        if version is None:
            return SimpleNamespace(total=total, used=used + reserved, free=total - used - reserved)
        if version != self.nvmlMemory_v2 or not state.get("memory_v2", True):
            raise FakeNVMLError(13)  # FUNCTION_NOT_FOUND: nvmlDeviceGetMemoryInfo_v2
        return SimpleNamespace(
            version=version, total=total, reserved=reserved, used=used, free=total - used - reserved
        )

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> Sequence[SimpleNamespace]:
        state = self._state(handle, "processes")
        procs: Sequence[Mapping[str, Any]] = state.get("processes", ())
        return [
            SimpleNamespace(
                pid=int(p["pid"]),
                usedGpuMemory=int(float(p["mem_mib"]) * _MIB) if "mem_mib" in p else None,
            )
            for p in procs
        ]
