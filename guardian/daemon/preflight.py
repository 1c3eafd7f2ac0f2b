"""What ``guardian run`` checks before it starts, callable without starting it.

``guardian check-config`` runs the same checks, so a config it passes also starts the daemon
and opens ``guardian history``: the notification URLs (apprise parses each without sending), the
digest's cron expression and the state database's URL.
"""

from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING

from guardian.config import Config
from guardian.daemon.notify import validate_notify_urls
from guardian.errors import ConfigError

if TYPE_CHECKING:
    from apscheduler.triggers.base import BaseTrigger

__all__ = ["check_daemon_config", "digest_trigger"]


def digest_trigger(config: Config) -> BaseTrigger | None:
    """The daily digest's schedule; None when ``notify.digest`` is empty (off)."""
    from apscheduler.triggers.cron import CronTrigger

    expression = config.notify.digest.strip()
    if not expression:
        return None
    try:
        return CronTrigger.from_crontab(expression, timezone=UTC)
    except ValueError as exc:
        raise ConfigError(f"notify.digest: not a cron expression {expression!r}: {exc}") from exc


def check_daemon_config(config: Config) -> None:
    """Raise ``ConfigError`` naming the key for anything the daemon would refuse at start."""
    from guardian.daemon.store import check_state_url

    validate_notify_urls(config.notify)
    digest_trigger(config)
    check_state_url(config.effective_state_url)
