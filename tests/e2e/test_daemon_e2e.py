"""``guardian run`` end to end: moto EC2 + CloudWatch, mail through aiosmtpd, a JSON webhook.

Second-scale settings (``poll_interval: 2s``, ``idle.grace: 4s``) over a GPU history seeded to
end at the wall clock, so the real scheduler, providers, policy, store and apprise all run.
"""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from guardian.daemon.store import Store
from guardian.simulated.aws import Reading, SimInstance, constant, put_gpu_metrics, seed_fleet
from tests.conftest import MotoServer
from tests.e2e.conftest import GuardianProcess
from tests.e2e.receivers import HttpReceiver, NotifySocket, SmtpReceiver, wait_for

pytestmark = pytest.mark.slow

HISTORY = 120  # minutes of one-minute samples: covers lookback 2h and the 30-minute window


def daemon_config(
    guardian: GuardianProcess, http: HttpReceiver, smtp: SmtpReceiver, grace: str
) -> dict[str, Any]:
    return {
        "mode": "enforce",
        "poll_interval": "2s",
        "state_dir": str(guardian.workdir / "state"),
        "metrics": {"listen": ""},
        "cost": {"lookback": "2h"},
        "limits": {"max_idle_fraction": 0.9},  # 3 of 5 idle at once is this test's design
        "idle": {
            "window": "30m",
            "window_released": "30m",
            "min_uptime": "20m",
            "grace": grace,
            "history_margin": 0,
            "window_bursty": "0s",
        },
        "notify": {
            "urls": [http.url("/guardian"), smtp.url(to="ops@example.com")],
            "owner_mailto": f"mailto://127.0.0.1:{smtp.port}?from=guardian@example.com",
            "owner_email_domain": "example.com",
        },
    }


def seed(moto: MotoServer, fleet: dict[str, SimInstance]) -> dict[str, str]:
    """Launch the fleet with histories ending now; returns name → instance id."""
    launched = seed_fleet(
        moto.client("ec2"), moto.client("cloudwatch"), list(fleet.values()), datetime.now(UTC)
    )
    return {spec.tags["Name"]: instance_id for instance_id, spec in launched}


def state(moto: MotoServer, instance_id: str) -> str:
    reservations = moto.client("ec2").describe_instances(InstanceIds=[instance_id])
    return str(reservations["Reservations"][0]["Instances"][0]["State"]["Name"])


def posts(http: HttpReceiver, prefix: str) -> list[str]:
    return [title for title in http.titles() if title.startswith(prefix)]


