"""Prometheus metrics of ``guardian run``, on their own registry (no process-global state).

The gauges describe the last cycle; the counters count since the daemon started. Served on
``metrics.listen`` (default 127.0.0.1:9464); an empty value turns the endpoint off.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from guardian.errors import ConfigError
from guardian.model import Finding, Verdict
from guardian.providers import UnitError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

__all__ = ["GuardianMetrics", "MetricsEndpoint", "parse_listen"]


def parse_listen(listen: str) -> tuple[str, int] | None:
    """``127.0.0.1:9464``, ``[::1]:9464`` or ``:9464`` (all interfaces); empty = off."""
    text = listen.strip()
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"metrics.listen: expected HOST:PORT, got {listen!r}")
    host = host.strip("[]") or "0.0.0.0"  # an explicit ":port" asks for every interface
    return host, int(port)


@dataclass
class GuardianMetrics:
    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=True)
    )

    def __post_init__(self) -> None:
        r = self.registry
        self.instances = Gauge(
            "guardian_instances",
            "GPU instances seen in the last cycle, by verdict.",
            ["provider", "verdict"],
            registry=r,
        )
        self.idle_usd_per_hour = Gauge(
            "guardian_idle_usd_per_hour",
            "What the idle GPU instances of the last cycle cost per hour (priced ones only).",
            registry=r,
        )
        self.burn_usd_per_hour = Gauge(
            "guardian_burn_usd_per_hour",
            "What all GPU instances of the last cycle cost per hour (priced ones only).",
            registry=r,
        )
        self.warnings = Counter(
            "guardian_warnings", "Idle warnings sent (one per idle episode).", registry=r
        )
        self.stops = Counter(
            "guardian_stops",
            "Instances stopped or hibernated (dry_run: would have been).",
            ["action", "dry_run"],
            registry=r,
        )
        self.blocked_stops = Counter(
            "guardian_blocked_stops",
            "Stops a safety gate prevented, by reason (counted once per episode and reason).",
            ["reason"],
            registry=r,
        )
        self.notification_failures = Counter(
            "guardian_notification_failures",
            "Failed notification delivery attempts, by channel scheme.",
            ["channel"],
            registry=r,
        )
        self.api_errors = Counter(
            "guardian_api_errors",
            "Cloud API failures that skipped a unit or an action, by provider and operation.",
            ["provider", "operation"],
            registry=r,
        )
        self.cycle_duration = Histogram(
            "guardian_cycle_duration_seconds",
            "Wall time of one audit-and-enforce cycle.",
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.cycle_failures = Counter(
            "guardian_cycle_failures", "Cycles that ended in an unexpected error.", registry=r
        )
        self.last_cycle = Gauge(
            "guardian_last_cycle_timestamp_seconds",
            "When the last cycle finished successfully (Unix time).",
            registry=r,
        )
        self.outbox_pending = Gauge(
            "guardian_outbox_pending", "Notifications waiting for delivery.", registry=r
        )
        self._lock = threading.Lock()

    def observe_cycle(
        self,
        findings: Iterable[Finding],
        errors: Iterable[UnitError],
        duration_s: float,
        finished_at_s: float,
    ) -> None:
        by_verdict: Tally[tuple[str, str]] = Tally()
        providers: set[str] = set()
        idle = burn = 0.0
        for finding in findings:
            providers.add(finding.instance.provider)
            by_verdict[(finding.instance.provider, finding.decision.verdict.value)] += 1
            price = finding.price.hourly_price or 0.0
            burn += price
            if finding.decision.verdict is Verdict.IDLE:
                idle += price
        with self._lock:
            # Every verdict is always exported (0 included) so dashboards need no absent().
            self.instances.clear()
            for provider in providers or {"aws"}:
                for verdict in Verdict:
                    self.instances.labels(provider, verdict.value).set(
                        by_verdict[(provider, verdict.value)]
                    )
            self.idle_usd_per_hour.set(round(idle, 4))
            self.burn_usd_per_hour.set(round(burn, 4))
            for error in errors:
                self.api_errors.labels(error.provider, error.operation).inc()
            self.cycle_duration.observe(duration_s)
            self.last_cycle.set(finished_at_s)

    def count_blocked(self, reasons: Mapping[str, int]) -> None:
        for reason, count in reasons.items():
            self.blocked_stops.labels(reason).inc(count)


class MetricsEndpoint:
    """The HTTP endpoint, started and stopped with the daemon."""

    def __init__(self, metrics: GuardianMetrics, listen: str) -> None:
        self.address = parse_listen(listen)
        self._metrics = metrics
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.address is None:
            return
        host, port = self.address
        try:
            self._server, self._thread = start_http_server(
                port, addr=host, registry=self._metrics.registry
            )
        except OSError as exc:
            raise ConfigError(f"metrics.listen: cannot listen on {host}:{port}: {exc}") from exc

    @property
    def port(self) -> int | None:
        return self._server.server_port if self._server is not None else None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
