"""The state the Compute Engine fake serves: VMs, machine types, operations, recorded requests.

Plain data, mutable between calls so a test (or the demo) can change the simulated cloud;
``gcp_compute_fake`` serves it over HTTP.
"""

from __future__ import annotations

import itertools
import re
import threading
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "COMPUTE_API",
    "DEFAULT_MACHINE_TYPES",
    "FakeComputeState",
    "FakeMachineType",
    "FakeVm",
    "RecordedRequest",
    "stable_instance_id",
]

COMPUTE_API = "https://www.googleapis.com/compute/v1"


@dataclass(frozen=True)
class FakeMachineType:
    name: str
    guest_cpus: int
    memory_mb: int
    accelerators: tuple[tuple[str, int], ...] = ()  # (accelerator type, count)


def _mt(
    name: str, cpus: int, mem_gib: float, acc: tuple[tuple[str, int], ...] = ()
) -> FakeMachineType:
    return FakeMachineType(name, cpus, int(mem_gib * 1024), acc)


DEFAULT_MACHINE_TYPES: tuple[FakeMachineType, ...] = (
    _mt("e2-standard-4", 4, 16),
    _mt("e2-standard-8", 8, 32),
    _mt("n1-standard-4", 4, 15),
    _mt("n1-standard-8", 8, 30),
    _mt("n1-standard-16", 16, 60),
    _mt("n2-standard-8", 8, 32),
    _mt("a2-highgpu-1g", 12, 85, (("nvidia-tesla-a100", 1),)),
    _mt("a2-highgpu-2g", 24, 170, (("nvidia-tesla-a100", 2),)),
    _mt("a2-highgpu-4g", 48, 340, (("nvidia-tesla-a100", 4),)),
    _mt("a2-ultragpu-1g", 12, 170, (("nvidia-a100-80gb", 1),)),
    _mt("a3-highgpu-8g", 208, 1872, (("nvidia-h100-80gb", 8),)),
    _mt("g2-standard-4", 4, 16, (("nvidia-l4", 1),)),
    _mt("g2-standard-8", 8, 32, (("nvidia-l4", 1),)),
    _mt("g2-standard-24", 24, 96, (("nvidia-l4", 2),)),
)


def stable_instance_id(project: str, name: str) -> int:
    """A numeric VM id that is the same every run (Compute Engine ids are uint64)."""
    return 1_000_000_000_000 + zlib.crc32(f"{project}/{name}".encode()) * 1000


