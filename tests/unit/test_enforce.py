"""Warn, then stop, with every safety gate: the Enforcer over FakeProviders and a real store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from guardian.config import Config
from guardian.cycle import CycleResult, audit_cycle
from guardian.daemon.enforce import Enforcer, EnforceSummary
from guardian.daemon.notify import Notifier
from guardian.daemon.store import ActionRow, Store
from guardian.model import GpuInstance, GpuSample, InstanceMetric, Verdict
from guardian.policy import format_keep_until
from guardian.providers import StopResult, UnitError
from tests.fake_provider import CATALOG, NOW, FakeProvider, flat_samples, make_instance

GRACE = timedelta(minutes=15)
CHANNEL = "json://127.0.0.1:9/hook"  # never flushed here: the outbox rows are what we check


def config(**changes: Any) -> Config:
    data: dict[str, Any] = {
        "mode": "enforce",
        "idle": {
            "window": "30m",
            "window_released": "30m",
            "grace": "15m",
            "min_uptime": "20m",
            "history_margin": 0,
            "window_bursty": "0s",
        },
        "limits": {"max_idle_fraction": 1.0},
        "notify": {
            "urls": [CHANNEL],
            "owner_mailto": "mailto://127.0.0.1:9",
            "owner_email_domain": "example.com",
        },
    }
    for key, value in changes.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return Config.model_validate(data)


class CrashBeforeOutcome(BaseException):
    """Plays the process dying inside the stop call (BaseException: nothing catches it)."""


@dataclass
class StoppingProvider(FakeProvider):
    """A FakeProvider whose stop can fail, crash, or take the instance off the running list."""

    stop_result: StopResult | None = None
    crash: bool = False
    hibernated: list[str] = field(default_factory=list)

    def stop(self, instance: GpuInstance, *, hibernate: bool = False) -> StopResult:
        if self.crash:
            self.crash = False
            self.instances = [i for i in self.instances if i.key != instance.key]
            raise CrashBeforeOutcome
        if self.stop_result is not None:
            return replace(self.stop_result, instance_key=instance.key)
        result = super().stop(instance, hibernate=hibernate)
        if hibernate:
            self.hibernated.append(instance.key)
        self.instances = [i for i in self.instances if i.key != instance.key]
        return result


class World:
    """Instances whose GPU history is rewritten for each cycle's ``now``."""

    def __init__(self, tmp_path: Path, cfg: Config, instances: Sequence[GpuInstance]) -> None:
        self.store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
        self.provider = StoppingProvider(list(instances))
        self.util: dict[str, float] = {i.key: 0.0 for i in instances}
        self.history: dict[str, tuple[GpuSample, ...]] = {}
        self.cycles = 0
        self.configure(cfg)

    def configure(self, cfg: Config) -> None:
        self.config = cfg
        notifier = Notifier(
            cfg.notify, self.store, backoff_base=timedelta(seconds=1), owners=not cfg.dry_run
        )
        self.enforcer = Enforcer(cfg, self.store, notifier, [self.provider])

    def audit(self, now: datetime) -> CycleResult:
        for instance in self.provider.instances:
            if instance.key in self.history:
                samples = tuple(s for s in self.history[instance.key] if s.at <= now)
            else:
                samples = flat_samples(self.util[instance.key], 180, end=now)
            self.provider.samples[instance.key] = samples
        return audit_cycle(self.config, [self.provider], CATALOG, now)

    def cycle(self, now: datetime) -> EnforceSummary:
        self.cycles += 1
        return self.enforcer.run(self.audit(now), now, f"c{self.cycles}")

    def actions(self, *phases: str) -> list[ActionRow]:
        with self.store.reader() as tx:
            rows = tx.actions_since(NOW - timedelta(days=30))
        return [a for a in rows if not phases or a.phase in phases]

    def outbox(self) -> list[tuple[str, str]]:
        with self.store.reader() as tx:
            rows = tx.notifications_since(NOW - timedelta(days=30))
        return [(row.kind, row.target.split(":")[0]) for row in rows]

    def kinds(self) -> list[str]:
        return [kind for kind, target in self.outbox() if target == "url"]


