"""The agent's poll loop over scripted GPUs: job-aware idleness, bounded history, status."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from guardian.agent.gpu.fake import FakeNvml, ManualClock, load_scenario
from guardian.agent.gpu.nvml import Nvml
from guardian.agent.loop import (
    MAX_WINDOW_SAMPLES,
    Agent,
    SampleWindow,
    agent_horizon,
    local_instance,
    policy_config,
)
from guardian.agent.poll import PollResult
from guardian.agent.status import RunDir
from guardian.commands.agent import render_status
from guardian.config import Config, parse_config
from guardian.errors import ConfigError
from guardian.model import GpuSample, Verdict


def make_agent(
    scenario: str,
    clock: ManualClock,
    *,
    config: dict[str, Any] | None = None,
    run_dir: RunDir | None = None,
    uptime: timedelta = timedelta(hours=1),
) -> Agent:
    cfg = parse_config({"agent": {"interval": "10s", "listen": ""}, **(config or {})})
    nvml = Nvml.open(FakeNvml(load_scenario(scenario), clock=clock.monotonic))
    instance = local_instance(nvml.expected_gpus, "fake", clock.now() - uptime, "test-host")
    return Agent(cfg, nvml, instance, clock=clock, run_dir=run_dir, backend=f"fake:{scenario}")


def run_for(agent: Agent, clock: ManualClock, minutes: float) -> list[PollResult]:
    """Poll every interval for ``minutes`` of scenario time; returns every poll's result."""
    results: list[PollResult] = []
    polls = int(minutes * 60 / agent.interval.total_seconds())
    for _ in range(polls):
        results.append(agent.poll())
        clock.advance(agent.interval.total_seconds())
    return results


def first_idle_minute(results: list[PollResult], start: Any) -> float | None:
    for result in results:
        if result.decision.verdict is Verdict.IDLE:
            return (result.snapshot.sampled_at - start).total_seconds() / 60
    return None


def test_training_then_exit_is_idle_after_the_released_window() -> None:
    clock = ManualClock()
    start = clock.now()
    agent = make_agent("training-then-idle", clock)
    results = run_for(agent, clock, 25)
    training = [r for r in results if (r.snapshot.sampled_at - start) < timedelta(minutes=10)]
    assert {r.decision.verdict for r in training} == {Verdict.BUSY}
    # The job exited at 10:00; ten minutes of released memory with no process → idle at 19:50
    # (the sample at 10:00 counts for one 10 s period, so the window closes one period early).
    assert first_idle_minute(results, start) == pytest.approx(19 + 50 / 60)
    idle = next(r for r in results if r.decision.verdict is Verdict.IDLE)
    assert idle.decision.idle_window_minutes == 10
    assert "the job has ended" in idle.decision.reasons[-1]


def test_a_paused_job_holding_memory_waits_for_the_long_window() -> None:
    clock = ManualClock()
    start = clock.now()
    agent = make_agent("paused-job", clock)
    results = run_for(agent, clock, 70)
    # Paused at 5:00 with a process still holding 16 GB: the 10 min rule must not fire.
    at_20 = next(r for r in results if r.snapshot.sampled_at - start >= timedelta(minutes=20))
    assert at_20.decision.verdict is Verdict.BUSY
    assert at_20.snapshot.process_count == 1
    assert first_idle_minute(results, start) == pytest.approx(64 + 50 / 60)
    idle = next(r for r in results if r.decision.verdict is Verdict.IDLE)
    assert idle.decision.idle_window_minutes == 60


def test_a_lost_gpu_makes_the_machine_unmeasured_never_idle() -> None:
    clock = ManualClock()
    agent = make_agent("lost-gpu", clock, config={"idle": {"window_released": "2m"}})
    with capture_logs() as logs:
        results = run_for(agent, clock, 90)
    before = [r for r in results if r.snapshot.sampled_at - clock.now() < timedelta(minutes=-86)]
    assert Verdict.IDLE in {r.decision.verdict for r in before}  # idle before the GPU is lost
    after = results[5 * 6 + 1 :]
    assert {r.decision.verdict for r in after} == {Verdict.UNMEASURED}
    assert after[-1].decision.reasons == ("GPU 1 device: GPU is lost",)
    # Reported once when it happens, not on each of the 500 polls since.
    problems = [e for e in logs if e["event"] == "gpu_problem"]
    assert len(problems) == 1
    assert problems[0]["problems"] == ["GPU 1 device: GPU is lost"]
    assert problems[0]["log_level"] == "warning"


def test_min_uptime_still_applies_to_the_agent() -> None:
    clock = ManualClock()
    start = clock.now()
    agent = make_agent("idle", clock, uptime=timedelta(0))
    results = run_for(agent, clock, 25)
    assert first_idle_minute(results, start) == pytest.approx(20)


def test_keep_file_protects_with_its_own_reason(tmp_path: Path) -> None:
    clock = ManualClock()
    run_dir = RunDir(tmp_path)
    agent = make_agent("idle", clock, run_dir=run_dir)
    run_for(agent, clock, 12)
    assert agent.poll().decision.verdict is Verdict.IDLE
    run_dir.write_keep(clock.now() + timedelta(minutes=10))
    kept = run_for(agent, clock, 10)
    assert {r.decision.verdict for r in kept} == {Verdict.PROTECTED}
    assert kept[0].keep_until is not None
    assert kept[0].decision.reasons[0].startswith("kept until ")
    assert "guardian agent keep" in kept[0].decision.reasons[0]
    # The GPUs stayed idle while kept: once the keep runs out the machine is idle at once.
    after = agent.poll()
    assert after.keep_until is None
    assert after.decision.verdict is Verdict.IDLE