@dataclass
class FakeVm:
    """One VM as the fake serves it. ``guest_accelerators`` is what the instance lists itself
    (N1 with attached GPUs); accelerator-optimised types get theirs from the machine type."""

    name: str
    zone: str
    machine_type: str
    guest_accelerators: tuple[tuple[str, int], ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    provisioning_model: str = "STANDARD"  # STANDARD | SPOT | PREEMPTIBLE (legacy)
    local_ssd: bool = False
    # Long before any test's clock unless given: a VM created "a while ago", on any date.
    created_at: datetime = field(default_factory=lambda: datetime.fromtimestamp(0, UTC))
    last_started_at: datetime | None = None
    status: str = "RUNNING"
    instance_id: int = 0  # 0: derived from project and name when added
    metadata: dict[str, str] = field(default_factory=dict)  # e.g. created-by (a MIG's member)
    reservation: str | None = None  # consumed by name (SPECIFIC_RESERVATION affinity)

    def to_json(self, project: str) -> dict[str, Any]:
        zone_url = f"{COMPUTE_API}/projects/{project}/zones/{self.zone}"
        disks: list[dict[str, Any]] = [
            {"type": "PERSISTENT", "boot": True, "deviceName": "boot", "index": 0}
        ]
        if self.local_ssd:
            disks.append({"type": "SCRATCH", "interface": "NVME", "deviceName": "local-ssd-0"})
        body: dict[str, Any] = {
            "kind": "compute#instance",
            "id": str(self.instance_id),
            "name": self.name,
            "zone": zone_url,
            "machineType": f"{zone_url}/machineTypes/{self.machine_type}",
            "status": self.status,
            "labels": dict(self.labels),
            "scheduling": {
                "provisioningModel": "SPOT" if self.provisioning_model == "SPOT" else "STANDARD",
                "preemptible": self.provisioning_model in ("SPOT", "PREEMPTIBLE"),
                "onHostMaintenance": "TERMINATE",
            },
            "disks": disks,
            "creationTimestamp": _rfc3339(self.created_at),
            "selfLink": f"{zone_url}/instances/{self.name}",
        }
        if self.last_started_at is not None:
            body["lastStartTimestamp"] = _rfc3339(self.last_started_at)
        if self.metadata:
            body["metadata"] = {
                "kind": "compute#metadata",
                "items": [{"key": k, "value": v} for k, v in self.metadata.items()],
            }
        if self.reservation is not None:
            body["reservationAffinity"] = {
                "consumeReservationType": "SPECIFIC_RESERVATION",
                "key": "compute.googleapis.com/reservation-name",
                "values": [self.reservation],
            }
        if self.guest_accelerators:
            body["guestAccelerators"] = [
                {"acceleratorType": f"{zone_url}/acceleratorTypes/{kind}", "acceleratorCount": n}
                for kind, n in self.guest_accelerators
            ]
        return body


def _rfc3339(moment: datetime) -> str:
    # Compute Engine writes Pacific time with milliseconds, e.g. 2026-11-20T08:00:00.000-08:00.
    return moment.isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: Mapping[str, str]


@dataclass
class Operation:
    name: str
    project: str
    zone: str
    vm: FakeVm
    polls_left: int
    status: str = "RUNNING"


@dataclass
class FakeComputeState:
    """Everything the fake serves; mutate it between calls to change the simulated cloud."""

    projects: dict[str, list[FakeVm]] = field(default_factory=dict)
    machine_types: tuple[FakeMachineType, ...] = DEFAULT_MACHINE_TYPES
    extra_zones: tuple[str, ...] = ("europe-west4-a", "asia-east1-c")  # empty zones, warnings
    page_size: int = 500  # the fake's own cap on items per page, below the client's maxResults
    fail_projects: dict[str, tuple[int, str]] = field(default_factory=dict)  # project → (HTTP, msg)
    compute_disabled: set[str] = field(default_factory=set)  # projects without the Compute API
    fail_machine_types: tuple[int, str] | None = None
    unreachable_zones: set[str] = field(default_factory=set)
    operation_polls: int = 1  # zone operation polls before a stop is DONE
    requests: list[RecordedRequest] = field(default_factory=list)
    operations: dict[str, Operation] = field(default_factory=dict)
    operation_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, project: str, vms: Iterable[FakeVm]) -> None:
        for vm in vms:
            if not vm.instance_id:
                vm.instance_id = stable_instance_id(project, vm.name)
            self.projects.setdefault(project, []).append(vm)

    def vm(self, project: str, name: str) -> FakeVm:
        for vm in self.projects.get(project, []):
            if name in (vm.name, str(vm.instance_id)):
                return vm
        raise KeyError(f"{project}/{name}")

    def calls(self, method: str, pattern: str) -> list[RecordedRequest]:
        """Recorded requests whose path matches a regular expression."""
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]


def finish_operation(operation: Operation) -> None:
    operation.status = "DONE"
    operation.vm.status = "TERMINATED"  # what Compute Engine calls a stopped VM


def operation_json(operation: Operation) -> dict[str, Any]:
    zone_url = f"{COMPUTE_API}/projects/{operation.project}/zones/{operation.zone}"
    return {
        "kind": "compute#operation",
        "id": str(abs(hash(operation.name)) % 10**18),
        "name": operation.name,
        "zone": zone_url,
        "operationType": "stop",
        "targetLink": f"{zone_url}/instances/{operation.vm.name}",
        "targetId": str(operation.vm.instance_id),
        "status": operation.status,
        "progress": 100 if operation.status == "DONE" else 0,
        "selfLink": f"{zone_url}/operations/{operation.name}",
    }