def test_notify_mode_warns_once_per_episode_and_withdraws(tmp_path: Path) -> None:
    trainer = make_instance("i-1", owner="alice")
    world = World(tmp_path, config(mode="notify"), [trainer])
    assert world.cycle(NOW).warned == 1
    for minutes in (5, 10, 20, 60):  # long past the grace: notify mode never stops
        assert world.cycle(NOW + timedelta(minutes=minutes)).warned == 0
    assert world.provider.stopped == []
    world.util[trainer.key] = 80.0
    assert world.cycle(NOW + timedelta(minutes=65)).resumed == 1
    assert world.outbox() == [
        ("warning", "url"),
        ("warning", "owner"),
        ("resumed", "url"),
        ("resumed", "owner"),
    ]
    assert [(a.action, a.outcome) for a in world.actions()] == [
        ("warn", "alert"),
        ("resume", "busy"),
    ]


def test_enforce_warns_then_stops_at_the_deadline_once(tmp_path: Path) -> None:
    trainer = make_instance("i-1")
    world = World(tmp_path, config(), [trainer])
    world.cycle(NOW)
    with world.store.reader() as tx:
        episode = tx.open_episodes()[trainer.key]
    assert (episode.deadline, episode.promise) == (NOW + GRACE, "stop")
    world.cycle(NOW + GRACE - timedelta(seconds=1))
    assert world.provider.stopped == []
    summary = world.cycle(NOW + GRACE)
    assert summary.stops == {("stop", False): 1}
    world.cycle(NOW + GRACE + timedelta(minutes=5))  # gone from the running list
    assert world.provider.stopped == [trainer.key]
    assert [(a.action, a.phase, a.outcome) for a in world.actions()] == [
        ("warn", "event", "stop"),
        ("stop", "intent", None),
        ("stop", "outcome", "ok"),
    ]
    assert world.kinds() == ["warning", "stopped"]
    with world.store.reader() as tx:
        assert tx.open_episodes() == {}


def test_busy_again_during_the_grace_is_not_stopped(tmp_path: Path) -> None:
    trainer = make_instance("i-1")
    world = World(tmp_path, config(), [trainer])
    world.cycle(NOW)
    world.util[trainer.key] = 90.0
    assert world.cycle(NOW + timedelta(minutes=5)).resumed == 1
    world.cycle(NOW + GRACE + timedelta(minutes=1))
    assert world.provider.stopped == []
    assert world.kinds() == ["warning", "resumed"]


def test_protected_and_busy_instances_are_left_alone(tmp_path: Path) -> None:
    keep = make_instance("i-keep", tags={"guardian:protect": "true"})
    until = make_instance(
        "i-until", tags={"guardian:keep-until": format_keep_until(NOW + timedelta(days=1))}
    )
    busy = make_instance("i-busy")
    world = World(tmp_path, config(), [keep, until, busy])
    world.util[busy.key] = 95.0
    for minutes in (0, 20, 40):
        world.cycle(NOW + timedelta(minutes=minutes))
    assert world.provider.stopped == []
    assert world.actions() == []
    assert world.outbox() == []


def test_dry_run_records_what_it_would_do_and_tells_no_owner(tmp_path: Path) -> None:
    trainer = make_instance("i-1", owner="alice")
    world = World(tmp_path, config(dry_run=True), [trainer])
    world.cycle(NOW)
    world.cycle(NOW + GRACE)
    world.cycle(NOW + GRACE + timedelta(minutes=5))
    assert world.provider.stopped == []
    assert [(a.action, a.outcome, a.dry_run) for a in world.actions()] == [
        ("warn", "dry_run", True),
        ("stop", "dry_run", True),
    ]
    assert world.outbox() == [("warning", "url"), ("stopped", "url")]
    # Dry run switched off: the episode promised nothing real, so it is warned again first.
    world.configure(config())
    world.cycle(NOW + GRACE + timedelta(minutes=10))
    assert world.provider.stopped == []
    assert world.kinds()[-1] == "warning"
    world.cycle(NOW + 2 * GRACE + timedelta(minutes=10))
    assert world.provider.stopped == [trainer.key]


def test_one_time_spot_is_alert_only(tmp_path: Path) -> None:
    spot = make_instance("i-spot", spot_one_time=True)
    world = World(tmp_path, config(), [spot])
    world.cycle(NOW)
    for minutes in (15, 20, 30):
        world.cycle(NOW + timedelta(minutes=minutes))
    assert world.provider.stopped == []
    blocks = [a for a in world.actions() if a.action == "block"]
    assert [(a.outcome, a.reason) for a in blocks] == [
        ("spot_one_time", "it is a one-time spot instance, which cannot be stopped")
    ]
    assert world.kinds() == ["warning", "not_stopped"]