def history(guardian: GuardianProcess) -> dict[str, Any]:
    done = guardian.cli("history", "-c", str(guardian.config_path), "--format", "json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_warn_then_stop_with_mail_outage_reload_and_clean_exit(
    moto_server: MotoServer,
    guardian: GuardianProcess,
    http_receiver: HttpReceiver,
    smtp_receiver: SmtpReceiver,
    notify_socket: NotifySocket,
) -> None:
    began = time.monotonic()
    idle_gpu = constant(0.0, 20000.0, HISTORY)
    ids = seed(
        moto_server,
        {
            # g5g.xlarge has EBS only; g5.xlarge has an NVMe instance store, so it is alert-only.
            "idle": SimInstance("g5g.xlarge", idle_gpu, tags={"Name": "idle", "owner": "alice"}),
            "busy": SimInstance(
                "g5g.xlarge", constant(92.0, 20000.0, HISTORY), tags={"Name": "busy"}
            ),
            "kept": SimInstance(
                "g5g.xlarge", idle_gpu, tags={"Name": "kept", "guardian:protect": "true"}
            ),
            "flap": SimInstance("g5g.xlarge", idle_gpu, tags={"Name": "flap"}),
            "ssd": SimInstance("g5.xlarge", idle_gpu, tags={"Name": "ssd"}),
        },
    )
    smtp_receiver.stop()  # mail is down when the warnings go out
    guardian.write_config(daemon_config(guardian, http_receiver, smtp_receiver, grace="4s"))
    guardian.start()

    wait_for(lambda: len(posts(http_receiver, "Idle GPU instance")) == 3, timeout=40)
    # "flap" starts working during its grace period.
    put_gpu_metrics(
        moto_server.client("cloudwatch"),
        ids["flap"],
        1,
        [Reading(95.0, 20000.0)],
        datetime.now(UTC),
        gpu_name="NVIDIA A10G",
    )
    assert smtp_receiver.mails == []
    smtp_receiver.start()

    wait_for(lambda: state(moto_server, ids["idle"]) in ("stopping", "stopped"), timeout=30)
    wait_for(lambda: posts(http_receiver, "Stopped idle GPU instance"), timeout=15)
    wait_for(lambda: posts(http_receiver, "Warning withdrawn"), timeout=15)
    time.sleep(5)  # two more cycles: nothing new may happen

    deadline_titles = {
        title.split(" will be stopped at ")[0]
        for title in posts(http_receiver, "Idle GPU instance")
        if " will be stopped at " in title
    }
    assert deadline_titles == {
        f"Idle GPU instance idle ({ids['idle']})",
        f"Idle GPU instance flap ({ids['flap']})",
    }
    assert f"Idle GPU instance ssd ({ids['ssd']}): stop it yourself" in http_receiver.titles()
    assert posts(http_receiver, "Idle GPU instance ssd") == [
        f"Idle GPU instance ssd ({ids['ssd']}): stop it yourself",
        f"Idle GPU instance ssd ({ids['ssd']}) is past its deadline: not stopped",
    ]
    assert posts(http_receiver, "Stopped") == [f"Stopped idle GPU instance idle ({ids['idle']})"]
    assert posts(http_receiver, "Warning withdrawn") == [
        f"Warning withdrawn: GPU instance flap ({ids['flap']}) is underused"
    ]
    for name in ("busy", "kept", "flap", "ssd"):
        assert state(moto_server, ids[name]) == "running", name

    # The mail queued while SMTP was down arrives once it is back, exactly once each.
    expected = {
        ("ops@example.com", f"Idle GPU instance idle ({ids['idle']})"),
        ("alice@example.com", f"Idle GPU instance idle ({ids['idle']})"),
        ("ops@example.com", f"Idle GPU instance flap ({ids['flap']})"),
        ("ops@example.com", f"Warning withdrawn: GPU instance flap ({ids['flap']})"),
        ("ops@example.com", f"Stopped idle GPU instance idle ({ids['idle']})"),
        ("alice@example.com", f"Stopped idle GPU instance idle ({ids['idle']})"),
        ("ops@example.com", f"Idle GPU instance ssd ({ids['ssd']}): stop it yourself"),
        (
            "ops@example.com",
            f"Idle GPU instance ssd ({ids['ssd']}) is past its deadline: not stopped",
        ),
    }

    def mails() -> list[tuple[str, str]]:
        return sorted(
            (m.recipients[0], m.subject.split(" will be")[0].split(" is underused")[0])
            for m in smtp_receiver.mails
        )

    wait_for(lambda: len(mails()) >= len(expected), timeout=20)
    assert mails() == sorted(expected)
    warning_mail = next(m for m in smtp_receiver.mails if m.recipients == ("alice@example.com",))
    body = warning_mail.text()
    assert "guardian:keep-until=" in body
    assert "guardian:protect=true" in body
    assert "$0.42/h" in body

    # A broken config on SIGHUP is logged and the daemon carries on with the old one.
    guardian.config_path.write_text("mode: [broken")
    guardian.signal(signal.SIGHUP)
    guardian.wait_event("config_reload_failed", timeout=10)
    cycles_before = len(guardian.events("cycle_done"))
    wait_for(lambda: len(guardian.events("cycle_done")) > cycles_before, timeout=10)

    code, exit_s = guardian.stop()
    assert code == 0
    assert exit_s < 10

    guardian.write_config(daemon_config(guardian, http_receiver, smtp_receiver, grace="4s"))
    actions = history(guardian)["actions"]
    stops = [(a["instance_id"], a["phase"], a["outcome"]) for a in actions if a["action"] == "stop"]
    assert stops == [(ids["idle"], "intent", None), (ids["idle"], "outcome", "ok")]
    warned = {a["instance_id"]: a["at"] for a in actions if a["action"] == "warn"}
    assert set(warned) == {ids["idle"], ids["flap"], ids["ssd"]}
    stop_at = datetime.fromisoformat(next(a["at"] for a in actions if a["action"] == "stop"))
    assert stop_at - datetime.fromisoformat(warned[ids["idle"]]) >= timedelta(seconds=4)
    # The whole grace counts from the warning reaching people, not from the audit's start.
    heard = http_receiver.first_received(f"Idle GPU instance idle ({ids['idle']})")
    grace_seen = stop_at.timestamp() - heard
    assert grace_seen >= 3.5
    systemd = notify_socket.drain()
    assert systemd[0].startswith("READY=1")
    assert any(m.startswith("WATCHDOG=1\nSTATUS=5 GPU instances") for m in systemd)
    assert "STOPPING=1" in systemd
    print(
        f"\ne2e warn-then-stop: stopped {grace_seen:.1f} s after the warning arrived, "
        f"SIGTERM exit {exit_s:.2f} s, whole test {time.monotonic() - began:.1f} s"
    )


