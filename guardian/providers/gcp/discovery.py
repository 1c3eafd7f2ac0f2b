"""Find running GPU VMs in one GCP project: one paged ``instances.aggregatedList`` call.

A VM counts as a GPU VM when it has ``guestAccelerators`` (N1 with attached GPUs, and the
accelerator-optimised families, which list theirs too) or when its machine type carries
accelerators. Which machine types do is learned from ``machineTypes.aggregatedList`` and cached
(``MachineTypeAccelerators``) — new families are then recognised without a code change. Only
when that lookup fails do we fall back to the known family names, so a permission gap on
machine types does not hide an idle a2-highgpu from the audit.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from guardian.model import GpuInstance, Lifecycle
from guardian.policy import gcp_managed_by
from guardian.providers import UnitError
from guardian.providers.gcp.errors import map_google_error

__all__ = [
    "INSTANCE_FILTER",
    "AcceleratorSpec",
    "MachineTypeAccelerators",
    "ProjectListing",
    "fallback_accelerators",
    "list_running_instances",
    "lookup_machine_types",
    "machine_types_filter",
    "parse_instance",
]

log = structlog.get_logger(__name__)

INSTANCE_FILTER = "status = RUNNING"
# Aggregated-list scopes with nothing in them say so with this warning; it is not a problem.
_NO_RESULTS = "NO_RESULTS_ON_PAGE"
_MACHINE_TYPES_TTL = timedelta(hours=24)
_LOOKUP_PAUSE = timedelta(minutes=10)


@dataclass(frozen=True)
class AcceleratorSpec:
    model: str  # accelerator type name, e.g. nvidia-tesla-a100
    count: int


# Used only when machineTypes cannot be read. The GPU count is in the a-series name; g2/g4 need
# a table. Families not listed here are found through machineTypes, never guessed.
_A_SERIES = re.compile(r"^(a2|a3|a4|a4x)-[a-z]+gpu-(\d+)g(?:-[a-z0-9]+)?$")
_A_MODELS = {
    "a2-highgpu": "nvidia-tesla-a100",
    "a2-megagpu": "nvidia-tesla-a100",
    "a2-ultragpu": "nvidia-a100-80gb",
    "a3-highgpu": "nvidia-h100-80gb",
    "a3-edgegpu": "nvidia-h100-80gb",
    "a3-megagpu": "nvidia-h100-mega-80gb",
    "a3-ultragpu": "nvidia-h200-141gb",
    "a4-highgpu": "nvidia-b200",
    "a4x-highgpu": "nvidia-gb200",
}
_G2_GPUS = {4: 1, 8: 1, 12: 1, 16: 1, 24: 2, 32: 1, 48: 4, 96: 8}
_G4_GPUS = {48: 1, 96: 2, 192: 4, 384: 8}


def fallback_accelerators(machine_type: str) -> AcceleratorSpec | None:
    """Accelerators of a well-known accelerator-optimised type, from its name alone."""
    match = _A_SERIES.match(machine_type)
    if match:
        prefix = "-".join(machine_type.split("-")[:2])
        return AcceleratorSpec(_A_MODELS.get(prefix, ""), int(match.group(2)))
    for prefix, table, model in (
        ("g2-standard-", _G2_GPUS, "nvidia-l4"),
        ("g4-standard-", _G4_GPUS, "nvidia-rtx-pro-6000"),
    ):
        if machine_type.startswith(prefix):
            size = machine_type.removeprefix(prefix)
            if size.isdigit() and int(size) in table:
                return AcceleratorSpec(model, table[int(size)])
    return None


class MachineTypeAccelerators:
    """machine type name → its accelerators (None: it has none), each learned for a day.

    Machine type names mean the same in every zone and project, so one lookup serves every
    project. Only names seen on running VMs are looked up (``machine_types_filter``), so a
    lookup is a page or two, not the whole catalogue. Thread-safe: projects are discovered
    concurrently and one of them fetches while the others wait for its answer.
    """

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._clock = clock
        self._known: dict[str, tuple[AcceleratorSpec | None, datetime]] = {}
        self._failed_at: datetime | None = None
        self._lock = threading.Lock()

    def resolve(
        self,
        names: Iterable[str],
        fetch: Callable[[Sequence[str]], Mapping[str, AcceleratorSpec | None]],
    ) -> tuple[dict[str, AcceleratorSpec | None], str | None]:
        """Accelerators of each name, looking up those new or older than a day.

        Returns the answers and, when the lookup failed, why (the names it should have answered
        then come from ``fallback_accelerators``). After a failure, lookups pause a few minutes
        so a missing permission costs one failed call per cycle at most.
        """
        wanted = set(names)
        with self._lock:
            now = self._clock()
            missing = sorted(
                name
                for name in wanted
                if name not in self._known or now - self._known[name][1] > _MACHINE_TYPES_TTL
            )
            problem: str | None = None
            paused = self._failed_at is not None and now - self._failed_at < _LOOKUP_PAUSE
            if missing and not paused:
                try:
                    found = fetch(missing)
                except Exception as exc:  # mapped here; logged by the caller
                    problem = str(map_google_error(exc, "machineTypes.aggregatedList"))
                    self._failed_at = now
                else:
                    self._failed_at = None
                    for name in missing:
                        # Not listed at all (custom-8-30720 and the like): no accelerators of
                        # its own; attached GPUs still show up as guestAccelerators.
                        self._known[name] = (found.get(name), now)
            elif missing:
                problem = "machineTypes lookup paused after a recent failure"
            answers = {
                name: self._known[name][0] if name in self._known else fallback_accelerators(name)
                for name in wanted
            }
            return answers, problem

    @property
    def size(self) -> int:
        return len(self._known)


_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


def machine_types_filter(names: Iterable[str]) -> str:
    """Compute's ``eq`` filter is a full-match RE2 expression: one call for all the names."""
    valid = sorted({name for name in names if _NAME.match(name)})
    return f'name eq "({"|".join(valid)})"'