@pytest.mark.parametrize(
    ("reading", "enforce", "stopped"),
    [
        (0.0, {}, True),  # the agent measured its instance store: unused
        (40 * 1024.0, {}, False),  # 40 GiB on it
        (None, {}, False),  # no agent reading: alert-only
        ("stale", {}, False),  # the agent stopped reporting
        (None, {"local_disks": "stop"}, True),
        (0.0, {"local_disks": "alert"}, False),
        (None, {"allow_instance_store_loss": True}, True),  # the deprecated alias, still read
    ],
)
def test_local_disks_are_stopped_only_when_measured_unused(
    tmp_path: Path, reading: float | str | None, enforce: dict[str, Any], stopped: bool
) -> None:
    local_ssd = make_instance("i-ssd", has_instance_store=True)
    world = World(tmp_path, config(enforce=enforce), [local_ssd])
    if reading is not None:
        at = NOW - timedelta(minutes=30) if reading == "stale" else NOW + GRACE
        used = 0.0 if reading == "stale" else float(reading)
        world.provider.instance_series[local_ssd.key] = {
            InstanceMetric.LOCAL_DISK_USED_MIB: ((NOW - timedelta(minutes=60), used), (at, used))
        }
    world.cycle(NOW)
    world.cycle(NOW + GRACE)
    assert world.provider.stopped == ([local_ssd.key] if stopped else [])
    with world.store.reader() as tx:
        (warning,) = [r for r in tx.notifications_since(NOW) if r.kind == "warning"][:1]
    text = repr(warning.message)
    if stopped:
        assert "wiped when it stops" in text
    else:
        assert "will not stop it automatically" in text
        assert "local disks" in text


def test_local_disks_filling_up_after_the_warning_break_the_promise_once(tmp_path: Path) -> None:
    local_ssd = make_instance("i-ssd", has_instance_store=True)
    world = World(tmp_path, config(), [local_ssd])
    series = world.provider.instance_series
    series[local_ssd.key] = {InstanceMetric.LOCAL_DISK_USED_MIB: ((NOW, 0.0),)}
    world.cycle(NOW)  # warned: a stop is promised
    full = ((NOW + GRACE, 40 * 1024.0),)
    series[local_ssd.key] = {InstanceMetric.LOCAL_DISK_USED_MIB: full}
    world.cycle(NOW + GRACE)
    world.cycle(NOW + GRACE + timedelta(minutes=5))
    assert world.provider.stopped == []
    assert world.kinds() == ["warning", "not_stopped"]  # no second warning, one explanation
    blocks = [a for a in world.actions() if a.action == "block"]
    assert [(a.outcome, "40.0 GiB in use" in (a.reason or "")) for a in blocks] == [
        ("local_disk", True)
    ]


def test_hibernate_where_configured_and_supported(tmp_path: Path) -> None:
    sleeper = make_instance("i-hib", hibernation_configured=True)
    plain = make_instance("i-plain")
    world = World(tmp_path, config(enforce={"hibernate": True}), [sleeper, plain])
    world.cycle(NOW)
    summary = world.cycle(NOW + GRACE)
    assert world.provider.hibernated == [sleeper.key]
    assert summary.stops == {("hibernate", False): 1, ("stop", False): 1}


def test_max_stops_per_cycle_defers_the_rest(tmp_path: Path) -> None:
    first, second = make_instance("i-1"), make_instance("i-2")
    world = World(tmp_path, config(limits={"max_stops_per_cycle": 1}), [first, second])
    world.cycle(NOW)
    summary = world.cycle(NOW + GRACE)
    assert len(world.provider.stopped) == 1
    assert summary.blocked == {"max_stops_per_cycle": 1}
    world.cycle(NOW + GRACE + timedelta(minutes=1))
    assert sorted(world.provider.stopped) == [first.key, second.key]


def test_circuit_breaker_stops_nothing_and_alerts_once(tmp_path: Path) -> None:
    fleet = [make_instance(f"i-{n}") for n in range(4)]
    world = World(tmp_path, config(limits={"max_idle_fraction": 0.5}), fleet)
    world.util[fleet[3].key] = 90.0  # 3 of 4 look idle: more than half, and at least 3
    first = world.cycle(NOW)
    assert first.tripped_units == ("aws 123456789012 us-east-1",)
    assert first.warned == 0
    world.cycle(NOW + GRACE)
    assert world.provider.stopped == []
    assert world.kinds() == ["breaker"]
    # Two busy again: 1 of 4 idle, the breaker clears and the idle one gets its warning.
    world.util[fleet[0].key] = world.util[fleet[1].key] = 90.0
    cleared = world.cycle(NOW + GRACE + timedelta(minutes=1))
    assert (cleared.tripped_units, cleared.warned) == ((), 1)
    with world.store.reader() as tx:
        assert tx.open_conditions("breaker:") == {}


