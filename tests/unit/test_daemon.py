"""The daemon loop over FakeProviders: scheduling, signals, reload, systemd notify, metrics."""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from structlog.testing import capture_logs

from guardian.config import Config
from guardian.daemon import sdnotify
from guardian.daemon.metrics_server import parse_listen
from guardian.daemon.service import Daemon
from guardian.errors import ConfigError
from tests.e2e.receivers import HttpReceiver, NotifySocket, free_port, wait_for
from tests.fake_provider import CATALOG, FakeProvider, flat_samples, make_instance


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    yield listener
    listener.close()


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    yield receiver
    receiver.close()


class Fleet:
    """A FakeProvider whose GPU history always ends at the wall clock, as a live cloud's."""

    def __init__(self) -> None:
        self.idle = make_instance("i-idle", launch_time=datetime.now(UTC) - timedelta(days=1))
        self.busy = make_instance("i-busy", launch_time=datetime.now(UTC) - timedelta(days=1))
        self.provider = FakeProvider([self.idle, self.busy])
        self.built = 0

    def __call__(self, _config: Config) -> list[FakeProvider]:
        self.built += 1
        return [self.provider]

    def refresh(self) -> None:
        now = datetime.now(UTC)
        self.provider.samples = {
            self.idle.key: flat_samples(0.0, 120, end=now),
            self.busy.key: flat_samples(95.0, 120, end=now),
        }


def make_config(tmp_path: Path, **changes: Any) -> Config:
    data: dict[str, Any] = {
        "mode": "notify",
        "poll_interval": "1s",
        "state_dir": str(tmp_path / "state"),
        "metrics": {"listen": ""},
        "idle": {"window": "30m", "history_margin": 0, "window_bursty": "0s"},
    }
    data.update(changes)
    return Config.model_validate(data)


def daemon_for(tmp_path: Path, fleet: Fleet, **changes: Any) -> Daemon:
    def clock() -> datetime:
        fleet.refresh()
        return datetime.now(UTC)

    return Daemon(
        make_config(tmp_path, **changes),
        providers=fleet,
        catalog=lambda _state_dir: CATALOG,
        clock=clock,
    )


def sample(daemon: Daemon, name: str, **labels: str) -> float | None:
    return daemon.metrics.registry.get_sample_value(name, labels)


def test_a_cycle_records_alerts_counts_and_reports_to_systemd(
    tmp_path: Path, notify_socket: NotifySocket, http: HttpReceiver
) -> None:
    fleet = Fleet()
    daemon = daemon_for(tmp_path, fleet, notify={"urls": [http.url()]})
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        report = daemon.run_cycle()
    assert report is not None
    assert report.enforcement.warned == 1
    assert report.status_line().startswith("2 GPU instances, 1 idle ($1.01/h of $2.01/h)")
    assert http.titles() == ["Idle GPU instance name-i-idle (i-idle)"]  # flushed in the cycle
    assert notify_socket.drain() == [f"WATCHDOG=1\nSTATUS={report.status_line()}"]
    cycle_events = [e for e in logs if e.get("cycle_id") == report.cycle_id]
    assert {"instance_warned", "cycle_done"} <= {e["event"] for e in cycle_events}
    assert sample(daemon, "guardian_instances", provider="aws", verdict="idle") == 1.0
    assert sample(daemon, "guardian_instances", provider="aws", verdict="busy") == 1.0
    assert sample(daemon, "guardian_idle_usd_per_hour") == pytest.approx(1.006)
    assert sample(daemon, "guardian_warnings_total") == 1.0
    assert sample(daemon, "guardian_cycle_duration_seconds_count") == 1.0
    with daemon.store.reader() as tx:
        observed = tx.observations_since(datetime.now(UTC) - timedelta(minutes=1))
    assert sorted(o.verdict for o in observed) == ["busy", "idle"]
    daemon.close()


