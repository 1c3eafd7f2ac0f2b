"""``guardian history`` over a state database the daemon wrote."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from typer.testing import CliRunner

from guardian.cli import app
from guardian.config import NotifyConfig
from guardian.daemon.messages import Message, t, v
from guardian.daemon.notify import Notifier
from guardian.daemon.store import InstanceRef, Store
from guardian.errors import GuardianError

HOOK = "json://127.0.0.1:9/hooks/s3cr3t-token-value"
REF = InstanceRef("aws:123456789012:i-1", "aws", "123456789012", "us-east-1", "i-1", "trainer")
OTHER = InstanceRef("aws:123456789012:i-2", "aws", "123456789012", "us-east-1", "i-2", None)


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "guardian.yaml"
    path.write_text(
        yaml.safe_dump({"state_dir": str(tmp_path / "state"), "notify": {"urls": [HOOK]}})
    )
    return path


def seed(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'state' / 'state.db'}")
    now = datetime.now(UTC)
    notifier = Notifier(NotifyConfig(urls=[HOOK]), store, backoff_base=timedelta(seconds=1))
    message = Message("warning", "warning", (t("Idle "), v("trainer")), ((t("body"),),))
    with store.transaction() as tx:
        tx.record_action(
            at=now - timedelta(days=10), cycle_id="old", ref=REF, action="warn", phase="event"
        )
        tx.record_action(at=now, cycle_id="c1", ref=REF, action="warn", phase="event")
        intent = tx.record_action(at=now, cycle_id="c1", ref=REF, action="stop", phase="intent")
        tx.record_action(
            at=now,
            cycle_id="c1",
            ref=REF,
            action="stop",
            phase="outcome",
            outcome="ok",
            intent_id=intent,
            reason="instance is stopping",
        )
        tx.record_action(at=now, cycle_id="c1", ref=OTHER, action="warn", phase="event")
        notifier.enqueue(tx, message, at=now, dedupe_key="warn:1", instance_key=REF.instance_key)
        (row,) = tx.due_notifications(now)
        tx.mark_failed(row.id, "HTTP 503", now + timedelta(minutes=1))
    store.close()


def test_history_json_lists_actions_and_notifications(tmp_path: Path) -> None:
    seed(tmp_path)
    result = CliRunner().invoke(
        app, ["history", "-c", str(write_config(tmp_path)), "--since", "7d", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [(a["instance_id"], a["action"], a["phase"]) for a in document["actions"]] == [
        ("i-1", "warn", "event"),
        ("i-1", "stop", "intent"),
        ("i-1", "stop", "outcome"),
        ("i-2", "warn", "event"),
    ]
    assert document["actions"][2]["reason"] == "instance is stopping"
    (note,) = document["notifications"]
    assert note["title"] == "Idle trainer"
    assert note["status"] == "failing"
    assert (note["attempts"], note["last_error"]) == (1, "HTTP 503")
    assert note["channel"] == "json://127.0.0.1:9/***"  # the channel, never its secret
    assert "s3cr3t" not in result.stdout


def test_history_table_filters_by_instance(tmp_path: Path) -> None:
    seed(tmp_path)
    result = CliRunner().invoke(
        app, ["history", "-c", str(write_config(tmp_path)), "--instance", "i-2"]
    )
    assert result.exit_code == 0, result.output
    assert "Actions (1)" in result.stdout
    assert "Notifications (0)" in result.stdout
    assert "i-2" in result.stdout


def test_history_without_a_database_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["history", "-c", str(write_config(tmp_path))])
    assert isinstance(result.exception, GuardianError)
    assert "no state database" in str(result.exception)
    bad = CliRunner().invoke(app, ["history", "-c", str(write_config(tmp_path)), "--since", "x"])
    assert isinstance(bad.exception, GuardianError)
    assert "--since" in str(bad.exception)
