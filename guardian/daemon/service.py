"""``guardian run``: the audit cycle on a schedule, with enforcement, alerts and state.

An APScheduler ``BlockingScheduler`` owns the main thread; jobs run in its pool threads:
the cycle every ``poll_interval`` (coalesced, one at a time, small jitter), outbox delivery a few
times per interval, the daily digest on ``notify.digest`` (cron, UTC), the weekly price refresh
and a daily pruning of old observations. Signals go through a queue to a control thread:
SIGTERM/SIGINT finish the current cycle, flush the outbox and exit 0; SIGHUP reloads the config
between cycles (an invalid new config is logged and the old one kept). Under systemd it speaks
the notify protocol: ``READY=1`` once started, ``WATCHDOG=1`` after each healthy cycle (and from
a heartbeat while cycles stay healthy), ``STATUS=`` with a one-line summary.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from guardian.config import Config, load_config
from guardian.cycle import CycleResult, audit_cycle
from guardian.daemon import sdnotify
from guardian.daemon.enforce import Enforcer, EnforceSummary
from guardian.daemon.health import HealthWatch
from guardian.daemon.messages import digest_message
from guardian.daemon.metrics_server import GuardianMetrics, MetricsEndpoint
from guardian.daemon.notify import Notifier, digest_summary, validate_notify_urls
from guardian.daemon.store import InstanceRef, Store
from guardian.errors import ConfigError, GuardianError, StateUnavailable
from guardian.prices import PriceCatalog
from guardian.providers import Provider
from guardian.report.document import totals

if TYPE_CHECKING:
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.base import BaseTrigger

__all__ = ["CycleReport", "Daemon"]

log = structlog.get_logger(__name__)

OBSERVATION_RETENTION = timedelta(days=35)
ProviderFactory = Callable[[Config], Sequence[Provider]]
CatalogLoader = Callable[[Path], PriceCatalog]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _default_providers(config: Config) -> Sequence[Provider]:
    from guardian.providers.factory import build_providers

    return build_providers(config)


def _default_catalog(state_dir: Path) -> PriceCatalog:
    from guardian.prices import load_catalog

    return load_catalog(state_dir)


def _digest_trigger(config: Config) -> BaseTrigger | None:
    from apscheduler.triggers.cron import CronTrigger

    expression = config.notify.digest.strip()
    if not expression:
        return None
    try:
        return CronTrigger.from_crontab(expression, timezone=UTC)
    except ValueError as exc:
        raise ConfigError(f"notify.digest: not a cron expression {expression!r}: {exc}") from exc


def _backoff_base(config: Config) -> timedelta:
    """Retry failed deliveries soon at first: half a poll interval, between 1 s and 1 min."""
    return min(max(config.poll_interval / 2, timedelta(seconds=1)), timedelta(minutes=1))


@dataclass(frozen=True)
class CycleReport:
    cycle_id: str
    result: CycleResult
    enforcement: EnforceSummary
    duration_s: float
    not_audited: tuple[InstanceRef, ...] = ()  # hidden by a failed listing, as last listed
    state_error: str | None = None  # the database refused writes: nothing was enforced

    def status_line(self) -> str:
        t = totals(self.result.findings)
        e = self.enforcement
        stopped = sum(n for (_, dry), n in e.stops.items() if not dry)
        line = (
            f"{t.instances} GPU instances, {t.by_verdict.get('idle', 0)} idle "
            f"(${t.idle_burn_usd_per_hour:.2f}/h of ${t.hourly_burn_usd:.2f}/h), "
            f"{e.warned} warned, {stopped} stopped, {len(self.result.errors)} errors"
        )
        if self.not_audited:
            line += f", {len(self.not_audited)} not audited"
        if self.state_error is not None:
            line += "; state database refuses writes: nothing enforced"
        return line


class _Runtime:
    """Everything built from one config; swapped whole on reload."""

    def __init__(
        self,
        config: Config,
        store: Store,
        metrics: GuardianMetrics,
        providers: ProviderFactory,
    ) -> None:
        validate_notify_urls(config.notify)
        self.digest_trigger = _digest_trigger(config)
        self.config = config
        self.providers = list(providers(config))
        self.notifier = Notifier(
            config.notify,
            store,
            backoff_base=_backoff_base(config),
            owners=not config.dry_run,  # a dry run tells the team, never the instance owners
            on_failure=lambda channel: metrics.notification_failures.labels(channel).inc(),
        )
        self.enforcer = Enforcer(config, store, self.notifier, self.providers)

    def close(self) -> None:
        for provider in self.providers:
            try:
                provider.close()
            except Exception:  # closing must not stop a shutdown or a reload
                log.exception("provider_close_failed", provider=provider.name)


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        overrides: Sequence[str] = (),
        providers: ProviderFactory = _default_providers,
        catalog: CatalogLoader = _default_catalog,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._config_path = config_path
        self._overrides = tuple(overrides)
        self._provider_factory = providers
        self._catalog_loader = catalog
        self._clock = clock
        self.metrics = GuardianMetrics()
        self.store = Store.open(config.effective_state_url)
        self._endpoint = MetricsEndpoint(self.metrics, config.metrics.listen)
        self._runtime = _Runtime(config, self.store, self.metrics, providers)
        self.health = HealthWatch(self.store, config.limits.alert_after_failed_cycles)
        self._cycle_lock = threading.Lock()  # one cycle at a time; reload and stop wait on it
        self._stopping = threading.Event()
        self._signals: queue.Queue[int] = queue.Queue()
        self._scheduler: BlockingScheduler | None = None
        self._last_healthy = time.monotonic()

    @property
    def config(self) -> Config:
        return self._runtime.config

    # -- jobs ------------------------------------------------------------------------------------
    def run_cycle(self) -> CycleReport | None:
        """One audit-and-enforce cycle; None when shutting down or when it failed (logged)."""
        with self._cycle_lock:
            if self._stopping.is_set():
                return None
            cycle_id = uuid.uuid4().hex[:12]
            with structlog.contextvars.bound_contextvars(cycle_id=cycle_id):
                try:
                    report = self._cycle(cycle_id)
                except Exception as exc:
                    log.exception("cycle_failed")
                    self.metrics.cycle_failures.inc()
                    sdnotify.notify("STATUS=last cycle failed; see the log")
                    self._check_health(None, " ".join(f"{type(exc).__name__}: {exc}".split()))
                    self.flush_outbox()
                    return None
        self._last_healthy = time.monotonic()
        sdnotify.notify("WATCHDOG=1", f"STATUS={report.status_line()}")
        return report

    def _cycle(self, cycle_id: str) -> CycleReport:
        runtime = self._runtime
        config = runtime.config
        started = time.monotonic()
        now = self._clock()
        catalog = self._catalog_loader(config.state_dir)
        result = audit_cycle(config, runtime.providers, catalog, now)
        not_audited = self.health.audited(result)
        t = totals(result.findings)
        summary, duration, state_error = EnforceSummary(), 0.0, None
        if self.health.state_error is not None:
            self.store.reconnect()  # the database may be back: try it on fresh connections
        try:
            summary = runtime.enforcer.run(result, self._clock(), cycle_id)
            duration = time.monotonic() - started
            with self.store.transaction() as tx:
                tx.record_cycle(
                    cycle_id=cycle_id,
                    started_at=now,
                    duration_s=duration,
                    findings=result.findings,
                    errors=len(result.errors),
                    hourly_burn_usd=t.hourly_burn_usd,
                    idle_burn_usd_per_hour=t.idle_burn_usd_per_hour,
                )
        except StateUnavailable as exc:  # the audit stands; whatever needed a record waits
            state_error = str(exc)
            duration = time.monotonic() - started
            self.health.state_unavailable(state_error)
        else:
            self.health.state_ok()
        self._count(result, summary, duration)
        report = CycleReport(cycle_id, result, summary, duration, not_audited, state_error)
        log.info(
            "cycle_done",
            seconds=round(duration, 3),
            instances=t.instances,
            by_verdict={k: v for k, v in t.by_verdict.items() if v},
            idle_usd_per_hour=t.idle_burn_usd_per_hour,
            warned=summary.warned,
            resumed=summary.resumed,
            stops=sum(summary.stops.values()),
            blocked=dict(summary.blocked),
            errors=len(result.errors),
            **({"not_audited": len(not_audited)} if not_audited else {}),
            **({"recorded": False} if state_error else {}),
        )
        self._check_health(result, state_error, not_audited)
        self.flush_outbox()
        return report

    def _check_health(
        self,
        result: CycleResult | None,
        failure: str | None,
        not_audited: tuple[InstanceRef, ...] = (),
    ) -> None:
        """guardian's alerts about itself; a bug in them must not fail the cycle."""
        try:
            self.health.check(
                self._clock(),
                self._runtime.notifier,
                result=result,
                failure=failure,
                not_audited=not_audited,
            )
        except Exception:
            log.exception("health_check_failed")

    def _count(self, result: CycleResult, summary: EnforceSummary, duration: float) -> None:
        m = self.metrics
        m.observe_cycle(result.findings, result.errors, duration, time.time())
        m.warnings.inc(summary.warned)
        for (action, dry_run), count in summary.stops.items():
            m.stops.labels(action, str(dry_run).lower()).inc(count)
        m.count_blocked(summary.blocked)
        for provider, count in summary.stop_failures.items():
            m.api_errors.labels(provider, "stop").inc(count)

    def flush_outbox(self) -> None:
        if self.health.state_error is not None:
            # A delivery could not be marked as done, so every flush would send it again.
            return
        try:
            result = self._runtime.notifier.flush(self._clock())
        except StateUnavailable as exc:
            self.health.state_unavailable(str(exc))
            return
        self.metrics.outbox_pending.set(result.pending)

    def send_digest(self) -> None:
        config = self._runtime.config
        now = self._clock()
        with structlog.contextvars.bound_contextvars(job="digest"):
            try:
                with self.store.reader() as tx:
                    summary = digest_summary(tx, now, config.poll_interval)
                with self.store.transaction() as tx:
                    self._runtime.notifier.enqueue(
                        tx, digest_message(summary), at=now, dedupe_key=f"digest:{summary.day}"
                    )
            except StateUnavailable as exc:
                self.health.state_unavailable(str(exc))
                return
            self.flush_outbox()

    def refresh_prices(self) -> None:
        """The weekly refresh from the clouds' price APIs; the next cycle reads the new cache."""
        config = self._runtime.config
        with structlog.contextvars.bound_contextvars(job="price_refresh"):
            try:
                from guardian.prices.refresh import default_regions, refresh
                from guardian.prices.sources import source_for
            except ImportError:
                log.warning("price_refresh_unavailable")
                return
            enabled = {"aws": config.aws.enabled, "gcp": config.gcp.enabled}
            for provider in (name for name, on in enabled.items() if on):
                try:
                    source = source_for(provider, config)
                    regions = default_regions(provider, config, config.state_dir)
                    report = refresh(source, regions, config.state_dir, self._clock())
                except GuardianError as exc:
                    log.warning("price_refresh_failed", provider=provider, error=str(exc))
                    continue
                log.info(
                    "prices_refreshed",
                    provider=provider,
                    regions=len(report.outcomes),
                    changes=len(report.changes),
                    failures=len(report.failures),
                )

    def prune(self) -> None:
        try:
            with self.store.transaction() as tx:
                removed = tx.prune(self._clock() - OBSERVATION_RETENTION)
        except StateUnavailable as exc:
            self.health.state_unavailable(str(exc))
            return
        log.info("observations_pruned", removed=removed)

    def heartbeat(self) -> None:
        """Ping the watchdog between cycles while they keep succeeding; a hung cycle stops it."""
        limit = 3 * self.config.poll_interval.total_seconds() + 300
        if not self._stopping.is_set() and time.monotonic() - self._last_healthy < limit:
            sdnotify.notify("WATCHDOG=1")

    # -- reload and stop ---------------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read the config between cycles; an invalid one is logged and the old one kept."""
        with self._cycle_lock:
            old = self._runtime
            try:
                config, _ = load_config(self._config_path, self._overrides)
                runtime = _Runtime(config, self.store, self.metrics, self._provider_factory)
            except Exception as exc:  # a bad edit must never take the daemon down
                log.error("config_reload_failed", error=str(exc), kept="previous config")
                return False
            for key, before, after in (
                ("state_url", old.config.effective_state_url, config.effective_state_url),
                ("metrics.listen", old.config.metrics.listen, config.metrics.listen),
            ):
                if before != after:
                    log.warning("config_reload_needs_restart", key=key)
            self._runtime = runtime
            self.health.alert_after = config.limits.alert_after_failed_cycles
            old.close()
        self._schedule_jobs(replace=True)
        log.info("config_reloaded", mode=config.mode.value, dry_run=config.dry_run)
        return True

    def stop(self) -> None:
        """Ask the scheduler to stop; ``run`` then finishes the cycle and flushes."""
        if self._stopping.is_set():
            return
        sdnotify.notify("STOPPING=1")
        log.info("shutting_down")
        self._stopping.set()
        self._scheduler_shutdown()

    def _scheduler_shutdown(self) -> None:
        from apscheduler.schedulers import SchedulerNotRunningError

        if self._scheduler is None:
            return
        # Waits for the jobs in flight (the current cycle, a delivery) to finish. Not started
        # yet: the started listener sees the flag and stops it.
        with contextlib.suppress(SchedulerNotRunningError):
            self._scheduler.shutdown(wait=True)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals.put_nowait(signum)  # handled on the control thread, never in the handler

    def _control(self) -> None:
        while True:
            signum = self._signals.get()
            if signum == signal.SIGHUP:
                sdnotify.notify("RELOADING=1")
                self.reload()
                sdnotify.notify("READY=1")
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self.stop()
                return

    # -- scheduling -------------------------------------------------------------------------
    def _schedule_jobs(self, *, replace: bool = False) -> None:
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        scheduler = self._scheduler
        if scheduler is None:
            return
        config = self._runtime.config
        poll = config.poll_interval.total_seconds()
        jitter = min(poll * 0.05, 10.0)
        flush_every = min(max(poll / 2, 1.0), 15.0)
        jobs: list[tuple[str, Callable[[], Any], BaseTrigger | None]] = [
            ("cycle", self.run_cycle, IntervalTrigger(seconds=poll, jitter=jitter, timezone=UTC)),
            ("outbox", self.flush_outbox, IntervalTrigger(seconds=flush_every, timezone=UTC)),
            ("digest", self.send_digest, self._runtime.digest_trigger),
            ("prune", self.prune, CronTrigger(hour=3, minute=17, timezone=UTC)),
            (
                "prices",
                self.refresh_prices,
                CronTrigger(day_of_week="mon", hour=4, minute=23, jitter=900, timezone=UTC)
                if config.prices.refresh_weekly
                else None,
            ),
        ]
        period = sdnotify.watchdog_period()
        if period is not None:
            beat = max(period.total_seconds() / 3, 1.0)
            jobs.append(("heartbeat", self.heartbeat, IntervalTrigger(seconds=beat)))
        for job_id, func, trigger in jobs:
            if replace and scheduler.get_job(job_id) is not None:
                if job_id in ("outbox", "prune", "heartbeat"):
                    continue  # nothing in them depends on the config
                scheduler.remove_job(job_id)
            if trigger is None:
                continue
            first = datetime.now(UTC) if job_id == "cycle" and not replace else None
            scheduler.add_job(
                func,
                trigger,
                id=job_id,
                name=job_id,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=max(int(poll), 60),
                **({"next_run_time": first} if first else {}),
            )

    def run(self) -> int:
        """Block until SIGTERM/SIGINT (or ``stop()``); returns the exit status."""
        from apscheduler.events import (
            EVENT_JOB_ERROR,
            EVENT_JOB_MAX_INSTANCES,
            EVENT_JOB_MISSED,
            EVENT_SCHEDULER_STARTED,
            JobExecutionEvent,
            SchedulerEvent,
        )
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.blocking import BlockingScheduler

        self._scheduler = BlockingScheduler(
            timezone=UTC, executors={"default": ThreadPoolExecutor(max_workers=4)}
        )
        self._schedule_jobs()

        def started(_event: SchedulerEvent) -> None:
            if self._stopping.is_set():  # a signal came before the scheduler ran
                self._scheduler_shutdown()
                return
            config = self._runtime.config
            sdnotify.notify("READY=1", f"STATUS=started, mode {config.mode.value}")
            log.info(
                "daemon_started",
                mode=config.mode.value,
                dry_run=config.dry_run,
                poll_interval_s=config.poll_interval.total_seconds(),
                metrics=":".join(map(str, self._endpoint.address or ())) or "off",
                channels=len(config.notify.urls),
            )

        def job_event(event: JobExecutionEvent) -> None:
            if event.code == EVENT_JOB_ERROR:
                log.error("job_failed", job=event.job_id, exc_info=event.exception)
            elif event.code == EVENT_JOB_MAX_INSTANCES:
                log.warning("job_skipped", job=event.job_id, reason="the previous run is going")
            else:
                log.warning("job_missed", job=event.job_id, scheduled=str(event.scheduled_run_time))

        self._scheduler.add_listener(started, EVENT_SCHEDULER_STARTED)
        self._scheduler.add_listener(
            job_event, EVENT_JOB_ERROR | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED
        )
        # APScheduler reports through those events, in structlog's format, not stdlib lines.
        logging.getLogger("apscheduler").setLevel(logging.CRITICAL)
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, self._on_signal)
        threading.Thread(target=self._control, name="guardian-control", daemon=True).start()
        self._endpoint.start()
        try:
            if not self._stopping.is_set():
                self._scheduler.start()
        finally:
            self._finish()
        return 0

    def request_shutdown(self) -> None:
        """Thread-safe stop for tests and embedding: like SIGTERM."""
        self._signals.put_nowait(signal.SIGTERM)

    def request_reload(self) -> None:
        self._signals.put_nowait(signal.SIGHUP)

    def _finish(self) -> None:
        self._stopping.set()
        self.close()

    def close(self) -> None:
        """Deliver what is due, then release providers, the endpoint and the database."""
        with self._cycle_lock:  # the cycle in flight, if any, ends first
            pass
        try:
            self.flush_outbox()
        except Exception:
            log.exception("final_flush_failed")
        self._runtime.close()
        self._endpoint.stop()
        self.store.close()
        log.info("daemon_stopped")
