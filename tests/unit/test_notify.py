"""Alerts: escaping per channel, the outbox delivered by apprise to local servers, the digest."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import apprise
import pytest
from structlog.testing import capture_logs

from guardian.config import Config, NotifyConfig
from guardian.cycle import audit_cycle
from guardian.daemon.messages import Message, Style, b, neutralize, render, t, v, warning_message
from guardian.daemon.notify import Notifier, digest_summary, owner_address, validate_notify_urls
from guardian.daemon.store import InstanceRef, Store
from guardian.errors import ConfigError
from guardian.model import Finding, Lifecycle
from tests.e2e.receivers import HttpReceiver, SmtpReceiver, wait_for
from tests.fake_provider import CATALOG, NOW, FakeProvider, flat_samples, make_instance

HOSTILE = "<!here> @channel <@U123> @everyone <b>x</b> [click](http://evil) <script>\n\u202e!"
FORBIDDEN = ("<!here>", "@channel", "@everyone", "<@U123>", "<b>x</b>", "<script>", "\u202e")


def idle_finding(**changes: Any) -> Finding:
    instance = make_instance("i-0abc", **changes)
    provider = FakeProvider([instance], {instance.key: flat_samples(0.0, 120, mem_mib=10.0)})
    return audit_cycle(Config(), [provider], CATALOG, NOW).findings[0]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(f"sqlite:///{tmp_path / 'state.db'}")


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    receiver = SmtpReceiver()
    yield receiver
    receiver.stop()


def notifier(store: Store, urls: list[str], **kwargs: Any) -> Notifier:
    config = NotifyConfig(urls=urls, **kwargs)
    return Notifier(config, store, backoff_base=timedelta(seconds=10))


def queue(store: Store, notifier: Notifier, message: Message, key: str, **kw: Any) -> int:
    with store.transaction() as tx:
        return notifier.enqueue(tx, message, at=NOW, dedupe_key=key, **kw)


SIMPLE = Message("warning", "warning", (t("Idle "), v("trainer")), ((b("Cost: "), t("$1/h")),))


# -- escaping --------------------------------------------------------------------------------


def test_neutralize_breaks_mentions_tags_and_lines() -> None:
    text = neutralize(HOSTILE)
    for bad in FORBIDDEN:
        assert bad not in text
    assert "\n" not in text
    assert "@\u200beveryone" in text  # still readable, no longer a mention
    assert len(neutralize("x" * 1000)) == 200


@pytest.mark.parametrize("style", ["text", "markdown", "teams", "slack", "html"])
def test_a_hostile_tag_renders_inert_in_every_style(style: Style) -> None:
    finding = idle_finding(name=HOSTILE, owner=HOSTILE, tags={"owner": HOSTILE})
    message = warning_message(
        finding,
        now=NOW,
        deadline=NOW + timedelta(minutes=15),
        will_stop=True,
        dry_run=False,
        alert_only_reason=None,
        instance_store_loss=False,
    )
    title, body = render(message, style)
    for bad in FORBIDDEN:
        assert bad not in title
        assert bad not in body
    if style == "slack":
        assert "*Instance:* " in body  # emphasis hugs the text, or Slack shows the stars
    if style in ("markdown", "teams"):
        assert "**Instance:** " in body
        assert "[click](http://evil)" not in body
        assert r"\[click\]\(http://evil\)" in body
    if style == "html":
        assert "<script" not in body
        assert "<b>Instance:</b> " in body  # our own markup survives


def _capture_send(plugin: Any) -> list[Any]:
    """Keep what the apprise plugin would POST: Slack and Discord have no local server."""
    sent: list[Any] = []

    def fake_send(*args: Any, **_kwargs: Any) -> dict[str, str]:
        sent.append(args[-1] if args else None)
        return {"ok": "true", "channel": "C1"}

    plugin._send = fake_send
    return sent


def test_apprise_slack_does_not_revive_mentions_from_a_tag() -> None:
    # apprise turns "<!here>" and "&lt;!here&gt;" in a Slack body back into real mentions;
    # the look-alike brackets keep a tag value from ever matching that.
    finding = idle_finding(name=HOSTILE)
    plugin = apprise.Apprise.instantiate("slack://T1ABCDEFG/B1ABCDEFG/abcdefghijklmnopqrstuvwx")
    assert plugin is not None
    sent = _capture_send(plugin)
    title, body = render(
        warning_message(
            finding,
            now=NOW,
            deadline=NOW + timedelta(minutes=15),
            will_stop=False,
            dry_run=False,
            alert_only_reason=None,
            instance_store_loss=False,
        ),
        "slack",
    )
    sender = apprise.Apprise()
    sender.add(plugin)
    assert sender.notify(body=body, title=title, body_format=apprise.NotifyFormat.MARKDOWN)
    payload = repr(sent)
    assert sent
    assert "<!here" not in payload
    assert "<@U123" not in payload
    assert "@channel" not in payload
    assert "<http://evil" not in payload


def test_apprise_discord_sends_no_ping_for_a_tag() -> None:
    finding = idle_finding(name=HOSTILE)
    plugin = apprise.Apprise.instantiate("discord://123456789/abcdefghijklmnop")
    assert plugin is not None
    sent = _capture_send(plugin)
    _title, body = render(
        Message("warning", "warning", (t("x"),), ((v(finding.instance.name),),)), "markdown"
    )
    sender = apprise.Apprise()
    sender.add(plugin)
    assert sender.notify(body=body, title="t")
    payload = sent[0]
    assert "@everyone" not in repr(payload)
    assert not payload.get("allowed_mentions", {}).get("parse")


def test_message_json_round_trip() -> None:
    assert Message.from_json(SIMPLE.as_json()) == SIMPLE


@pytest.mark.parametrize(
    ("owner", "domain", "expected"),
    [
        ("alice@example.com", "", "alice@example.com"),
        ("alice", "example.com", "alice@example.com"),
        ("alice", "", None),
        ("Alice Smith", "example.com", None),
        ("a@b", "", None),
        ("x@example.com\nBcc: y@evil.com", "", None),
        (None, "example.com", None),
    ],
)
def test_owner_address(owner: str | None, domain: str, expected: str | None) -> None:
    assert owner_address(owner, domain) == expected


def test_invalid_channel_urls_are_config_errors_without_the_secret() -> None:
    with pytest.raises(ConfigError, match=r"notify\.urls\[1\]") as caught:
        validate_notify_urls(NotifyConfig(urls=["json://127.0.0.1/x", "nosuch://tok3n-secret"]))
    assert "tok3n-secret" not in str(caught.value)
    with pytest.raises(ConfigError, match="owner_mailto"):
        validate_notify_urls(NotifyConfig(owner_mailto="json://127.0.0.1/x"))


# -- delivery --------------------------------------------------------------------------------


def test_delivered_once_over_json(store: Store, http: HttpReceiver) -> None:
    sender = notifier(store, [http.url()])
    assert queue(store, sender, SIMPLE, "warn:1") == 1
    assert queue(store, sender, SIMPLE, "warn:1") == 0  # the same message is queued once
    assert sender.flush(NOW).delivered == 1
    assert sender.flush(NOW + timedelta(hours=1)).delivered == 0
    assert http.titles() == ["Idle trainer"]
    payload = http.posts[0][1]
    assert payload["type"] == "warning"
    assert "Cost: $1/h" in payload["message"]


def test_a_failing_channel_is_retried_with_backoff_and_counted(
    store: Store, http: HttpReceiver
) -> None:
    failures: list[str] = []
    sender = Notifier(
        NotifyConfig(urls=[http.url()]),
        store,
        backoff_base=timedelta(seconds=10),
        on_failure=failures.append,
    )
    queue(store, sender, SIMPLE, "warn:1")
    queue(store, sender, SIMPLE, "warn:2")
    http.failing = True
    with capture_logs() as logs:
        first = sender.flush(NOW)
    # The broken channel is tried once per flush, not once per queued row.
    assert (first.failed, first.pending, http.attempts) == (1, 2, 1)
    assert failures == ["json"]
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["notification_failed"]
    assert sender.flush(NOW + timedelta(seconds=5)).failed == 0  # not due before the backoff
    second = sender.flush(NOW + timedelta(seconds=10))
    assert second.failed == 1
    with store.reader() as tx:
        rows = tx.notifications_since(NOW - timedelta(days=1))
    assert rows[0].attempts == 2
    assert rows[0].next_attempt_at == NOW + timedelta(seconds=10 + 20)  # doubled
    http.failing = False
    later = sender.flush(NOW + timedelta(minutes=5))
    assert (later.delivered, later.pending) == (2, 0)
    assert len(http.posts) == 2


def test_repeated_failure_is_logged_as_an_error(store: Store, http: HttpReceiver) -> None:
    sender = notifier(store, [http.url()])
    queue(store, sender, SIMPLE, "warn:1")
    http.failing = True
    with capture_logs() as logs:
        for hour in range(5):
            sender.flush(NOW + timedelta(hours=hour))
    levels = [e["log_level"] for e in logs if e["event"] == "notification_failed"]
    assert levels == ["warning"] * 4 + ["error"]


def test_mail_to_channel_and_owner_survives_an_smtp_outage(
    store: Store, http: HttpReceiver, smtp: SmtpReceiver
) -> None:
    sender = notifier(
        store,
        [http.url(), smtp.url(to="ops@example.com")],
        owner_mailto=f"mailto://127.0.0.1:{smtp.port}?from=guardian@example.com",
        owner_email_domain="example.com",
    )
    assert queue(store, sender, SIMPLE, "warn:1", owner="alice") == 3
    smtp.stop()
    down = sender.flush(NOW)
    assert (down.delivered, down.failed, down.pending) == (1, 2, 2)  # the webhook went out
    smtp.start()
    up = sender.flush(NOW + timedelta(minutes=1))
    assert (up.delivered, up.pending) == (2, 0)
    wait_for(lambda: len(smtp.mails) == 2, timeout=5)
    assert sorted(m.recipients for m in smtp.mails) == [
        ("alice@example.com",),
        ("ops@example.com",),
    ]
    assert {m.subject for m in smtp.mails} == {"Idle trainer"}
    assert len(http.posts) == 1


def test_dry_run_notifier_leaves_owners_out(store: Store, smtp: SmtpReceiver) -> None:
    config = NotifyConfig(
        urls=[smtp.url()], owner_mailto=smtp.url(to="x@example.com"), owner_email_domain="e.com"
    )
    sender = Notifier(config, store, backoff_base=timedelta(seconds=1), owners=False)
    assert sender.targets("alice") == sender.targets(None)
    assert len(sender.targets("alice")) == 1


def test_a_removed_channel_is_dropped_loudly(store: Store, http: HttpReceiver) -> None:
    queue(store, notifier(store, [http.url("/old")]), SIMPLE, "warn:1")
    with capture_logs() as logs:
        result = notifier(store, [http.url("/new")]).flush(NOW)
    assert (result.dropped, result.pending) == (1, 0)
    assert [e["event"] for e in logs] == ["notification_dropped"]
    with store.reader() as tx:
        (row,) = tx.notifications_since(NOW - timedelta(days=1))
    assert row.last_error == "channel no longer configured"


# -- the digest ------------------------------------------------------------------------------


def test_digest_sums_the_last_day(store: Store) -> None:
    idle = idle_finding()
    busy_instance = make_instance("i-busy", name="serving", lifecycle=Lifecycle.ON_DEMAND)
    busy = audit_cycle(
        Config(),
        [FakeProvider([busy_instance], {busy_instance.key: flat_samples(90.0, 120)})],
        CATALOG,
        NOW,
    ).findings[0]
    poll = timedelta(minutes=5)
    with store.transaction() as tx:
        for step in range(12):  # an hour of 5-minute cycles
            tx.record_cycle(
                cycle_id=f"c{step}",
                started_at=NOW - timedelta(hours=1) + step * poll,
                duration_s=1.0,
                findings=[idle, busy],
                errors=0,
                hourly_burn_usd=2.012,
                idle_burn_usd_per_hour=1.006,
            )
        ref = InstanceRef.of(idle.instance)
        tx.record_action(at=NOW, cycle_id="c", ref=ref, action="warn", phase="event")
        intent = tx.record_action(at=NOW, cycle_id="c", ref=ref, action="stop", phase="intent")
        tx.record_action(
            at=NOW,
            cycle_id="c",
            ref=ref,
            action="stop",
            phase="outcome",
            outcome="ok",
            intent_id=intent,
        )
        summary = digest_summary(tx, NOW, poll)
    assert summary.instances == 2
    assert summary.hourly_burn_usd == 2.01
    assert summary.idle_burn_usd_per_hour == 1.01
    assert summary.spent_usd == pytest.approx(2.01, abs=0.01)  # 2 × $1.006 for an hour
    assert summary.idle_spent_usd == pytest.approx(1.01, abs=0.01)
    assert summary.top_wasters == (("i-0abc", "name-i-0abc", None, 1.01),)
    assert summary.actions == {"warn": 1, "stop": 1}
    from guardian.daemon.messages import digest_message

    title, body = render(digest_message(summary), "text")
    assert re.search(r"\$2\.01/h burning, \$1\.01/h idle", title)
    assert "1. name-i-0abc (i-0abc) — $1.01" in body
    assert "stop 1, warn 1" in body


def test_gcloud_commands_name_the_project_and_zone() -> None:
    # A user's gcloud default project is rarely the VM's: `start` lacked --project (issue 12).
    from guardian.daemon.messages import stopped_message

    finding = idle_finding(
        provider="gcp", account="ml-prod", region="us-central1", zone="us-central1-a", name="vm-7"
    )
    target = "vm-7 --project ml-prod --zone us-central1-a"
    _, stopped = render(stopped_message(finding, action="stop", dry_run=False), "text")
    assert f"gcloud compute instances start {target}" in stopped
    warned = warning_message(
        finding,
        now=NOW,
        deadline=NOW + timedelta(minutes=15),
        will_stop=True,
        dry_run=False,
        alert_only_reason=None,
        instance_store_loss=False,
    )
    assert f"gcloud compute instances add-labels {target} --labels=" in render(warned, "text")[1]


def test_every_message_of_a_dry_run_says_so() -> None:
    from guardian.daemon.messages import not_stopped_message, resumed_message, stopped_message

    finding = idle_finding()
    for message in (
        not_stopped_message(finding, "it is a one-time spot instance", dry_run=True),
        resumed_message(finding, dry_run=True),
        stopped_message(finding, action="stop", dry_run=True),
    ):
        assert message.plain_title().startswith("[dry run] "), message.plain_title()
    assert not not_stopped_message(finding, "x").plain_title().startswith("[dry run]")