def test_a_failing_cycle_is_logged_counted_and_not_a_watchdog_ping(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    fleet = Fleet()
    daemon = daemon_for(tmp_path, fleet)

    def broken() -> Any:
        raise RuntimeError("catalog exploded")

    daemon._catalog_loader = lambda _path: broken()
    with capture_logs() as logs:
        assert daemon.run_cycle() is None
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["cycle_failed"]
    assert sample(daemon, "guardian_cycle_failures_total") == 1.0
    assert notify_socket.drain() == ["STATUS=last cycle failed; see the log"]
    daemon.close()


def test_run_schedules_cycles_and_stops_cleanly(
    tmp_path: Path, notify_socket: NotifySocket, http: HttpReceiver
) -> None:
    fleet = Fleet()
    daemon = daemon_for(tmp_path, fleet, notify={"urls": [http.url()]})
    exit_codes: list[int] = []
    thread = threading.Thread(target=lambda: exit_codes.append(daemon.run()))
    thread.start()
    try:
        wait_for(lambda: sample(daemon, "guardian_cycle_duration_seconds_count") == 3, 10)
    finally:
        daemon.request_shutdown()
        thread.join(timeout=10)
    assert exit_codes == [0]
    messages = notify_socket.drain()
    assert messages[0] == "READY=1\nSTATUS=started, mode notify"
    assert "STOPPING=1" in messages
    assert len(http.posts) == 1  # one warning for the episode, not one per cycle
    cycles = sample(daemon, "guardian_cycle_duration_seconds_count")
    assert daemon.run_cycle() is None  # stopped: no cycle runs any more
    assert sample(daemon, "guardian_cycle_duration_seconds_count") == cycles


def test_sighup_reload_keeps_the_old_config_when_the_new_one_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "guardian.yaml"
    base = {
        "mode": "notify",
        "poll_interval": "1s",
        "state_dir": str(tmp_path / "state"),
        "metrics": {"listen": ""},
    }
    path.write_text(yaml.safe_dump(base))
    fleet = Fleet()
    daemon = Daemon(
        Config.model_validate(base),
        config_path=path,
        providers=fleet,
        catalog=lambda _p: CATALOG,
    )
    path.write_text("mode: [not, a, mode")
    with capture_logs() as logs:
        assert daemon.reload() is False
    assert [e["event"] for e in logs] == ["config_reload_failed"]
    assert daemon.config.mode.value == "notify"
    path.write_text(yaml.safe_dump({**base, "mode": "audit", "notify": {"digest": "not cron"}}))
    assert daemon.reload() is False  # a bad cron is caught before anything is swapped
    path.write_text(yaml.safe_dump({**base, "mode": "enforce", "dry_run": True}))
    assert daemon.reload() is True
    assert (daemon.config.mode.value, daemon.config.dry_run) == ("enforce", True)
    assert fleet.built == 2  # providers rebuilt for the new config
    daemon.close()


def test_digest_goes_to_the_channels(tmp_path: Path, http: HttpReceiver) -> None:
    fleet = Fleet()
    daemon = daemon_for(tmp_path, fleet, notify={"urls": [http.url()]})
    daemon.run_cycle()
    daemon.send_digest()
    daemon.send_digest()  # the same day's digest is sent once
    digests = [title for title in http.titles() if title.startswith("GPU digest")]
    assert len(digests) == 1
    assert "$2.01/h burning, $1.01/h idle" in digests[0]
    daemon.close()


def test_metrics_endpoint_serves_its_own_registry(tmp_path: Path) -> None:
    fleet = Fleet()
    port = free_port()
    daemon = daemon_for(tmp_path, fleet, metrics={"listen": f"127.0.0.1:{port}"})
    daemon._endpoint.start()
    daemon.run_cycle()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        daemon.close()
    assert 'guardian_instances{provider="aws",verdict="idle"} 1.0' in text
    assert "guardian_cycle_duration_seconds_bucket" in text
    assert "python_gc_objects_collected_total" not in text  # not the global registry


def test_heartbeat_pings_only_while_cycles_stay_healthy(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    daemon = daemon_for(tmp_path, Fleet())
    daemon.heartbeat()
    daemon._last_healthy -= 3600  # no healthy cycle for an hour: let the watchdog fire
    daemon.heartbeat()
    assert notify_socket.drain() == ["WATCHDOG=1"]
    daemon.close()


def test_bad_digest_cron_and_listen_address_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"notify\.digest"):
        daemon_for(tmp_path, Fleet(), notify={"digest": "every morning"})
    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        parse_listen("localhost")
    assert parse_listen("") is None
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    assert parse_listen(":9464") == ("0.0.0.0", 9464)


def test_sdnotify_outside_systemd_and_with_an_abstract_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    name = f"guardian-test-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name)
    listener.settimeout(1)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    assert sdnotify.notify("STATUS=two\nlines") is True
    assert listener.recv(100) == b"STATUS=two lines"
    listener.close()
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_period() == timedelta(seconds=30)
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert sdnotify.watchdog_period() is None


def test_weekly_price_refresh_calls_the_refresher_and_survives_its_failure(
    tmp_path: Path, moto_server: Any
) -> None:
    # moto has no Pricing API: the refresh reaches it, fails per region, and is only logged.
    daemon = daemon_for(tmp_path, Fleet(), prices={"refresh_weekly": True})
    with capture_logs() as logs:
        daemon.refresh_prices()
    daemon.close()
    (report,) = [e for e in logs if e["event"] == "prices_refreshed"]
    assert (report["provider"], report["failures"]) == ("aws", 1)


def test_the_digest_lists_the_largest_right_sizing_savings(
    tmp_path: Path, http: HttpReceiver
) -> None:
    fleet = Fleet()
    notebook = make_instance("i-notebook", launch_time=datetime.now(UTC) - timedelta(days=1))
    fleet.provider.instances.append(notebook)
    refresh = fleet.refresh

    def with_notebook() -> None:
        refresh()
        fleet.provider.samples[notebook.key] = flat_samples(8.0, 120, end=datetime.now(UTC))

    fleet.refresh = with_notebook  # type: ignore[method-assign]
    daemon = daemon_for(tmp_path, fleet, notify={"urls": [http.url()]})
    daemon.run_cycle()
    daemon.send_digest()
    (digest,) = [p for _, p in http.posts if str(p.get("title", "")).startswith("GPU digest")]
    body = str(digest.get("message", ""))
    assert "Right-sizing (advice, top 1: $587.21/month):" in body
    assert "1. name-i-notebook (i-notebook) g5.xlarge → CPU m7i.xlarge saves $587.21/month" in body
    daemon.close()


@pytest.mark.parametrize(("mode", "urls", "warned"), [("notify", [], True), ("audit", [], False)])
def test_alerts_with_nowhere_to_go_are_said_at_start(
    tmp_path: Path, mode: str, urls: list[str], warned: bool
) -> None:
    with capture_logs() as logs:
        daemon = daemon_for(tmp_path, Fleet(), mode=mode, notify={"urls": urls})
    daemon.close()
    assert ("alerts_go_nowhere" in [e["event"] for e in logs]) is warned


def test_alerts_with_a_channel_raise_no_warning(tmp_path: Path, http: HttpReceiver) -> None:
    with capture_logs() as logs:
        daemon = daemon_for(tmp_path, Fleet(), notify={"urls": [http.url()]})
    daemon.close()
    assert "alerts_go_nowhere" not in [e["event"] for e in logs]