def test_a_malformed_keep_file_protects(tmp_path: Path) -> None:
    clock = ManualClock()
    run_dir = RunDir(tmp_path)
    run_dir.keep_path.write_text("tomorrow-ish")
    assert run_dir.keep_until(clock.now()) is not None


def test_status_file_round_trip_and_rendering(tmp_path: Path) -> None:
    clock = ManualClock()
    run_dir = RunDir(tmp_path)
    agent = make_agent("training-then-idle", clock, run_dir=run_dir)
    agent.poll()
    document = json.loads(run_dir.status_path.read_text())
    assert document["verdict"] == "busy"
    assert document["agent"]["backend"] == "fake:training-then-idle"
    assert document["gpus"][0]["processes"] == [
        {
            "pid": 5_000_001,
            "name": "python",
            "gpu_mem_used_mib": 28672.0,
            "kind": None,  # this agent classifies no process (no notebook watch)
            "why": None,
            "kernel_id": None,
        }
    ]
    assert document["pending_stop"] is None
    document["agent"]["running"] = True
    text = "\n".join(render_status(document))
    assert "verdict: busy" in text
    assert "GPU 0: NVIDIA A100-SXM4-40GB" in text
    assert "pid 5000001 python 28672 MiB" in text
    agent.close()
    assert not run_dir.status_path.exists()


def test_the_agent_runs_on_its_interval_and_skips_missed_ticks() -> None:
    clock = ManualClock()
    agent = make_agent("idle", clock)
    agent.run(max_polls=7)
    assert agent.polls == 7
    assert clock.monotonic() == pytest.approx(60.0)  # six sleeps of 10 s between seven polls


# -- the bounded window ------------------------------------------------------------------------


def test_horizon_is_twice_the_longest_window_within_the_lookback() -> None:
    assert agent_horizon(Config()) == timedelta(hours=2)
    short = parse_config({"cost": {"lookback": "30m"}})
    assert agent_horizon(short) == timedelta(minutes=30)
    assert policy_config(Config()).cost.lookback == timedelta(hours=2)


def test_window_never_grows_past_its_bound() -> None:
    window = SampleWindow(timedelta(hours=24), timedelta(seconds=1))
    assert window.per_sample == 60  # 86 400 polls merged 60 to a sample
    assert window.capacity <= MAX_WINDOW_SAMPLES + 1
    clock = ManualClock()
    for _ in range(200_000):
        window.add(GpuSample(at=clock.now(), gpu_util_pct=1.0, mem_used_mib=1.0, processes=0))
        clock.advance(1)
    assert len(window) == window.capacity
    assert window.utilisation().period_s == 60


def test_merging_polls_is_conservative() -> None:
    window = SampleWindow(timedelta(hours=24), timedelta(seconds=1))
    clock = ManualClock()
    for n in range(60):
        util = 50.0 if n == 3 else 0.0
        window.add(GpuSample(at=clock.now(), gpu_util_pct=util, mem_used_mib=1.0, processes=0))
        clock.advance(1)
    [merged] = window.utilisation().samples
    assert merged.gpu_util_pct == 50.0  # a burst inside the bucket is kept
    assert merged.complete
    for n in range(60):  # one poll of the next bucket read nothing
        sample = None if n == 5 else GpuSample(at=clock.now(), gpu_util_pct=0.0)
        window.add(sample)
        clock.advance(1)
    assert window.utilisation().samples[-1].complete is False


def test_window_for_the_default_interval_keeps_every_poll() -> None:
    window = SampleWindow(timedelta(hours=2), timedelta(seconds=10))
    assert window.per_sample == 1
    assert window.capacity == 721


def test_sub_second_interval_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"agent\.interval"):
        SampleWindow(timedelta(hours=2), timedelta(milliseconds=500))


def test_merged_polls_decide_only_when_an_input_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    import guardian.agent.loop

    calls: list[object] = []
    real = guardian.agent.loop.decide

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[-1])
        return real(*args, **kwargs)

    monkeypatch.setattr(guardian.agent.loop, "decide", counting)
    clock = ManualClock()
    agent = make_agent("lost-gpu", clock, config={"agent": {"interval": "1s", "listen": ""}})
    assert agent.window.per_sample == 5
    for _ in range(300):  # 5 minutes of 1 s polls, all GPUs fine
        agent.poll()
        clock.advance(1)
    assert len(calls) == 300 // 5 + 1
    clock.advance(5)
    lost = agent.poll()  # the first poll after GPU 1 is lost, mid-bucket: decided at once
    assert lost.decision.verdict is Verdict.UNMEASURED
    assert len(calls) == 300 // 5 + 2


def test_the_first_verdict_says_the_agent_has_just_started() -> None:
    # It used to ask whether "the GPU agent (... or guardian agent)" was running: it is.
    clock = ManualClock()
    agent = make_agent(
        "training-then-idle", clock, config={"agent": {"interval": "1s", "listen": ""}}
    )
    first = agent.poll()
    assert first.decision.verdict is Verdict.UNMEASURED
    (reason,) = first.decision.reasons
    assert reason.startswith("this agent has just started")
    assert "GPU agent" not in reason