def accelerators_from_machine_types(pages: Iterable[Any]) -> dict[str, AcceleratorSpec | None]:
    """Reduce ``machineTypes.aggregatedList`` pages to name → accelerators."""
    known: dict[str, AcceleratorSpec | None] = {}
    for page in pages:
        for scoped in page.items.values():
            for machine_type in scoped.machine_types:
                accelerators = list(machine_type.accelerators)
                if accelerators:
                    first = accelerators[0]
                    known[machine_type.name] = AcceleratorSpec(
                        _last_segment(first.guest_accelerator_type),
                        sum(int(a.guest_accelerator_count) for a in accelerators),
                    )
                else:
                    known.setdefault(machine_type.name, None)
    return known


def _last_segment(url_or_name: str) -> str:
    return url_or_name.rstrip("/").rsplit("/", 1)[-1]


def _parse_time(value: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# Provisioning models whose meaning we know ("": not stated, the API's default STANDARD;
# RESERVATION_BOUND: runs in a reservation for its whole life, so it is reserved capacity).
# Anything else (FLEX_START, a model Google adds later) is not guessed at: skipped, said why.
_RESERVATION_BOUND = "RESERVATION_BOUND"
_KNOWN_PROVISIONING = frozenset({"", "STANDARD", "SPOT", _RESERVATION_BOUND})


def _lifecycle(scheduling: Any) -> Lifecycle:
    if str(scheduling.provisioning_model).upper() == "SPOT":
        return Lifecycle.SPOT
    if scheduling.preemptible:
        return Lifecycle.PREEMPTIBLE
    return Lifecycle.ON_DEMAND


def _owner(labels: Mapping[str, str], owner_tags: Sequence[str]) -> str | None:
    # GCP label keys are lowercase, so "Owner" and "CreatedBy" are looked up as "owner" and
    # "createdby"; the first configured key that is present wins.
    for key in owner_tags:
        value = labels.get(key.lower())
        if value:
            return value
    return None


def _metadata(raw: Any) -> dict[str, str]:
    """The VM's metadata items (``created-by`` names the managed instance group)."""
    items = getattr(getattr(raw, "metadata", None), "items", None) or []
    return {str(item.key): str(item.value) for item in items}


_SPECIFIC = "SPECIFIC_RESERVATION"


def _reservation(raw: Any) -> str | None:
    """The reservation a VM consumes by name (``SPECIFIC_RESERVATION`` affinity), if any.

    A VM with ``ANY_RESERVATION`` may or may not land in one; without listing the project's
    reservations that cannot be told, so it is not counted as reserved. A ``RESERVATION_BOUND``
    VM always runs in one.
    """
    affinity = getattr(raw, "reservation_affinity", None)
    names: list[str] = []
    if affinity is not None and str(affinity.consume_reservation_type) == _SPECIFIC:
        names = [_last_segment(str(value)) for value in affinity.values]
        if not names:
            return "a specific reservation"
    bound = str(raw.scheduling.provisioning_model or "").upper() == _RESERVATION_BOUND
    if bound and not names:
        return "reservation-bound"  # its reservation is not named: paid whether it runs or not
    return names[0] if names else None


def _unusable_reason(raw: Any, started: datetime | None) -> str | None:
    """Why a listed GPU VM cannot be judged (None: it can). The listing asks for RUNNING VMs
    only, but a malformed or surprising answer must not be judged, or stopped, as one."""
    status = str(getattr(raw, "status", "") or "")
    if status and status != "RUNNING":
        return f"status {status!r}, not RUNNING"
    if started is None:
        return "no lastStartTimestamp or creationTimestamp"
    # Without its zone a stop cannot be addressed, and without its id the VM's history and
    # episodes would be shared with every other id-less VM.
    if not _last_segment(str(raw.zone or "")):
        return "no zone"
    if not raw.id:
        return "no id"
    model = str(raw.scheduling.provisioning_model or "").upper()
    if model not in _KNOWN_PROVISIONING:
        return f"unknown provisioningModel {model!r}"
    return None


def parse_instance(
    raw: Any,
    project: str,
    machine_type_accelerators: Mapping[str, AcceleratorSpec | None],
    owner_tags: Sequence[str],
) -> GpuInstance | None:
    """Our GpuInstance for one ``compute_v1.Instance``; None when it has no GPU."""
    machine_type = _last_segment(raw.machine_type or "")
    if not machine_type:
        # Its GPUs (unless attached) and its price both come from the machine type.
        log.warning("gcp_instance_skipped", project=project, name=raw.name, reason="no machineType")
        return None
    attached = [a for a in raw.guest_accelerators if int(a.accelerator_count) > 0]
    if attached:
        spec: AcceleratorSpec | None = AcceleratorSpec(
            _last_segment(attached[0].accelerator_type),
            sum(int(a.accelerator_count) for a in attached),
        )
    else:
        spec = machine_type_accelerators.get(machine_type)
    if spec is None or spec.count <= 0:
        return None
    zone = _last_segment(raw.zone)
    labels = dict(raw.labels)
    # Uptime is what the idle rules need: a VM stopped and started again is new since its last
    # start, not since its creation.
    started = _parse_time(raw.last_start_timestamp) or _parse_time(raw.creation_timestamp)
    unusable = _unusable_reason(raw, started)
    if unusable is not None:
        # Judged anyway, a VM without a start time would pass min_uptime as if up since 1970,
        # and one that is not running could be sent a stop: skipped, and said why.
        log.warning("gcp_instance_skipped", project=project, name=raw.name, reason=unusable)
        return None
    assert started is not None
    return GpuInstance(
        provider="gcp",
        account=project,
        region=zone.rsplit("-", 1)[0],
        zone=zone,
        instance_id=str(raw.id),
        instance_type=machine_type,
        launch_time=started,
        gpu_count=spec.count,
        gpu_model=spec.model or None,
        name=raw.name,
        lifecycle=_lifecycle(raw.scheduling),
        tags=labels,
        owner=_owner(labels, owner_tags),
        has_instance_store=any(str(d.type_).upper() == "SCRATCH" for d in raw.disks),
        managed_by=gcp_managed_by(labels, _metadata(raw), raw.name),
        reservation=_reservation(raw),
    )


@dataclass
class ProjectListing:
    """What listing one project produced: its running VMs (raw), unit problems, calls made."""

    project: str
    raw_instances: list[Any] = field(default_factory=list)
    errors: list[UnitError] = field(default_factory=list)
    api_calls: dict[str, int] = field(default_factory=dict)

    def count(self, operation: str) -> None:
        self.api_calls[operation] = self.api_calls.get(operation, 0) + 1

    def unresolved_machine_types(self) -> set[str]:
        """Machine types of VMs that do not list their GPUs themselves."""
        return {
            _last_segment(raw.machine_type)
            for raw in self.raw_instances
            if not any(int(a.accelerator_count) > 0 for a in raw.guest_accelerators)
        }

    def gpu_instances(
        self, accelerators: Mapping[str, AcceleratorSpec | None], owner_tags: Sequence[str]
    ) -> list[GpuInstance]:
        parsed = (
            parse_instance(raw, self.project, accelerators, owner_tags)
            for raw in self.raw_instances
        )
        return [instance for instance in parsed if instance is not None]


def list_running_instances(
    project: str, *, client: Any, retry: Any, timeout_s: float
) -> ProjectListing:
    """Every RUNNING VM of ``project``: one paged aggregatedList. Raises ProviderError."""
    from google.cloud import compute_v1

    result = ProjectListing(project)
    request = compute_v1.AggregatedListInstancesRequest(
        project=project, filter=INSTANCE_FILTER, max_results=500
    )
    operation = "instances.aggregatedList"
    try:
        pager = client.aggregated_list(request=request, retry=retry, timeout=timeout_s)
        for page in pager.pages:
            result.count(f"compute.{operation}")
            for scope, scoped in page.items.items():
                if scoped.instances:
                    result.raw_instances.extend(scoped.instances)
                elif "warning" in scoped and scoped.warning.code != _NO_RESULTS:
                    _scope_warning(result, project, scope, scoped.warning)
            for unreachable in page.unreachables:
                result.errors.append(
                    UnitError("gcp", project, _last_segment(unreachable), operation, "unreachable")
                )
    except Exception as exc:
        raise map_google_error(exc, operation) from exc
    return result


def lookup_machine_types(
    names: Sequence[str],
    *,
    project: str,
    client: Any,
    retry: Any,
    timeout_s: float,
    calls: dict[str, int],
) -> dict[str, AcceleratorSpec | None]:
    """Accelerators of these machine types: one paged, name-filtered aggregatedList."""
    from google.cloud import compute_v1

    request = compute_v1.AggregatedListMachineTypesRequest(
        project=project, filter=machine_types_filter(names), max_results=500
    )
    pager = client.aggregated_list(request=request, retry=retry, timeout=timeout_s)

    def pages() -> Iterable[Any]:
        for page in pager.pages:
            calls["compute.machineTypes.aggregatedList"] = (
                calls.get("compute.machineTypes.aggregatedList", 0) + 1
            )
            yield page

    return accelerators_from_machine_types(pages())


def _scope_warning(result: ProjectListing, project: str, scope: str, warning: Any) -> None:
    """A zone that could not be listed (e.g. UNREACHABLE): its VMs are unknown this cycle."""
    zone = _last_segment(scope)
    message = f"{warning.code}: {warning.message}".strip(": ")
    log.warning("gcp_zone_not_listed", project=project, zone=zone, warning=message)
    result.errors.append(UnitError("gcp", project, zone, "instances.aggregatedList", message))
