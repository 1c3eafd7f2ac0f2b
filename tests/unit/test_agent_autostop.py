"""Autostop: warn, wait the grace, re-check against the cloud, gate, stop — or not."""

from __future__ import annotations

import dataclasses
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from guardian.agent.autostop import Alerter, Autostop, CloudTarget
from guardian.agent.gpu.fake import FakeNvml, ManualClock, Scenario, load_scenario
from guardian.agent.gpu.nvml import Nvml
from guardian.agent.loop import Agent, local_instance
from guardian.agent.poll import PollResult
from guardian.agent.status import RunDir
from guardian.config import parse_config
from guardian.model import Controller, GpuInstance, ManagedBy, Verdict
from guardian.policy import Step, format_keep_until, instance_block
from guardian.providers import StopResult, UnitError
from tests.fake_provider import FakeProvider, make_instance
from tests.fakes.local_disks import FakeBlockTree, Usage


@pytest.fixture
def wall(tmp_path: Path) -> tuple[tuple[str, ...], Path]:
    """A real executable standing in for wall(1): it appends its message to a file."""
    log = tmp_path / "wall.log"
    script = tmp_path / "fake-wall"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n---\\n" "$1" >> "{log}"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return (str(script),), log


class Rig:
    """An agent with autostop over a FakeProvider and the fake NVML, on a manual clock."""

    def __init__(
        self,
        wall: tuple[tuple[str, ...], Path],
        tmp_path: Path,
        *,
        scenario: str | dict[str, Any] = "idle",
        config: dict[str, Any] | None = None,
        disks: FakeBlockTree | None = None,
        **instance_changes: Any,
    ) -> None:
        self.clock = ManualClock()
        base = {
            "agent": {"interval": "10s", "listen": "", "autostop": True},
            "idle": {"window_released": "10m", "grace": "15m"},
        }
        for key, value in (config or {}).items():
            base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
        self.config = parse_config(base)
        loaded = (
            load_scenario(scenario)
            if isinstance(scenario, str)
            else Scenario.from_dict(scenario, "custom")
        )
        nvml = Nvml.open(FakeNvml(loaded, clock=self.clock.monotonic))
        self.cloud_instance = make_instance("i-0abc", **instance_changes)
        self.provider = FakeProvider([self.cloud_instance])
        self.alerter = Alerter([], wall[0])
        self.wall_log = wall[1]
        self.autostop = Autostop(self.config, CloudTarget(self.provider, "i-0abc"), self.alerter)
        local = dataclasses.replace(
            local_instance(1, "T4", self.clock.now() - timedelta(hours=1)),
            provider="aws",
            account="123456789012",
            region="us-east-1",
            instance_id="i-0abc",
        )
        self.run_dir = RunDir(tmp_path / "run")
        self.agent = Agent(
            self.config,
            nvml,
            local,
            clock=self.clock,
            autostop=self.autostop,
            run_dir=self.run_dir,
            local_disks=disks.probe() if disks is not None else None,
        )

    def set_cloud(self, **changes: Any) -> None:
        self.provider.instances = [dataclasses.replace(self.cloud_instance, **changes)]

    def run(self, minutes: float) -> list[PollResult]:
        results = []
        for _ in range(int(minutes * 6)):
            results.append(self.agent.poll())
            self.clock.advance(10)
        return results

    def minute_of(self, results: list[PollResult], step: Step) -> float | None:
        start = results[0].snapshot.sampled_at
        for result in results:
            if result.autostop is not None and result.autostop.step is step:
                return (result.snapshot.sampled_at - start).total_seconds() / 60
        return None

    def walls(self) -> list[str]:
        if not self.wall_log.exists():
            return []
        return [m.strip() for m in self.wall_log.read_text().split("---") if m.strip()]


def test_idle_machine_is_warned_then_stopped_after_the_grace(wall: Any, tmp_path: Path) -> None:
    rig = Rig(wall, tmp_path)
    with capture_logs() as logs:
        results = rig.run(40)
    warned = rig.minute_of(results, Step.WARN)
    stopped = rig.minute_of(results, Step.STOP)
    assert warned == pytest.approx(9 + 50 / 60)
    assert stopped is not None
    assert warned is not None
    assert stopped - warned == pytest.approx(15)
    assert rig.provider.stopped == ["aws:123456789012:i-0abc"]  # exactly once
    assert rig.autostop.stopped
    assert results[-1].autostop is not None
    assert results[-1].autostop.stopped
    messages = rig.walls()
    assert len(messages) == 2
    assert "idle, stopping at" in messages[0]
    assert "guardian agent keep 2h" in messages[0]
    assert "stopping now" in messages[1]
    assert [e["instance_id"] for e in logs if e["event"] == "instance_stopped"] == ["i-0abc"]
    # While warned, the status file shows the pending stop with its deadline.
    pending = next(r for r in results if r.autostop and r.autostop.step is Step.WAIT)
    assert pending.autostop is not None
    assert pending.autostop.episode is not None


