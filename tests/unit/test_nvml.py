"""guardian.agent.gpu.nvml over the scripted fake backend, and the real pynvml's error path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pynvml
import pytest

from guardian.agent.gpu import Severity
from guardian.agent.gpu.fake import ERROR_CODES, FakeNvml, ManualClock, Scenario, load_scenario
from guardian.agent.gpu.nvml import ERROR_SEVERITY, Nvml, NvmlCallError, load_backend, severity_of
from guardian.errors import ConfigError, NvmlUnavailable


def _open(scenario: dict[str, Any] | str, clock: ManualClock) -> tuple[Nvml, FakeNvml]:
    loaded = load_scenario(scenario) if isinstance(scenario, str) else Scenario.from_dict(scenario)
    fake = FakeNvml(loaded, clock=clock.monotonic)
    return Nvml.open(fake, proc_root=Path("/nonexistent-proc")), fake


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


# -- the error table ---------------------------------------------------------------------------


def test_every_nvml_error_code_has_a_deliberate_severity() -> None:
    codes = {name: getattr(pynvml, name) for name in dir(pynvml) if name.startswith("NVML_ERROR_")}
    missing = {name: code for name, code in codes.items() if code not in ERROR_SEVERITY}
    assert not missing, f"decide how to treat {missing} in guardian.agent.gpu.nvml.ERROR_SEVERITY"


def test_fatal_and_harmless_codes_are_classified_as_the_style_guide_says() -> None:
    assert severity_of(pynvml.NVML_ERROR_NOT_SUPPORTED) is Severity.UNSUPPORTED
    for code in (
        pynvml.NVML_ERROR_GPU_IS_LOST,
        pynvml.NVML_ERROR_UNKNOWN,
        pynvml.NVML_ERROR_NO_PERMISSION,
    ):
        assert severity_of(code) is Severity.FAULT
    for code in (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED):
        assert severity_of(code) is Severity.OFF
    assert severity_of(12345) is Severity.FAULT  # unknown codes are never harmless
    assert severity_of(None) is Severity.FAULT


def test_the_fake_uses_nvmls_own_error_numbers() -> None:
    for name, code in ERROR_CODES.items():
        assert getattr(pynvml, f"NVMLError_{name}")(code).value == code
        assert pynvml.nvmlExceptionClass(code).__name__ == f"NVMLError_{name}"


# -- NVML that cannot start --------------------------------------------------------------------


@pytest.fixture
def no_nvml_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real pynvml on a machine without libnvidia-ml.so.1, on any machine."""

    def missing(_name: str, *args: object, **kwargs: object) -> object:
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "CDLL", missing)


@pytest.mark.usefixtures("no_nvml_library")
def test_real_pynvml_without_the_library_is_one_clear_line() -> None:
    with pytest.raises(NvmlUnavailable) as caught:
        Nvml.open(load_backend("nvml"))
    assert str(caught.value) == "NVML not available: NVML Shared Library Not Found"


def test_driver_not_loaded_is_nvml_unavailable(clock: ManualClock) -> None:
    with pytest.raises(NvmlUnavailable, match=r"^NVML not available: Driver Not Loaded$"):
        _open("no-driver", clock)


def test_unknown_backend_and_bad_scenarios_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(NvmlUnavailable, match="unknown backend 'cuda'"):
        load_backend("cuda")
    with pytest.raises(ConfigError, match="not a file and not one of"):
        load_backend("fake:nope")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"phases": [{"error": "GpuOnFire"}]}))
    with pytest.raises(ConfigError, match="unknown NVML error 'GpuOnFire'"):
        load_backend(f"fake:{bad}")


def test_backend_env_var_selects_the_fake(
    monkeypatch: pytest.MonkeyPatch, clock: ManualClock
) -> None:
    monkeypatch.setenv("GUARDIAN_NVML_BACKEND", "fake:idle")
    backend = load_backend(None, clock=clock.monotonic)
    assert isinstance(backend, FakeNvml)
    assert backend.scenario.name == "idle"