def test_kill_9_during_the_grace_keeps_the_deadline_and_warns_once(
    moto_server: MotoServer,
    guardian: GuardianProcess,
    http_receiver: HttpReceiver,
    smtp_receiver: SmtpReceiver,
) -> None:
    began = time.monotonic()
    ids = seed(
        moto_server,
        {"lone": SimInstance("g5g.xlarge", constant(0.0, 20000.0, HISTORY), tags={"Name": "lone"})},
    )
    config = daemon_config(guardian, http_receiver, smtp_receiver, grace="12s")
    guardian.write_config(config)
    guardian.start()
    wait_for(lambda: posts(http_receiver, "Idle GPU instance lone"), timeout=40)
    # Kill once both warnings (webhook, mail) are recorded as delivered. Killed between the SMTP
    # server's acceptance and that record, the outbox would send the mail again after the
    # restart: delivery is at least once, and that window is not what this test is about.
    wait_for(lambda: len(guardian.events("notification_delivered", start=1)) >= 2, timeout=20)
    guardian.kill9()

    store = Store.open(f"sqlite:///{guardian.workdir / 'state' / 'state.db'}")
    with store.reader() as tx:
        (episode,) = tx.open_episodes().values()
    store.close()
    assert state(moto_server, ids["lone"]) == "running"

    guardian.start()
    wait_for(lambda: state(moto_server, ids["lone"]) in ("stopping", "stopped"), timeout=40)
    stopped_at = datetime.now(UTC)
    wait_for(lambda: posts(http_receiver, "Stopped idle GPU instance lone"), timeout=15)
    code, exit_s = guardian.stop()

    assert code == 0
    assert stopped_at >= episode.deadline  # the deadline survived the kill
    assert len(posts(http_receiver, "Idle GPU instance lone")) == 1  # no second warning
    assert guardian.events("instance_warned", start=2) == []
    warnings = [m for m in smtp_receiver.mails if m.subject.startswith("Idle GPU instance lone")]
    assert len(warnings) == 1
    actions = history(guardian)["actions"]
    assert [(a["action"], a["phase"]) for a in actions] == [
        ("warn", "event"),
        ("stop", "intent"),
        ("stop", "outcome"),
    ]
    print(
        f"\ne2e kill -9: deadline kept ({episode.deadline:%H:%M:%S}), stopped at "
        f"{stopped_at:%H:%M:%S}, SIGTERM exit {exit_s:.2f} s, whole test "
        f"{time.monotonic() - began:.1f} s"
    )


def test_run_once_audits_alerts_and_exits(
    moto_server: MotoServer,
    guardian: GuardianProcess,
    http_receiver: HttpReceiver,
    smtp_receiver: SmtpReceiver,
) -> None:
    ids = seed(
        moto_server,
        {"once": SimInstance("g5g.xlarge", constant(0.0, 20000.0, HISTORY), tags={"Name": "once"})},
    )
    config = daemon_config(guardian, http_receiver, smtp_receiver, grace="4s")
    guardian.write_config({**config, "mode": "notify"})
    done = guardian.cli("run", "--once", "-c", str(guardian.config_path))
    assert done.returncode == 0, done.stderr
    assert "1 GPU instances, 1 idle ($0.42/h of $0.42/h), 1 warned" in done.stderr
    assert posts(http_receiver, "Idle GPU instance once") == [
        f"Idle GPU instance once ({ids['once']})"
    ]
    assert state(moto_server, ids["once"]) == "running"