def test_breaker_needs_three_idle_instances(tmp_path: Path) -> None:
    pair = [make_instance("i-1"), make_instance("i-2")]
    world = World(tmp_path, config(limits={"max_idle_fraction": 0.5}), pair)
    assert world.cycle(NOW).warned == 2


def test_defensive_gates_recheck_uptime_and_protection(tmp_path: Path) -> None:
    trainer = make_instance("i-1")
    world = World(tmp_path, config(), [trainer])
    world.cycle(NOW)
    # Findings the policy would not produce, to exercise the gates in the enforcer itself.
    at = NOW + GRACE
    result = world.audit(at)
    (finding,) = result.findings
    young = replace(finding, instance=replace(trainer, launch_time=at - timedelta(minutes=5)))
    summary = world.enforcer.run(replace(result, findings=(young,)), at, "c-young")
    assert summary.blocked == {"min_uptime": 1}
    tagged = replace(finding, instance=replace(trainer, tags={"guardian:protect": "yes"}))
    assert finding.decision.verdict is Verdict.IDLE
    summary = world.enforcer.run(replace(result, findings=(tagged,)), at, "c-tagged")
    assert summary.blocked == {"protected": 1}
    assert world.provider.stopped == []


def test_a_failed_stop_alerts_once_and_is_retried(tmp_path: Path) -> None:
    trainer = make_instance("i-1")
    world = World(tmp_path, config(), [trainer])
    world.provider.stop_result = StopResult("", False, "stop", "UnauthorizedOperation")
    world.cycle(NOW)
    world.cycle(NOW + GRACE)
    summary = world.cycle(NOW + GRACE + timedelta(minutes=1))
    assert summary.stop_failures == {"aws": 1}
    assert [(a.phase, a.outcome) for a in world.actions() if a.action == "stop"] == [
        ("intent", None),
        ("outcome", "failed"),
        ("intent", None),
        ("outcome", "failed"),
    ]
    assert world.kinds() == ["warning", "stop_failed"]


def test_crash_between_intent_and_outcome_is_reconciled_not_repeated(tmp_path: Path) -> None:
    trainer = make_instance("i-1")
    world = World(tmp_path, config(), [trainer])
    world.cycle(NOW)
    world.provider.crash = True  # the stop went through, then the process died
    with pytest.raises(CrashBeforeOutcome):
        world.cycle(NOW + GRACE)
    with world.store.reader() as tx:
        assert [p.action for p in tx.pending_intents()] == ["stop"]
    world.configure(world.config)  # a restarted daemon
    summary = world.cycle(NOW + GRACE + timedelta(minutes=1))
    assert summary.reconciled == 1
    assert world.provider.stopped == []  # not stopped a second time
    outcome = world.actions("outcome")
    assert [(a.outcome, a.reason) for a in outcome] == [
        ("ok", "no longer running when checked again: the stop took effect")
    ]
    assert world.kinds() == ["warning", "stopped"]  # the one "Stopped" alert, after all
    # The episode ends with the reconciled stop, not later as a machine that vanished.
    assert [(a.action, a.phase) for a in world.actions()] == [
        ("warn", "event"),
        ("stop", "intent"),
        ("stop", "outcome"),
    ]
    with world.store.reader() as tx:
        assert tx.open_episodes() == {}
        assert tx.pending_intents() == []


def test_crash_before_the_stop_took_effect_is_retried(tmp_path: Path) -> None:
    trainer = make_instance("i-1")
    world = World(tmp_path, config(), [trainer])
    world.cycle(NOW)
    with world.store.transaction() as tx:  # an intent written just before the process died
        episode = tx.open_episodes()[trainer.key]
        tx.record_action(
            at=NOW + GRACE,
            cycle_id="c-dead",
            ref=episode.ref,
            action="stop",
            phase="intent",
            episode_id=episode.id,
        )
    world.cycle(NOW + GRACE + timedelta(minutes=1))
    assert world.provider.stopped == [trainer.key]
    assert [a.outcome for a in world.actions("outcome")] == ["not_executed", "ok"]


