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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from guardian.config import Config
from guardian.errors import ProviderError, Unavailable
from guardian.model import GpuInstance, GpuUtilisation
from guardian.policy import controller_label
from guardian.providers import Caller, Discovery, Patience, StopResult, Unit, UnitError, UnitPlan
from guardian.providers.gcp.clients import PATIENCE, Api, GcpClients, resolve_credentials
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
from guardian.providers.gcp.projects import ProjectDirectory, compute_disabled

__all__ = ["GcpProvider"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _Query:
    """One ListTimeSeries per project: what it reads and how."""

    kind: MetricKind
    metric_type: str
    period_s: int
    labels: tuple[tuple[str, str], ...] = ()


class GcpProvider:
    """``Provider`` for the projects in ``gcp.projects`` (or the ADC default project)."""

    name = "gcp"

    def __init__(
        self,
        config: Config,
        *,
        caller: Caller = "daemon",
        patience: Patience | None = None,
        stop_timeout_s: float = 300.0,
        max_workers: int = 8,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        instance_series: Sequence[GcpInstanceSeriesSpec] = (),
    ) -> None:
        self._config = config
        self._gcp = config.gcp
        credentials, adc_project = resolve_credentials(config.gcp)
        self.credentials_description = _describe_credentials(credentials)
        self._clients = GcpClients(config.gcp, credentials)
        self._machine_types = MachineTypeAccelerators(clock)
        self._patience = patience or PATIENCE[caller]
        self._directory = ProjectDirectory(
            config.gcp,
            self._clients,
            adc_project,
            retry=self._retry,
            timeout_s=self._call_timeout_s,
        )
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
            timeout=self._patience.attempts * self._call_timeout_s,
        )

    @property
    def _call_timeout_s(self) -> float:
        """One call's deadline (gRPC) or socket timeout (REST): connecting and answering."""
        return self._patience.connect_s + self._patience.read_s

    def _unit_failure(self, exc: BaseException, operation: str, api: Api) -> ProviderError:
        """The mapped error; one that is an outage names the endpoint that did not answer."""
        error = map_google_error(exc, operation)
        if isinstance(error, Unavailable):
            return Unavailable(
                f"{error} (endpoint {self._clients.endpoint(api)})",
                provider="gcp",
                operation=error.operation,
            )
        return error

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

    @property
    def projects(self) -> tuple[str, ...]:
        """The projects audited now (below a folder: as last listed)."""
        return self._directory.resolve().projects

    def units(self) -> UnitPlan:
        """One unit per project: its aggregated list covers every zone."""
        tree = self._directory.resolve()
        self._count(tree.api_calls)
        return UnitPlan(tuple(Unit(self.name, p, "global") for p in tree.projects), tree.errors)

    def discover(self, units: Sequence[Unit] | None = None) -> Discovery:
        errors: list[UnitError] = []
        calls: Counter[str] = Counter()
        listings: list[ProjectListing] = []
        if units is None:
            plan = self.units()
            errors.extend(plan.errors)
            units = plan.units
        projects = list(dict.fromkeys(u.account for u in units if u.provider == self.name))
        workers = max(1, min(self._max_workers, len(projects)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gcp-discover") as pool:
            futures = {p: pool.submit(self._list_project, p) for p in projects}
        for project, future in futures.items():
            try:
                listing = future.result()
            except Exception as exc:  # one project's failure never stops the others
                calls["compute.instances.aggregatedList"] += 1
                if compute_disabled(exc):  # no Compute API, so no VMs: nothing to report
                    log.info("gcp_compute_disabled", project=project)
                    continue
                error = self._unit_failure(exc, "instances.aggregatedList", "compute")
                log.warning("gcp_discovery_failed", project=project, error=str(error))
                errors.append(UnitError("gcp", project, "global", error.operation, str(error)))
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
        log.debug("gcp_discovered", projects=len(projects), instances=len(instances))
        return Discovery(tuple(instances), tuple(errors), dict(calls))

    # --- utilisation ---------------------------------------------------------------------

    def _metric_jobs(self, projects: Sequence[str]) -> list[tuple[str, str, _Query]]:
        """(project, slot, query): one query each; slot names the result."""
        metrics = self._gcp.metrics
        period = metrics.period
        kinds: list[tuple[str, _Query]] = [("util", _Query("util", metrics.gpu_util, period))]
        if metrics.gpu_mem_used:
            kinds.append(("mem", _Query("mem", metrics.gpu_mem_used, period)))
        kinds += [
            (spec.key, _Query("instance", spec.metric_type, spec.period_s or period, spec.labels))
            for spec in self._instance_series
        ]
        return [(project, slot, query) for project in projects for slot, query in kinds]

    def _fetch(self, project: str, query: _Query, start: datetime, end: datetime) -> ProjectSeries:
        result = fetch_project_series(
            self._clients.metrics(),
            project,
            query.metric_type,
            query.kind,
            start=start,
            end=end,
            period_s=query.period_s,
            retry=self._retry(),
            timeout_s=self._call_timeout_s,
            labels=query.labels,
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
                    (project, slot): pool.submit(self._fetch, project, query, start, end)
                    for project, slot, query in jobs
                }
            for job, future in futures.items():
                try:
                    results[job] = future.result()
                except Exception as raised:  # the project's VMs become unmeasured, no more
                    exc = self._unit_failure(raised, "monitoring.listTimeSeries", "monitoring")
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
        if instance.managed_by is not None:  # a second lock behind enforcement's gates
            owner = instance.managed_by
            return StopResult(
                key,
                False,
                "stop",
                f"managed by {controller_label(owner.kind)} {owner.name}, which would replace "
                "a stopped VM: not stopped",
                permanent=True,
            )
        if instance.has_instance_store and self._config.enforce.local_disks == "alert":
            return StopResult(
                key,
                False,
                "stop",
                "has local SSD, whose data a stop discards; not stopped "
                "(enforce.local_disks: alert)",
                permanent=True,
            )
        from google.cloud import compute_v1

        request = compute_v1.StopInstanceRequest(
            project=instance.account,
            zone=instance.zone,
            instance=instance.name or instance.instance_id,
        )
        if instance.has_instance_store:
            # The API refuses to stop a VM with local SSD unless told what to do with the data;
            # enforcement's local-disk gate has found it unused (or local_disks: stop allows it).
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

    def stop_protection(self, instance: GpuInstance) -> bool | None:
        """Compute Engine has no API stop protection (deletion protection does not stop a
        stop), so there is nothing to read."""
        return False

    def describe(self, instance: GpuInstance) -> GpuInstance:
        """This VM now: one ``instances.get`` (and, for a machine type not yet known, the
        name-filtered machine-types lookup, cached for a day)."""
        from google.cloud import compute_v1

        request = compute_v1.GetInstanceRequest(
            project=instance.account,
            zone=instance.zone,
            instance=instance.name or instance.instance_id,
        )
        try:
            raw = self._clients.instances().get(
                request=request, retry=self._retry(), timeout=self._call_timeout_s
            )
        except Exception as exc:
            raise map_google_error(exc, "instances.get") from exc
        finally:
            self._count({"compute.instances.get": 1})
        if str(raw.status) != "RUNNING":
            raise ProviderError(f"VM {raw.name} is {raw.status}, not running", provider=self.name)
        listing = ProjectListing(instance.account, raw_instances=[raw])
        calls: dict[str, int] = {}
        accelerators = self._accelerators([listing], calls)
        self._count(calls)
        found = listing.gpu_instances(accelerators, self._config.owner_tags)
        if not found:
            raise ProviderError(f"VM {raw.name} has no GPU", provider=self.name)
        return found[0]

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
