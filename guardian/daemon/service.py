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
import dataclasses
import logging
import math
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

import sqlalchemy as sa
import structlog

from guardian.config import Config, Mode, load_config
from guardian.cycle import CycleResult
from guardian.daemon import sdnotify
from guardian.daemon.coordination import DIGEST_LOCK, coordinator_for
from guardian.daemon.enforce import Enforcer, EnforceSummary
from guardian.daemon.health import HealthWatch
from guardian.daemon.messages import Saving, digest_message, top_savings
from guardian.daemon.metrics_server import GuardianMetrics, MetricsEndpoint
from guardian.daemon.notify import Notifier, digest_summary, validate_notify_urls
from guardian.daemon.preflight import digest_trigger
from guardian.daemon.shared_files import PriceCacheSync
from guardian.daemon.store import InstanceRef, Store
from guardian.daemon.units import ReplicaCycle, UnitRunner
from guardian.errors import GuardianError, StateUnavailable
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

    return build_providers(config, caller="daemon")


def _default_catalog(state_dir: Path) -> PriceCatalog:
    from guardian.prices import load_catalog

    return load_catalog(state_dir)


def open_store(url: str, stopping: threading.Event) -> Store:
    """The state database, migrated; while it cannot be reached, wait and try again.

    A database that is down (a PostgreSQL restart, a network cut) is not a reason to exit: under
    systemd or Kubernetes that would be a crash loop. Each try is logged with the reason, and
    ``STATUS=`` says what the daemon waits for. A bad URL or a missing driver stays fatal.
    """
    delay = 1.0
    while True:
        try:
            return Store.open(url)
        except sa.exc.OperationalError as exc:
            reason = str(exc.orig or exc).strip().splitlines()[0][:300]
            log.error("state_db_unreachable", error=reason, retry_in_s=delay)
            sdnotify.notify(f"STATUS=waiting for the state database: {reason}")
            if stopping.wait(delay):
                raise GuardianError(f"state database unreachable: {reason}") from exc
            delay = min(delay * 2, 30.0)


def _backoff_base(config: Config) -> timedelta:
    """Retry failed deliveries soon at first: half a poll interval, between 1 s and 1 min."""
    return min(max(config.poll_interval / 2, timedelta(seconds=1)), timedelta(minutes=1))


