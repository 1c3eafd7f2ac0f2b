"""Alerts through apprise, via a durable outbox: queue in the cycle's transaction, deliver after.

Each message gets one outbox row per channel (``notify.urls``) and, for instance alerts, one for
the instance's owner (``notify.owner_mailto`` + the owner tag). A row is delivered, or retried
with exponential backoff, or — only when its channel was removed from the config — dropped
with the reason logged and kept. Nothing is silently lost; repeated failure is logged at error
level and counted. Rows hold a channel digest (``url:<sha256>``), never the secret URL itself.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog

from guardian.config import NotifyConfig, mask_secret_url
from guardian.daemon.messages import DigestSummary, Message, Style, render
from guardian.daemon.store import Store, Tx
from guardian.errors import ConfigError

if TYPE_CHECKING:
    from apprise import NotifyBase, NotifyFormat

__all__ = [
    "FlushResult",
    "Notifier",
    "channel_label",
    "digest_summary",
    "owner_address",
    "validate_notify_urls",
]

log = structlog.get_logger(__name__)

_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+$")
_LOCAL_PART = re.compile(r"^[A-Za-z0-9._%+-]{1,64}$")
_LOUD_AFTER = (5, 10, 20, 50, 100, 200, 500, 1000)  # failed attempts that are logged as errors
BACKOFF_CAP = timedelta(minutes=30)
# A row taken for delivery by one replica; if that replica dies mid-delivery, it is due again
# after this long (delivery is at least once, as after a kill -9 of a lone daemon).
DELIVERY_HOLD = timedelta(minutes=2)

FailureHook = Callable[[str], None]  # called with the channel's scheme on each failed attempt


def owner_address(owner: str | None, domain: str) -> str | None:
    """The owner tag as a mail address: itself if it is one, else ``owner@domain`` if set."""
    if not owner:
        return None
    owner = owner.strip()
    if "@" in owner:
        return owner if _EMAIL.match(owner) else None
    if domain and _LOCAL_PART.match(owner):
        address = f"{owner}@{domain.strip().lstrip('@')}"
        return address if _EMAIL.match(address) else None
    return None


def _with_recipient(mailto_url: str, address: str) -> str:
    parts = urlsplit(mailto_url)
    query = [(k, val) for k, val in parse_qsl(parts.query, keep_blank_values=True) if k != "to"]
    query.append(("to", address))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _digest(url: str) -> str:
    return "url:" + hashlib.sha256(url.encode("utf-8")).hexdigest()[:20]


def channel_label(target: str, config: NotifyConfig) -> str:
    """An outbox target for people: the masked URL of a channel, or the owner's address."""
    if target.startswith("owner:"):
        return f"owner {target.removeprefix('owner:')}"
    for url in config.urls:
        if _digest(url) == target:
            return mask_secret_url(url)
    return f"{target} (no longer configured)"


def _instantiate(url: str) -> NotifyBase | None:
    import apprise

    return apprise.Apprise.instantiate(url)


def validate_notify_urls(config: NotifyConfig) -> None:
    """Every ``notify.urls`` entry and ``owner_mailto`` must be a URL apprise understands."""
    for index, url in enumerate(config.urls):
        if _instantiate(url) is None:
            scheme = urlsplit(url).scheme or "(no scheme)"
            raise ConfigError(
                f"notify.urls[{index}]: not a valid apprise URL (scheme {scheme}; see "
                "https://github.com/caronc/apprise/wiki for the URL of each service)"
            )
    if config.owner_mailto:
        probe = _with_recipient(config.owner_mailto, "owner@example.com")
        if not urlsplit(config.owner_mailto).scheme.startswith("mailto") or not _instantiate(probe):
            raise ConfigError("notify.owner_mailto: must be an apprise mailto:// or mailtos:// URL")