def test_work_resuming_in_the_grace_cancels_the_stop(wall: Any, tmp_path: Path) -> None:
    scenario = {
        "gpus": 1,
        "phases": [
            {"for": "15m", "util_pct": 0, "mem_used_mib": 0, "processes": []},
            {"util_pct": 80, "mem_used_mib": 9000, "processes": [{"pid": 5000003}]},
        ],
    }
    rig = Rig(wall, tmp_path, scenario=scenario)
    results = rig.run(40)
    assert rig.minute_of(results, Step.WARN) is not None
    assert rig.minute_of(results, Step.RESUMED) == pytest.approx(15)
    assert rig.minute_of(results, Step.STOP) is None
    assert rig.provider.stopped == []
    assert "stop cancelled" in rig.walls()[-1]


def test_tag_seen_during_the_grace_withdraws_the_warning(wall: Any, tmp_path: Path) -> None:
    rig = Rig(wall, tmp_path)
    rig.run(11)  # warned at 9:50
    rig.set_cloud(tags={"guardian:protect": "true"})  # someone protects it in the console
    results = rig.run(30)  # the tags are re-read every 5 minutes
    assert rig.provider.stopped == []
    assert rig.minute_of(results, Step.RESUMED) is not None
    assert {r.decision.verdict for r in results[-10:]} == {Verdict.PROTECTED}
    assert "stop cancelled" in rig.walls()[-1]


def test_tag_set_just_before_the_deadline_blocks_the_stop(wall: Any, tmp_path: Path) -> None:
    rig = Rig(wall, tmp_path)
    rig.run(24)  # warned at 9:50, deadline 24:50; tags last re-read at 20:00
    rig.set_cloud(tags={"guardian:protect": "true"})
    results = rig.run(2)
    assert rig.provider.stopped == []  # the re-check at the deadline saw the tag
    blocked = [r.autostop.message for r in results if r.autostop and r.autostop.step is Step.STOP]
    assert blocked == ["not stopping: protected (tag guardian:protect=true)"]
    assert sum("idle, not stopping" in m for m in rig.walls()) == 1
    rig.set_cloud(tags={})  # protection removed: a new warning, a new grace, then the stop
    results = rig.run(20)
    assert rig.minute_of(results, Step.WARN) is not None
    assert rig.provider.stopped == ["aws:123456789012:i-0abc"]


@pytest.mark.parametrize(
    ("used_gib", "config", "stopped"),
    [
        (None, {}, False),  # no instance store found on the machine: not measured, not stopped
        (0.0, {}, True),  # present, not mounted: unused
        (40.0, {}, False),  # 40 GiB of data on it
        (40.0, {"enforce": {"local_disks": "stop"}}, True),
        (0.0, {"enforce": {"local_disks": "alert"}}, False),
        (None, {"enforce": {"allow_instance_store_loss": True}}, True),  # the deprecated alias
    ],
)
def test_autostop_measures_its_own_local_disks(
    wall: Any, tmp_path: Path, used_gib: float | None, config: dict[str, Any], stopped: bool
) -> None:
    disks = FakeBlockTree(tmp_path / "machine")
    if used_gib is not None:
        disks.disk("nvme1n1")
    if used_gib:
        disks.mount("/dev/nvme1n1", "/scratch", "ext4", Usage(250 * 1024, used_gib * 1024, 99, 50))
    rig = Rig(wall, tmp_path, config=config, disks=disks, has_instance_store=True)
    results = rig.run(40)
    assert rig.provider.stopped == (["aws:123456789012:i-0abc"] if stopped else [])
    if not stopped:
        (blocked,) = [m for m in rig.walls() if "idle, not stopping" in m]
        assert "local disks" in blocked
    reading = results[-1].local_disks
    assert (reading.used_mib if reading else None) == (
        None if used_gib is None else used_gib * 1024
    )


def test_an_agent_never_stops_a_machine_a_controller_owns(wall: Any, tmp_path: Path) -> None:
    # Not even with Standby configured: walking a group's capacity down is the daemon's job.
    group = ManagedBy(Controller.AUTOSCALING_GROUP, "gpu-pool")
    rig = Rig(
        wall,
        tmp_path,
        config={"enforce": {"autoscaling_groups": "standby"}},
        managed_by=group,
    )
    rig.run(40)
    assert rig.provider.stopped == []
    (blocked,) = [m for m in rig.walls() if "idle, not stopping" in m]
    assert "Auto Scaling group gpu-pool" in blocked
    assert "set min and desired to 0" in blocked or "minimum and desired" in blocked