# -- readings ----------------------------------------------------------------------------------


def test_training_reading_has_units_processes_and_names(clock: ManualClock) -> None:
    nvml, _ = _open("training-then-idle", clock)
    snap = nvml.sample(clock.now())
    assert snap.expected_gpus == 2
    assert snap.driver_version == "550.54.15"
    gpu = snap.gpus[0]
    assert gpu.name == "NVIDIA A100-SXM4-40GB"
    assert gpu.uuid
    assert gpu.uuid.startswith("GPU-")
    assert gpu.gpu_util_pct == 90.0
    assert gpu.mem_total_mib == 40960.0
    assert gpu.mem_used_mib == 28672.0
    assert gpu.processes is not None
    [proc] = gpu.processes
    # Not in /proc (the fake PID is above pid_max): NVML names it.
    assert (proc.pid, proc.name, proc.gpu_mem_used_mib) == (5_000_001, "python", 28672.0)
    assert snap.unmeasured_reason() is None
    sample = snap.as_sample()
    assert sample is not None
    assert (sample.gpu_util_pct, sample.complete, sample.processes) == (90.0, True, 1)


def test_process_names_come_from_proc_first(tmp_path: Path, clock: ManualClock) -> None:
    (tmp_path / "5000001").mkdir()
    (tmp_path / "5000001" / "comm").write_text("train.py\n")
    fake = FakeNvml(load_scenario("training-then-idle"), clock=clock.monotonic)
    snap = Nvml.open(fake, proc_root=tmp_path).sample(clock.now())
    assert snap.gpus[0].processes is not None
    assert snap.gpus[0].processes[0].name == "train.py"


def test_after_the_job_exits_processes_are_zero_and_memory_released(clock: ManualClock) -> None:
    nvml, _ = _open("training-then-idle", clock)
    clock.advance(11 * 60)
    sample = nvml.sample(clock.now()).as_sample()
    assert sample is not None
    assert (sample.gpu_util_pct, sample.mem_used_mib, sample.processes) == (0.0, 1.0, 0)


def test_a_lost_gpu_is_a_fault_and_stops_further_calls(clock: ManualClock) -> None:
    nvml, fake = _open("lost-gpu", clock)
    clock.advance(5 * 60 + 1)
    before = fake.calls
    snap = nvml.sample(clock.now())
    lost = snap.gpus[1]
    assert lost.faulty
    assert [(p.what, p.severity, p.error) for p in lost.problems] == [
        ("device", Severity.FAULT, "GPU is lost")
    ]
    assert lost.gpu_util_pct is None  # unknown, never 0
    assert lost.mem_used_mib is None
    # count + 6 calls for the healthy GPU + 1 failed handle call for the lost one
    assert fake.calls - before == 1 + 6 + 1
    assert snap.unmeasured_reason() == "GPU 1 device: GPU is lost"
    assert [str(p) for p in snap.warnings] == ["GPU 1 device: GPU is lost"]
    sample = snap.as_sample()
    assert sample is not None
    assert sample.complete is False  # the healthy GPU's 0 % proves nothing about the lost one
    assert sample.mem_used_mib is None


def test_unsupported_metrics_are_unknown_without_a_warning(clock: ManualClock) -> None:
    nvml, _ = _open(
        {
            "gpus": 1,
            "phases": [
                {
                    "util_pct": 0,
                    "errors": {"processes": "NotSupported", "memory": "NotSupported"},
                }
            ],
        },
        clock,
    )
    snap = nvml.sample(clock.now())
    gpu = snap.gpus[0]
    assert gpu.processes is None
    assert gpu.mem_used_mib is None
    assert gpu.gpu_util_pct == 0.0
    assert snap.warnings == ()
    assert snap.unmeasured_reason() is None
    sample = snap.as_sample()
    assert sample is not None
    assert (sample.processes, sample.mem_used_mib, sample.complete) == (None, None, True)