def _style(plugin: NotifyBase) -> tuple[Style, NotifyFormat]:
    """The markup a channel speaks, and the apprise body format that avoids any conversion."""
    from apprise import NotifyFormat

    names: set[str] = set()
    for attr in ("protocol", "secure_protocol"):
        value = getattr(plugin, attr, None)
        names.update([value] if isinstance(value, str) else list(value or ()))
    fmt = getattr(plugin, "notify_format", NotifyFormat.TEXT)
    if "slack" in names:
        return "slack", NotifyFormat.MARKDOWN
    if names & {"msteams", "workflow", "workflows"}:  # Teams (Power Automate workflows)
        return "teams", NotifyFormat.MARKDOWN
    if "discord" in names:
        # apprise sends Discord plain text, but Discord renders Markdown in it anyway.
        return "markdown", NotifyFormat.TEXT
    if fmt == NotifyFormat.MARKDOWN:
        return "markdown", NotifyFormat.MARKDOWN
    if fmt == NotifyFormat.HTML:
        return "html", NotifyFormat.HTML
    return "text", NotifyFormat.TEXT


@dataclass(frozen=True)
class FlushResult:
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    pending: int = 0


class Notifier:
    """Queues messages in the outbox and delivers what is due. One flush at a time."""

    def __init__(
        self,
        config: NotifyConfig,
        store: Store,
        *,
        backoff_base: timedelta,
        owners: bool = True,
        on_failure: FailureHook | None = None,
    ) -> None:
        self._urls = {_digest(url): url for url in config.urls}
        self._owner_mailto = config.owner_mailto if owners else ""
        self._owner_domain = config.owner_email_domain
        self._store = store
        self._base = backoff_base
        self._on_failure = on_failure
        self._lock = threading.Lock()

    # -- queueing, inside the caller's transaction ------------------------------------------
    def targets(self, owner: str | None = None) -> list[str]:
        targets = list(self._urls)
        address = owner_address(owner, self._owner_domain) if self._owner_mailto else None
        if address:
            targets.append(f"owner:{address}")
        return targets

    def enqueue(
        self,
        tx: Tx,
        message: Message,
        *,
        at: datetime,
        dedupe_key: str,
        owner: str | None = None,
        instance_key: str | None = None,
    ) -> int:
        """Queue ``message`` for every channel (and the owner); logged even with no channel."""
        targets = self.targets(owner)
        queued = tx.enqueue(
            at=at,
            kind=message.kind,
            dedupe_key=dedupe_key,
            targets=targets,
            message=message.as_json(),
            instance_key=instance_key,
        )
        log.info(
            "alert",
            kind=message.kind,
            title=message.plain_title(),
            channels=len(targets),
            queued=queued,
        )
        return queued

    # -- delivery ----------------------------------------------------------------------------
    def _resolve(self, target: str) -> str | None:
        if target.startswith("owner:"):
            if not self._owner_mailto:
                return None
            return _with_recipient(self._owner_mailto, target.removeprefix("owner:"))
        return self._urls.get(target)

    def _send(self, url: str, message: Message) -> str | None:
        """Deliver once; None on success, else the reason apprise logged."""
        import apprise

        # A fresh plugin per delivery: apprise spaces the requests of one plugin object 5.5 s
        # apart by default, which would stall a flush of several messages. A channel's real
        # rate limit answers 429, a failure retried with backoff like any other.
        plugin = _instantiate(url)
        if plugin is None:
            return "not a valid apprise URL"
        style, body_format = _style(plugin)
        title, body = render(message, style)
        sender = apprise.Apprise()
        sender.add(plugin)
        with apprise.LogCapture(level=apprise.logging.WARNING) as captured:  # type: ignore[no-untyped-call]
            ok = sender.notify(
                body=body, title=title, body_format=body_format, notify_type=message.severity
            )
        if ok:
            return None
        lines = [line for line in captured.getvalue().splitlines() if line.strip()]
        return lines[-1].split(" - ", 2)[-1] if lines else "delivery failed"

    def send_now(self, message: Message) -> int:
        """Deliver to every channel at once, bypassing the outbox; returns how many took it.

        Only for alerts about the state database itself: while it refuses writes nothing can
        be queued, and that is exactly when the team must hear of it. Not retried, not
        recorded, never to owners.
        """
        delivered = 0
        for url in self._urls.values():
            error = self._send(url, message)
            if error is None:
                delivered += 1
            else:
                log.warning("direct_alert_failed", target=mask_secret_url(url), error=error)
        return delivered

    def _retry_at(self, now: datetime, attempts_before: int) -> datetime:
        delay = self._base * (1 << min(attempts_before, 20))
        return now + min(delay, max(BACKOFF_CAP, self._base))

    def flush(self, now: datetime) -> FlushResult:
        """Try every due row once; a channel that fails waits out its backoff, all its rows."""
        delivered = failed = dropped = 0
        with self._lock:
            if self._store.is_postgres:
                # Several replicas flush one outbox: each takes the rows it delivers.
                with self._store.transaction() as tx:
                    due = tx.claim_due_notifications(now, now + DELIVERY_HOLD)
            else:
                with self._store.reader() as tx:
                    due = tx.due_notifications(now)
            broken: set[str] = set()
            for row in due:
                if row.target in broken:
                    continue
                url = self._resolve(row.target)
                channel = mask_secret_url(url) if url else row.target
                if url is None:
                    with self._store.transaction() as tx:
                        tx.mark_dropped(row.id, now, "channel no longer configured")
                    log.warning("notification_dropped", id=row.id, kind=row.kind, target=channel)
                    dropped += 1
                    continue
                error = self._send(url, Message.from_json(row.message))
                retry_at = self._retry_at(now, row.attempts)
                with self._store.transaction() as tx:
                    if error is None:
                        tx.mark_delivered(row.id, now)
                    else:
                        # The backoff is the channel's: its other rows wait as long.
                        tx.mark_failed(row.id, error, retry_at)
                        tx.defer_target(row.target, retry_at)
                if error is None:
                    delivered += 1
                    log.info("notification_delivered", id=row.id, kind=row.kind, target=channel)
                    continue
                failed += 1
                broken.add(row.target)
                attempts = row.attempts + 1
                emit = log.error if attempts in _LOUD_AFTER else log.warning
                emit(
                    "notification_failed",
                    id=row.id,
                    kind=row.kind,
                    target=channel,
                    attempts=attempts,
                    error=error,
                    retry_at=retry_at.isoformat(),
                )
                if self._on_failure is not None:
                    self._on_failure(urlsplit(url).scheme or "unknown")
            with self._store.reader() as tx:
                pending = tx.pending_notifications()
        return FlushResult(delivered, failed, dropped, pending)