def test_an_unreachable_unit_gives_unknown_outcome_and_keeps_episodes(tmp_path: Path) -> None:
    trainer = make_instance("i-1")
    world = World(tmp_path, config(), [trainer])
    world.cycle(NOW)
    with world.store.transaction() as tx:
        episode = tx.open_episodes()[trainer.key]
        tx.record_action(
            at=NOW,
            cycle_id="c-dead",
            ref=episode.ref,
            action="stop",
            phase="intent",
            episode_id=episode.id,
        )
    world.provider.instances = []
    world.provider.errors = [
        UnitError("aws", "123456789012", "us-east-1", "ec2:DescribeInstances", "throttled")
    ]
    world.cycle(NOW + timedelta(minutes=1))
    assert [a.outcome for a in world.actions("outcome")] == ["unknown"]
    with world.store.reader() as tx:
        assert list(tx.open_episodes()) == [trainer.key]
    world.provider.errors = []
    world.cycle(NOW + timedelta(minutes=2))  # listed fine and gone: stopped outside guardian
    with world.store.reader() as tx:
        assert tx.open_episodes() == {}
    assert world.actions()[-1].reason == "no longer running: stopped or terminated outside guardian"


def test_busy_while_the_daemon_was_away_earns_a_fresh_warning(tmp_path: Path) -> None:
    trainer = make_instance("i-1")
    world = World(tmp_path, config(), [trainer])
    world.cycle(NOW)
    # Idle until the warning, busy for 10 minutes, then idle again for 40 minutes.
    end = NOW + timedelta(minutes=60)
    samples = [
        s for s in flat_samples(0.0, 240, end=end) if not NOW < s.at <= NOW + timedelta(minutes=10)
    ]
    samples += list(flat_samples(90.0, 10, end=NOW + timedelta(minutes=10)))
    world.history[trainer.key] = tuple(sorted(samples, key=lambda s: s.at))
    summary = world.cycle(end)
    assert (summary.warned, world.provider.stopped) == (1, [])
    assert [a.action for a in world.actions()] == ["warn", "close", "warn"]
    assert "busy again after the warning" in (world.actions()[1].reason or "")


def test_a_warning_from_notify_mode_is_not_a_licence_to_stop(tmp_path: Path) -> None:
    trainer = make_instance("i-1")
    world = World(tmp_path, config(mode="notify"), [trainer])
    world.cycle(NOW)
    world.configure(config())
    world.cycle(NOW + GRACE)
    assert world.provider.stopped == []
    world.cycle(NOW + 2 * GRACE)
    assert world.provider.stopped == [trainer.key]
    assert world.kinds() == ["warning", "warning", "stopped"]


def test_audit_mode_does_nothing(tmp_path: Path) -> None:
    world = World(tmp_path, config(mode="audit"), [make_instance("i-1")])
    world.cycle(NOW)
    world.cycle(NOW + GRACE)
    assert world.actions() == []
    assert world.outbox() == []


def test_only_an_error_that_could_hide_the_instance_keeps_its_episode(tmp_path: Path) -> None:
    here = make_instance("i-1")
    elsewhere = make_instance("i-2", account="210987654321")
    world = World(tmp_path, config(mode="notify"), [here, elsewhere])
    world.util[elsewhere.key] = 90.0
    world.cycle(NOW)
    world.provider.instances = [elsewhere]
    # An assumed role that failed is named by its label, which could be any account: keep.
    world.provider.errors = [UnitError("aws", "prod-role", "*", "sts:AssumeRole", "denied")]
    world.cycle(NOW + timedelta(minutes=1))
    with world.store.reader() as tx:
        assert list(tx.open_episodes()) == [here.key]
    # A failure in the other, listed account says nothing about this one: it is gone.
    world.provider.errors = [
        UnitError("aws", "210987654321", "eu-west-1", "ec2:DescribeInstances", "throttled")
    ]
    world.cycle(NOW + timedelta(minutes=2))
    with world.store.reader() as tx:
        assert tx.open_episodes() == {}


def test_a_dry_run_not_stopped_alert_says_dry_run(tmp_path: Path) -> None:
    from guardian.daemon.messages import Message

    spot = make_instance("i-spot", spot_one_time=True)
    world = World(tmp_path, config(dry_run=True), [spot])
    for minutes in (0, 15, 20):
        world.cycle(NOW + timedelta(minutes=minutes))
    with world.store.reader() as tx:
        titles = {
            row.kind: Message.from_json(row.message).plain_title()
            for row in tx.notifications_since(NOW - timedelta(days=1))
        }
    assert set(titles) == {"warning", "not_stopped"}
    assert all(title.startswith("[dry run] ") for title in titles.values()), titles