@dataclass(frozen=True)
class CycleReport:
    cycle_id: str
    result: CycleResult
    enforcement: EnforceSummary
    duration_s: float
    units: int = 0
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
        if config.mode is not Mode.AUDIT and not config.notify.urls:
            # Without a channel, alerts are queued and recorded but reach nobody: say so.
            log.warning(
                "alerts_go_nowhere",
                mode=config.mode.value,
                hint="set notify.urls (apprise URLs); guardian history still shows them",
            )
        self.digest_trigger = digest_trigger(config)
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
        self._stopping = threading.Event()
        self.store = open_store(config.effective_state_url, self._stopping)
        self._endpoint = MetricsEndpoint(self.metrics, config.metrics.listen)
        self._runtime = _Runtime(config, self.store, self.metrics, providers)
        self.health = HealthWatch(self.store, config.limits.alert_after_failed_cycles)
        self._cycle_lock = threading.Lock()  # one cycle at a time; reload and stop wait on it
        coordinator = coordinator_for(self.store, config.poll_interval, config.units.lease)
        self.replica = coordinator.replica
        self._units = UnitRunner(coordinator, self.store, clock, self._stopping)
        self._prices = PriceCacheSync(self.store)
        if self.store.is_postgres:  # leases renewed while units run, `run --once` included
            threading.Thread(target=self._keep_alive, name="guardian-leases", daemon=True).start()
        self._signals: queue.Queue[int] = queue.Queue()
        self._scheduler: BlockingScheduler | None = None
        self._last_healthy = time.monotonic()
        # The latest cycle's largest right-sizing savings, for the digest: re-derived by every
        # cycle, so memory is the place (a restart's first cycle fills it again).
        self._savings: tuple[Saving, ...] = ()

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
        self._prices.pull(config.state_dir)
        catalog = self._catalog_loader(config.state_dir)
        if self.health.state_error is not None:
            self.store.reconnect()  # the database may be back: try it on fresh connections
        done: ReplicaCycle = self._units.run(
            config, runtime.providers, runtime.enforcer, catalog, cycle_id
        )
        result, summary, state_error = done.result, done.enforcement, done.state_error
        not_audited = self.health.audited(result)
        self._savings = top_savings(result.findings)
        duration = time.monotonic() - started
        t = totals(result.findings)
        if state_error is None:
            try:
                with self.store.transaction() as tx:
                    tx.record_cycle(
                        cycle_id=cycle_id,
                        started_at=done.plan.started_at,
                        duration_s=duration,
                        findings=result.findings,
                        errors=len(result.errors),
                        hourly_burn_usd=t.hourly_burn_usd,
                        idle_burn_usd_per_hour=t.idle_burn_usd_per_hour,
                        replica=self.replica if self.store.is_postgres else None,
                        units=done.units,
                        with_observations=False,  # written unit by unit, under each unit's lease
                    )
            except StateUnavailable as exc:  # the audit stands; whatever needed a record waits
                state_error = str(exc)
        if state_error is not None:
            self.health.state_unavailable(state_error)
        else:
            self.health.state_ok()
        self._count(result, summary, duration)
        report = CycleReport(
            cycle_id, result, summary, duration, done.units, not_audited, state_error
        )
        log.info(
            "cycle_done",
            cycle=done.plan.cycle,
            units=done.units,
            failed_units=done.failed_units,
            api_calls=done.api_calls,
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
                summary = dataclasses.replace(summary, top_savings=self._savings)
                with self.store.transaction() as tx:
                    if (
                        self.store.is_postgres
                        and not tx.conn.execute(
                            sa.text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": DIGEST_LOCK}
                        ).scalar()
                    ):
                        log.info("digest_queued_elsewhere")  # another replica is queueing it
                        return
                    # The dedupe key (unique with the target) makes it one digest a day, whichever
                    # replica comes first.
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
            with self._prices.refreshing(self._clock(), config.state_dir) as mine:
                if not mine:
                    log.info("price_refresh_elsewhere")  # another replica did or does it
                    return
                self._refresh_prices(config, refresh, default_regions, source_for)

    def _refresh_prices(
        self, config: Config, refresh: Any, default_regions: Any, source_for: Any
    ) -> None:
        with structlog.contextvars.bound_contextvars(job="price_refresh"):
            enabled = {"aws": config.aws.enabled, "gcp": config.gcp.enabled}
            for provider in (name for name, on in enabled.items() if on):
                try:
                    source = source_for(provider, config, caller="daemon")
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
                ("units.lease", old.config.units.lease, config.units.lease),
                (
                    "poll_interval (the cycle number replicas share)",
                    old.config.poll_interval,
                    config.poll_interval if self.store.is_postgres else old.config.poll_interval,
                ),
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

    def _keep_alive(self) -> None:
        """Renew the leases of the units in flight and say this replica is alive, every third
        of a lease; a database outage is logged once a minute at most, and retried."""
        last_error = 0.0
        while not self._stopping.wait(self.config.units.lease.total_seconds() / 3):
            try:
                self._units.keep_alive()
            except Exception as exc:
                if time.monotonic() - last_error > 60:
                    log.error("lease_renewal_failed", error=str(exc).splitlines()[0][:300])
                    last_error = time.monotonic()

    def _cycle_trigger(self, poll: float, jitter: float) -> BaseTrigger:
        """Every ``poll`` seconds. With replicas, on the boundaries of the shared cycle number
        (``floor(epoch / poll)``), so that all of them start each cycle together and share it."""
        from apscheduler.triggers.interval import IntervalTrigger

        if not self.store.is_postgres:
            return IntervalTrigger(seconds=poll, jitter=jitter, timezone=UTC)
        boundary = datetime.fromtimestamp(math.ceil(time.time() / poll) * poll, UTC)
        return IntervalTrigger(seconds=poll, start_date=boundary, jitter=jitter, timezone=UTC)

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
            ("cycle", self.run_cycle, self._cycle_trigger(poll, jitter)),
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
            self._stopping.set()
        try:
            self.flush_outbox()
        except Exception:
            log.exception("final_flush_failed")
        self._runtime.close()
        self._endpoint.stop()
        self.store.close()
        log.info("daemon_stopped")
