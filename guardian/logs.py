"""structlog configured once, at the entry point; a processor masks secrets in every event."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

__all__ = ["LogFormat", "configure_logging", "mask_secrets"]

LogFormat = Literal["console", "json"]

_SECRET_KEYS = re.compile(
    r"(secret|password|token|passwd|api_key|apikey|credential|external_id)", re.I
)
# user:password@ in URLs, and long opaque path segments of webhook URLs (slack://T/B/XXXX).
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):[^@/\s]+@", re.I)
_WEBHOOK_PATH = re.compile(
    r"(?P<prefix>\b(?:slack|msteams|discord|json|jsons|mailto|mailtos|tgram|pushover|"
    r"hooks\.slack\.com/services)[^\s/]*/(?:/?[^\s/]+/)?)(?P<secret>[A-Za-z0-9_\-]{8,})",
    re.I,
)
# A notification URL's path and query may hold a token anywhere (json://host/hooks/TOKEN,
# ?+X-Token=...): everything after its host goes, as ``config.mask_secret_url`` does.
_NOTIFY_URL = re.compile(
    r"\b(?P<head>(?:(?:slack|msteams|workflows?|discord|json|jsons|xml|xmls|form|forms|mailto|"
    r"mailtos|tgram|pushover|ntfy|ntfys)://[^\s/?#'\"]+|https?://(?:hooks\.slack\.com|"
    r"(?:[a-z0-9-]+\.)*(?:discord(?:app)?\.com|webhook\.office\.com|logic\.azure\.com)(?::\d+)?)))"
    r"(?P<rest>[/?#][^\s'\"]*)",
    re.I,
)


def _mask_text(text: str) -> str:
    text = _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", text)
    text = _NOTIFY_URL.sub(
        lambda m: m["head"] + ("/***" if m["rest"].strip("/") else m["rest"]), text
    )
    return _WEBHOOK_PATH.sub(r"\g<prefix>***", text)


def mask_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Never a secret in a log line: mask secret-named keys and credentials inside URLs."""
    for key, value in list(event_dict.items()):
        if _SECRET_KEYS.search(key) and value not in (None, "", False):
            event_dict[key] = "***"
        elif isinstance(value, str):
            event_dict[key] = _mask_text(value)
        elif isinstance(value, list | tuple) and value and isinstance(value[0], str):
            event_dict[key] = [_mask_text(item) for item in value]
    return event_dict


class _CurrentStderr:
    """``sys.stderr`` as it is at each write, not as it was at start: while a rich spinner runs
    it redirects stderr, and a log line written through it lands above the spinner instead of
    being overwritten by it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(fmt: LogFormat = "console", level: str = "info") -> None:
    """Logs go to stderr, so stdout carries nothing but data."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            mask_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
