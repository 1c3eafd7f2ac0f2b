"""The Google Cloud provider: discover GPU VMs, read their GPU metrics, stop one.

Projects are independent units: each is listed and measured concurrently, and a project whose
API call fails is reported (``UnitError`` for discovery, ``GpuUtilisation.error`` for metrics)
while the others carry on. Its VMs are then absent or ``unmeasured`` — never stopped.

Calls per cycle: one paged ``instances.aggregatedList`` per project, one paged
``ListTimeSeries`` per project and metric (never one per VM), and ``machineTypes.aggregatedList``
about once a day.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from guardian.config import Config
from guardian.errors import ConfigError, Unavailable
from guardian.model import GpuInstance, GpuUtilisation
from guardian.providers import Discovery, StopResult, UnitError
from guardian.providers.gcp.clients import GcpClients, resolve_credentials
from guardian.providers.gcp.discovery import (
    AcceleratorSpec,
    MachineTypeAccelerators,
    ProjectListing,
    list_running_instances,
    lookup_machine_types,
)
from guardian.providers.gcp.errors import map_google_error
from guardian.providers.gcp.metrics import (
    GcpInstanceSeriesSpec,
    MetricKind,
    ProjectSeries,
    fetch_project_series,
    utilisation_for,
)

__all__ = ["GcpProvider", "probe_credentials"]

log = structlog.get_logger(__name__)


class GcpProvider:
    """``Provider`` for the projects in ``gcp.projects`` (or the ADC default project)."""

    name = "gcp"

    def __init__(
        self,
        config: Config,
        *,
        api_deadline_s: float = 60.0,
        stop_timeout_s: float = 300.0,
        max_workers: int = 8,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        instance_series: Sequence[GcpInstanceSeriesSpec] = (),
    ) -> None:
        self._config = config
        self._gcp = config.gcp
        if config.gcp.metrics.period < 60:
            # Cloud Monitoring rejects shorter alignment periods; say so once, here, rather
            # than leave every VM unmeasured with an API error each cycle.
            raise ConfigError(
                "gcp.metrics.period: Cloud Monitoring aligns series to 60 seconds or more"
            )
        credentials, adc_project = resolve_credentials(config.gcp)
        self.credentials_description = _describe_credentials(credentials)
        projects = list(dict.fromkeys(config.gcp.projects)) or (
            [adc_project] if adc_project else []
        )
        if not projects:
            raise ConfigError(
                "gcp.projects: list at least one project id (the credentials name no default)"
            )
        self.projects: tuple[str, ...] = tuple(projects)
        self._clients = GcpClients(config.gcp, credentials)
        self._machine_types = MachineTypeAccelerators(clock)
        self._api_deadline_s = api_deadline_s
        self._stop_timeout_s = stop_timeout_s
        self._max_workers = max(1, max_workers)
        # Per-instance series read beside the GPUs' (host CPU, the agent's signals).
        self._instance_series = tuple(instance_series)
        self._calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()

    @property
    def api_calls(self) -> dict[str, int]:
        """Requests (pages) sent since this provider was built, by API method."""
        with self._calls_lock:
            return dict(self._calls)

    def _count(self, calls: dict[str, int]) -> None:
        with self._calls_lock:
            self._calls.update(calls)

    def _retry(self) -> Any:
        """Retry transient failures within the cycle's budget, then give the unit up."""
        from google.api_core import exceptions, retry

        return retry.Retry(
            initial=0.2,
            maximum=10.0,
            multiplier=2.0,
            predicate=retry.if_exception_type(
                exceptions.ServiceUnavailable,
                exceptions.DeadlineExceeded,
                exceptions.TooManyRequests,
                exceptions.InternalServerError,
            ),
            timeout=self._api_deadline_s,
        )

    @property
    def _call_timeout_s(self) -> float:
        return min(30.0, self._api_deadline_s)

    # --- discovery -----------------------------------------------------------------------

    def _list_project(self, project: str) -> ProjectListing:
        return list_running_instances(
            project,
            client=self._clients.instances(),
            retry=self._retry(),
            timeout_s=self._call_timeout_s,
        )

    def _accelerators(
        self, listings: Sequence[ProjectListing], calls: dict[str, int]
    ) -> dict[str, AcceleratorSpec | None]:
        """One machineTypes lookup per cycle at most, for every project's unknown types."""
        names = set().union(*(listing.unresolved_machine_types() for listing in listings))
        if not names:
            return {}

        def fetch(missing: Sequence[str]) -> Mapping[str, AcceleratorSpec | None]:
            # Machine types are public and the same in every project: ask through the first.
            return lookup_machine_types(
                missing,
                project=listings[0].project,
                client=self._clients.machine_types(),
                retry=self._retry(),
                timeout_s=self._call_timeout_s,
                calls=calls,
            )

        answers, problem = self._machine_types.resolve(names, fetch)
        if problem:
            log.warning(
                "gcp_machine_types_unavailable",
                error=problem,
                fallback="accelerator-optimised VMs are recognised by family name only",
            )
        return answers

    def discover(self) -> Discovery:
        errors: list[UnitError] = []
        calls: Counter[str] = Counter()
        listings: list[ProjectListing] = []
        workers = min(self._max_workers, len(self.projects))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gcp-discover") as pool:
            futures = {p: pool.submit(self._list_project, p) for p in self.projects}
        for project, future in futures.items():
            try:
                listing = future.result()
            except Exception as exc:  # one project's failure never stops the others
                error = map_google_error(exc, "instances.aggregatedList")
                log.warning("gcp_discovery_failed", project=project, error=str(error))
                errors.append(UnitError("gcp", project, "global", error.operation, str(error)))
                calls["compute.instances.aggregatedList"] += 1
                continue
            listings.append(listing)
            errors.extend(listing.errors)
            calls.update(listing.api_calls)
        lookup_calls: dict[str, int] = {}
        accelerators = self._accelerators(listings, lookup_calls) if listings else {}
        calls.update(lookup_calls)
        instances = [
            instance
            for listing in listings
            for instance in listing.gpu_instances(accelerators, self._config.owner_tags)
        ]
        self._count(dict(calls))
        instances.sort(key=lambda i: i.key)
        log.debug("gcp_discovered", projects=len(self.projects), instances=len(instances))
        return Discovery(tuple(instances), tuple(errors), dict(calls))

    # --- utilisation ---------------------------------------------------------------------

    def _metric_jobs(self, projects: Sequence[str]) -> list[tuple[str, str, MetricKind, str]]:
        """(project, slot, kind, metric type): one query each; slot names the result."""
        metrics = self._gcp.metrics
        kinds: list[tuple[str, MetricKind, str]] = [("util", "util", metrics.gpu_util)]
        if metrics.gpu_mem_used:
            kinds.append(("mem", "mem", metrics.gpu_mem_used))
        kinds += [(spec.key, "instance", spec.metric_type) for spec in self._instance_series]
        return [(project, *kind) for project in projects for kind in kinds]

    def _fetch(
        self, project: str, kind: MetricKind, metric_type: str, start: datetime, end: datetime
    ) -> ProjectSeries:
        result = fetch_project_series(
            self._clients.metrics(),
            project,
            metric_type,
            kind,
            start=start,
            end=end,
            period_s=self._gcp.metrics.period,
            retry=self._retry(),
            timeout_s=self._call_timeout_s,
        )
        self._count({"monitoring.listTimeSeries": result.pages})
        return result

    def utilisation(
        self, instances: Sequence[GpuInstance], start: datetime, end: datetime
    ) -> Iterator[tuple[str, GpuUtilisation]]:
        ours = [i for i in instances if i.provider == self.name]
        projects = sorted({i.account for i in ours})
        jobs = self._metric_jobs(projects)
        results: dict[tuple[str, str], ProjectSeries | Exception] = {}
        if jobs:
            workers = min(self._max_workers, len(jobs))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gcp-metrics") as pool:
                futures = {
                    (project, slot): pool.submit(self._fetch, project, kind, metric, start, end)
                    for project, slot, kind, metric in jobs
                }
            for job, future in futures.items():
                try:
                    results[job] = future.result()
                except Exception as raised:  # the project's VMs become unmeasured, no more
                    exc = map_google_error(raised, "monitoring.listTimeSeries")
                    log.warning("gcp_metrics_failed", project=job[0], metric=job[1], error=str(exc))
                    results[job] = exc
        period = self._gcp.metrics.period
        # One query per project and metric answers for all its VMs at once: nothing to stream.
        for i in ours:
            yield (
                i.key,
                utilisation_for(
                    i,
                    results[(i.account, "util")],
                    results.get((i.account, "mem")),
                    self._gcp.metrics.gpu_util,
                    period,
                    instance_results={
                        spec: results[(i.account, spec.key)]
                        for spec in self._instance_series
                        if (i.account, spec.key) in results
                    },
                ),
            )

    # --- stop ----------------------------------------------------------------------------

    def stop(self, instance: GpuInstance, *, hibernate: bool = False) -> StopResult:
        """Stop one VM and wait for its zone operation. Never deletes; never suspends a GPU VM
        (GCE cannot suspend VMs with GPUs attached, so ``hibernate`` falls back to stop)."""
        key = instance.key
        if instance.has_instance_store and not self._config.enforce.allow_instance_store_loss:
            return StopResult(
                key,
                False,
                "stop",
                "has local SSD, whose data a stop discards; not stopped "
                "(set enforce.allow_instance_store_loss to allow it)",
            )
        from google.cloud import compute_v1

        request = compute_v1.StopInstanceRequest(
            project=instance.account,
            zone=instance.zone,
            instance=instance.name or instance.instance_id,
        )
        if instance.has_instance_store:
            # The API refuses to stop a VM with local SSD unless told what to do with the data.
            request.discard_local_ssd = True
        try:
            operation = self._clients.instances().stop_unary(
                request=request, retry=self._retry(), timeout=self._call_timeout_s
            )
            self._count({"compute.instances.stop": 1})
            operation = self._wait(instance, operation)
        except Exception as exc:
            error = map_google_error(exc, "instances.stop")
            lost = isinstance(error, Unavailable)  # the answer was lost, not necessarily the stop
            return StopResult(key, False, "stop", str(error), unconfirmed=lost)
        note = " (GCE cannot suspend GPU VMs; stopped instead)" if hibernate else ""
        done = operation.status == compute_v1.Operation.Status.DONE
        if not done:
            return StopResult(
                key,
                False,
                "stop",
                f"stop requested, but operation {operation.name} still "
                f"{operation.status.name} after {self._stop_timeout_s:g} s",
                unconfirmed=True,  # it may well finish: the next cycle reads the VM's state
            )
        problems = [e.message or e.code for e in operation.error.errors]
        if problems:
            return StopResult(key, False, "stop", "stop failed: " + "; ".join(problems))
        log.info("gcp_instance_stopped", instance_id=instance.instance_id, operation=operation.name)
        return StopResult(key, True, "stop", f"stopped (operation {operation.name}){note}")

    def _wait(self, instance: GpuInstance, operation: Any) -> Any:
        """Poll the zone operation with the same endpoint and credentials as the stop call."""
        from google.cloud import compute_v1

        operations = self._clients.zone_operations()
        deadline = time.monotonic() + self._stop_timeout_s
        while operation.status != compute_v1.Operation.Status.DONE:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # zoneOperations.wait returns when the operation is done or after about two
            # minutes, whichever is first; the loop covers the rest of our own deadline.
            operation = operations.wait(
                project=instance.account,
                zone=instance.zone,
                operation=operation.name,
                # At least a few seconds a call: a shorter read timeout would turn a slow
                # answer into a failure rather than a pending stop.
                timeout=min(max(remaining, 5.0), 130.0),
                retry=self._retry(),
            )
            self._count({"compute.zoneOperations.wait": 1})
        return operation

    def close(self) -> None:
        self._clients.close()


