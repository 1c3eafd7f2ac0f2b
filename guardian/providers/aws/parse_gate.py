"""Let one large AWS response be parsed at a time, while the requests still overlap.

A DescribeInstances page of 1,000 instances is about 3.4 MB of XML; botocore holds it, its
element tree and the resulting dicts at once, about 24 MB at the peak of parsing (measured with
tracemalloc). Regions are discovered on parallel threads, so three regions parsing together peak
at three times that, and CPython rarely gives such memory back to the system: the audit's peak
RSS is set there. Parsing is pure Python under the GIL, so doing it one response at a time costs
no wall time; the network waits, which are what the threads are for, still overlap.

The gate is entered on botocore's ``before-parse`` event and left on ``response-received``
(emitted right after the parse, on success and on an HTTP failure alike) or on
``after-call-error`` (a parse that raised). A thread that waits longer than ``timeout_s``
parses anyway and logs it: a gate never deadlocks a cycle.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import structlog

__all__ = ["ParseGate"]

log = structlog.get_logger(__name__)


class ParseGate:
    """One parse at a time for the operations it is attached to, across every client."""

    def __init__(self, *, timeout_s: float = 60.0) -> None:
        self._semaphore = threading.Semaphore(1)
        self._held = threading.local()
        self._timeout_s = timeout_s

    def attach(self, events: Any, service_id: str, operations: Iterable[str]) -> None:
        """Register on a client's ``meta.events`` for these operations of ``service_id``."""
        for operation in operations:
            events.register(f"before-parse.{service_id}.{operation}", self._enter)
            events.register(f"response-received.{service_id}.{operation}", self._leave)
            events.register(f"after-call-error.{service_id}.{operation}", self._leave)

    def _enter(self, **_: Any) -> None:
        if getattr(self._held, "value", False):  # cannot happen: never nest on one thread
            return
        if not self._semaphore.acquire(timeout=self._timeout_s):
            log.warning("aws_parse_gate_timeout", waited_s=self._timeout_s)
            return
        self._held.value = True

    def _leave(self, **_: Any) -> None:
        if getattr(self._held, "value", False):
            self._held.value = False
            self._semaphore.release()