def test_the_agent_re_reads_only_its_own_instance(wall: Any, tmp_path: Path) -> None:
    rig = Rig(wall, tmp_path)
    rig.run(40)
    assert rig.provider.stopped == ["aws:123456789012:i-0abc"]
    # Its own instance, every 5 minutes and once more right before the stop (24:50, which
    # restarts the 5 minutes): 0, 5, 10, 15, 20, 24:50, 29:50, 34:50, 39:50. Never a discovery.
    assert rig.provider.describe_calls == 9


def test_one_time_spot_is_never_stopped(wall: Any, tmp_path: Path) -> None:
    rig = Rig(wall, tmp_path, spot_one_time=True)
    rig.run(40)
    assert rig.provider.stopped == []


def test_dry_run_says_what_it_would_do(wall: Any, tmp_path: Path) -> None:
    rig = Rig(wall, tmp_path, config={"dry_run": True})
    results = rig.run(40)
    assert rig.provider.stopped == []
    assert results[-1].autostop is not None
    assert results[-1].autostop.message == "not stopping: dry run: would stop it now"


def test_no_stop_when_the_instance_cannot_be_re_read(wall: Any, tmp_path: Path) -> None:
    rig = Rig(wall, tmp_path)
    rig.run(11)
    rig.provider.instances = []
    rig.provider.errors = [UnitError("aws", "123456789012", "us-east-1", "ec2:X", "denied")]
    results = rig.run(30)
    assert rig.provider.stopped == []
    assert any(
        "cannot re-read the instance" in (r.autostop.message or "") for r in results if r.autostop
    )


def test_a_failed_stop_is_alerted_and_retried(wall: Any, tmp_path: Path) -> None:
    rig = Rig(wall, tmp_path)
    attempts: list[str] = []

    def failing_stop(instance: GpuInstance, *, hibernate: bool = False) -> StopResult:
        attempts.append(instance.key)
        return StopResult(instance.key, False, "stop", "UnauthorizedOperation")

    rig.provider.stop = failing_stop  # type: ignore[method-assign]
    rig.run(40)
    assert len(attempts) == 4  # at 24:50, then every 5 minutes: not on every 10 s poll
    assert not rig.autostop.stopped
    assert any("stop FAILED" in m for m in rig.walls())


def test_guardian_agent_keep_postpones_the_stop(wall: Any, tmp_path: Path) -> None:
    rig = Rig(wall, tmp_path)
    rig.run(12)
    rig.run_dir.write_keep(rig.clock.now() + timedelta(hours=2))
    results = rig.run(60)
    assert rig.provider.stopped == []
    assert results[0].autostop is not None
    assert results[0].autostop.step is Step.RESUMED
    assert {r.decision.verdict for r in results} == {Verdict.PROTECTED}


def test_hibernate_only_where_configured(wall: Any, tmp_path: Path) -> None:
    rig = Rig(wall, tmp_path, config={"enforce": {"hibernate": True}}, hibernation_configured=True)
    results = rig.run(40)
    assert rig.provider.stopped == ["aws:123456789012:i-0abc"]
    stops = [r.autostop.message for r in results if r.autostop and r.autostop.step is Step.STOP]
    assert stops == ["hibernate requested"]


def test_the_agent_and_the_daemon_share_the_instance_gates() -> None:
    config = parse_config({})
    now = make_instance().launch_time + timedelta(days=2)

    def reason(**changes: Any) -> str | None:
        block = instance_block(make_instance(**changes), config, now)
        return block.reason if block else None

    assert reason() is None
    assert reason(tags={"guardian:protect": "yes"}) == "protected"
    assert reason(tags={"guardian:keep-until": format_keep_until(now + timedelta(days=1))}) == (
        "protected"
    )
    assert reason(spot_one_time=True) == "spot_one_time"
    assert reason(has_instance_store=True) == "local_disk"
    assert reason(launch_time=now - timedelta(minutes=5)) == "min_uptime"
    assert reason(managed_by=ManagedBy(Controller.EKS_NODEGROUP, "ng", "prod")) == "managed"
    assert reason(reservation="cr-0123") == "reserved"
    allowed = parse_config({"enforce": {"local_disks": "stop"}})
    assert instance_block(make_instance(has_instance_store=True), allowed, now) is None
    unused = (now, 0.0)
    assert (
        instance_block(make_instance(has_instance_store=True), config, now, local_disk=unused)
        is None
    )