def test_unsupported_utilisation_makes_the_machine_unmeasured(clock: ManualClock) -> None:
    nvml, _ = _open(
        {
            "gpus": 2,
            "phases": [{"util_pct": 0, "gpu": {"1": {"errors": {"utilization": "NotSupported"}}}}],
        },
        clock,
    )
    snap = nvml.sample(clock.now())
    assert snap.gpus[1].gpu_util_pct is None
    assert snap.warnings == ()
    assert snap.unmeasured_reason() == "GPU 1 utilization unknown: Not Supported"
    sample = snap.as_sample()
    assert sample is not None
    assert not sample.complete


def test_a_gpu_vanishing_from_the_count_is_reported(clock: ManualClock) -> None:
    nvml, _ = _open(
        {"gpus": 2, "phases": [{"for": "1m", "util_pct": 0}, {"util_pct": 0, "count": 1}]},
        clock,
    )
    assert nvml.sample(clock.now()).unmeasured_reason() is None
    clock.advance(61)
    snap = nvml.sample(clock.now())
    assert len(snap.gpus) == 1
    assert snap.unmeasured_reason() == ("only 1 of 2 GPUs visible: a GPU disappeared from NVML")


def test_nvml_going_away_mid_run_is_unmeasured_then_recovers(clock: ManualClock) -> None:
    nvml, _ = _open(
        {
            "gpus": 1,
            "phases": [
                {"for": "1m", "util_pct": 0},
                {"for": "1m", "util_pct": 0, "errors": {"count": "DriverNotLoaded"}},
                {"util_pct": 40},
            ],
        },
        clock,
    )
    clock.advance(61)
    off = nvml.sample(clock.now())
    assert off.gpus == ()
    assert [(p.what, p.severity) for p in off.problems] == [("count", Severity.OFF)]
    assert off.unmeasured_reason() == "count: Driver Not Loaded"
    assert off.as_sample() is None  # nothing read: a gap, not a 0 %
    clock.advance(60)
    back = nvml.sample(clock.now())
    assert back.problems == ()
    assert back.gpus[0].gpu_util_pct == 40.0


def test_calls_raise_by_default(clock: ManualClock) -> None:
    nvml, _ = _open("lost-gpu", clock)
    clock.advance(400)
    with pytest.raises(NvmlCallError) as caught:
        nvml._call("nvmlDeviceGetHandleByIndex", 1)
    assert caught.value.code == pynvml.NVML_ERROR_GPU_IS_LOST
    assert caught.value.severity is Severity.FAULT


def test_scenario_phases_follow_the_clock() -> None:
    scenario = load_scenario("training-then-idle")
    assert scenario.phase_at(0).state["util_pct"] == 90
    assert scenario.phase_at(599).state["util_pct"] == 90
    assert scenario.phase_at(600).state["util_pct"] == 0
    assert scenario.phase_at(10**9).state["util_pct"] == 0


def test_memory_v2_leaves_out_the_drivers_reserved_memory(clock: ManualClock) -> None:
    assert FakeNvml.nvmlMemory_v2 == pynvml.nvmlMemory_v2
    scenario = {"gpus": 1, "phases": [{"util_pct": 0, "mem_used_mib": 1, "mem_reserved_mib": 500}]}
    nvml, _ = _open(scenario, clock)
    gpu = nvml.sample(clock.now()).gpus[0]
    assert gpu.mem_used_mib == 1.0  # what nvidia-smi shows; v1 would say 501
    assert gpu.problems == ()


def test_an_old_driver_without_memory_v2_falls_back_to_v1(clock: ManualClock) -> None:
    scenario = {
        "gpus": 1,
        "phases": [{"util_pct": 0, "mem_used_mib": 1, "mem_reserved_mib": 500, "memory_v2": False}],
    }
    nvml, fake = _open(scenario, clock)
    first = nvml.sample(clock.now())
    assert first.gpus[0].mem_used_mib == 501.0
    assert first.warnings == ()  # a missing v2 call is not a fault
    calls = fake.calls
    nvml.sample(clock.now())
    # count, then handle, uuid, name, utilization, memory (v1 only: v2 is not retried), processes
    assert fake.calls - calls == 1 + 6