def digest_summary(tx: Tx, now: datetime, poll_interval: timedelta) -> DigestSummary:
    """The last 24 hours from the observations and the action log.

    Each cycle's observation stands for the time until the next cycle (at most two poll
    intervals, so a daemon outage is not billed as observed spend).
    """
    since = now - timedelta(hours=24)
    observed = tx.observations_since(since)
    cycle_times = sorted({o.at for o in observed})
    span: dict[datetime, float] = {}
    for index, at in enumerate(cycle_times):
        following = cycle_times[index + 1] if index + 1 < len(cycle_times) else now
        span[at] = min(following - at, 2 * poll_interval).total_seconds() / 3600
    spent = idle_spent = 0.0
    idle_by_instance: dict[str, float] = defaultdict(float)
    labels: dict[str, tuple[str, str | None, str | None]] = {}
    for obs in observed:
        if obs.hourly_price_usd is None:
            continue
        cost = obs.hourly_price_usd * span[obs.at]
        spent += cost
        if obs.verdict == "idle":
            idle_spent += cost
            idle_by_instance[obs.ref.instance_key] += cost
            labels[obs.ref.instance_key] = (obs.ref.instance_id, obs.ref.name, obs.owner)
    latest = [o for o in observed if cycle_times and o.at == cycle_times[-1]]
    top = sorted(idle_by_instance.items(), key=lambda item: -item[1])[:5]
    counts: Counter[str] = Counter()
    for action in tx.actions_since(since):
        event = action.phase == "event" and action.action in ("warn", "resume", "block")
        if event or (action.phase == "outcome" and action.outcome == "ok"):
            counts[action.action] += 1
        elif action.outcome == "dry_run":
            counts[f"would {action.action}"] += 1
    failures = sum(1 for row in tx.notifications_since(since) if row.last_error)
    return DigestSummary(
        day=now.strftime("%Y-%m-%d"),
        instances=len(latest),
        hourly_burn_usd=round(sum(o.hourly_price_usd or 0.0 for o in latest), 2),
        idle_burn_usd_per_hour=round(
            sum(o.hourly_price_usd or 0.0 for o in latest if o.verdict == "idle"), 2
        ),
        spent_usd=round(spent, 2),
        idle_spent_usd=round(idle_spent, 2),
        top_wasters=tuple((*labels[key], round(usd, 2)) for key, usd in top),
        actions=dict(counts),
        notification_failures=failures,
    )