def _describe_credentials(credentials: Any) -> str:
    email = getattr(credentials, "service_account_email", None)
    if email and email != "default":
        return f"service account {email}"
    kind = type(credentials).__name__
    if kind == "AnonymousCredentials":
        return "anonymous credentials"
    if email == "default":
        return "the VM's default service account"
    if kind == "Credentials" and hasattr(credentials, "refresh_token"):
        return "user credentials (gcloud auth application-default login)"
    return f"{kind} credentials"


def probe_credentials(config: Config) -> str:
    """That the credentials may list instances and read time series in every project.

    One smallest-possible call of each kind per project; raises ``AuthError`` and friends with
    the project named (``guardian check-config --probe`` prints the line).
    """
    from google.cloud import compute_v1

    from guardian.providers.gcp.discovery import INSTANCE_FILTER
    from guardian.providers.gcp.metrics import build_request

    provider = GcpProvider(config, api_deadline_s=20.0)
    clients = provider._clients
    end = datetime.now(UTC)
    start = end - timedelta(minutes=10)
    try:
        for project in provider.projects:
            operation = "instances.aggregatedList"
            try:
                request = compute_v1.AggregatedListInstancesRequest(
                    project=project, filter=INSTANCE_FILTER, max_results=1
                )
                pager = clients.instances().aggregated_list(request=request, timeout=20.0)
                next(iter(pager.pages), None)
                operation = "monitoring.listTimeSeries"
                query = build_request(
                    project, config.gcp.metrics.gpu_util, "util", start=start, end=end, period_s=60
                )
                query.page_size = 1
                next(
                    iter(clients.metrics().list_time_series(request=query, timeout=20.0).pages),
                    None,
                )
            except Exception as exc:
                error = map_google_error(exc, operation)
                raise type(error)(
                    f"project {project}: {error}", provider="gcp", operation=operation
                ) from exc
        listed = ", ".join(provider.projects)
        return f"{provider.credentials_description}; may list VMs and read GPU metrics in {listed}"
    finally:
        provider.close()
