"""Find the running GPU instances of one account in one region, with the fewest EC2 calls.

1. Which instance types have GPUs: EC2 has no server-side GPU filter, so ``GpuTypeCatalog``
   describes every type once (about 14 pages of 100) in the first region it sees, and in every
   other region lists only the type *names* offered there (DescribeInstanceTypeOfferings, one or
   two pages) and describes just the names it has not seen. GPU facts do not differ by region or
   account, so the catalog is shared by all of them and kept for a day — in memory, and on disk
   in the state dir per account and region (``type_cache``), where the next audit finds it and
   only checks each region's offerings for a type it does not know.
2. DescribeInstances filtered to ``running`` and to those GPU types by exact name (moto has no
   wildcards, EC2 allows 200 values per filter: chunked), MaxResults 1000, every page.
3. For spot instances only, their spot requests' type (one-time or persistent), batched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from botocore.exceptions import ClientError

from guardian.model import GpuInstance, Lifecycle
from guardian.policy import aws_managed_by
from guardian.providers.aws.errors import AUTH_CODES, error_code
from guardian.providers.aws.limits import AwsLimits
from guardian.providers.aws.type_cache import TypeCacheFile

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import (
        DescribeInstancesResultTypeDef,
        InstanceTypeDef,
        InstanceTypeInfoTypeDef,
    )

__all__ = [
    "GpuType",
    "GpuTypeCatalog",
    "discover_region",
    "gpu_type_from",
    "spot_request_types",
    "to_instance",
]

log = structlog.get_logger(__name__)
T = TypeVar("T")


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class GpuType:
    """What an instance type's GPUs are, from DescribeInstanceTypes."""

    instance_type: str
    gpu_count: int
    gpu_model: str | None  # "NVIDIA A10G"
    gpu_memory_mib: int | None  # per GPU
    has_instance_store: bool  # its local disks are wiped by a stop
    hibernation_supported: bool


def gpu_type_from(info: InstanceTypeInfoTypeDef) -> GpuType | None:
    """The GPU facts of a type, or None for a type without GPUs."""
    gpus = info.get("GpuInfo", {}).get("Gpus", [])
    # A fractional GPU (g6f: an eighth of an L4) has Count 0 but one logical GPU, which is what
    # the guest and its agent see.
    count = sum(max(int(g.get("Count", 0)), int(g.get("LogicalGpuCount", 0))) for g in gpus)
    if count <= 0:
        return None
    first = gpus[0]
    model = " ".join(part for part in (first.get("Manufacturer"), first.get("Name")) if part)
    memory = first.get("MemoryInfo", {}).get("SizeInMiB")
    return GpuType(
        instance_type=info["InstanceType"],
        gpu_count=count,
        gpu_model=model or None,
        gpu_memory_mib=int(memory) if memory else None,
        has_instance_store="InstanceStorageInfo" in info,
        hibernation_supported=bool(info.get("HibernationSupported", False)),
    )


class GpuTypeCatalog:
    """GPU instance types per region, learned once and shared by every account and region.

    Thread-safe: regions are discovered concurrently. Pass one catalog to several providers
    (tests do) to describe the types only once per process.
    """

    def __init__(
        self,
        *,
        limits: AwsLimits | None = None,
        ttl: timedelta = timedelta(hours=24),
        clock: Callable[[], float] = time.monotonic,
        disk: TypeCacheFile | None = None,
    ) -> None:
        self._limits = limits or AwsLimits()
        self._disk = disk  # the catalog kept for a day in the state dir, per account and region
        self._ttl_s = ttl.total_seconds()
        self._clock = clock
        self._lock = threading.Lock()
        self._types: dict[str, GpuType | None] = {}  # every described type; None = no GPU
        self._regions: dict[str, tuple[float, frozenset[str]]] = {}  # region → GPU type names
        self._region_locks: dict[str, threading.Lock] = {}

    def prime(self, infos: Iterable[InstanceTypeInfoTypeDef]) -> None:
        """Learn type descriptions already at hand (a test's or benchmark's copy of the
        catalog), so that no region needs the full listing."""
        with self._lock:
            self._remember(list(infos))

    def gpu_types(self, ec2: EC2Client, region: str, account: str = "") -> dict[str, GpuType]:
        """The GPU types offered in ``region`` (the client must be for that region)."""
        with self._lock:
            region_lock = self._region_locks.setdefault(region, threading.Lock())
        with region_lock:  # accounts sharing a region wait for one lookup instead of repeating it
            cached = self._regions.get(region)
            if cached is None or self._clock() - cached[0] > self._ttl_s:
                offered = self._learn_from_disk(ec2, region, account)
                if offered is None:
                    offered = self._learn(ec2, region)
                    self._save(account, region, offered)
                cached = (self._clock(), frozenset(n for n in offered if self._types.get(n)))
                self._regions[region] = cached
        return {name: gpu for name in sorted(cached[1]) if (gpu := self._types.get(name))}

    def gpu_type(self, ec2: EC2Client, name: str) -> GpuType | None:
        """One type's GPU facts: from what is known, else one DescribeInstanceTypes for it."""
        with self._lock:
            if name in self._types:
                return self._types[name]
        requested: list[Any] = [name]
        response = ec2.describe_instance_types(InstanceTypes=requested)
        with self._lock:
            self._remember(response["InstanceTypes"])
            return self._types.setdefault(name, None)

    def _learn_from_disk(self, ec2: EC2Client, region: str, account: str) -> set[str] | None:
        """The region's offered types from a day-old catalog on disk, checked against today's
        offerings (one call): an unknown type is described and the entry rewritten. None when
        there is no fresh entry."""
        entry = self._disk.load(account, region) if self._disk is not None else None
        if entry is None:
            return None
        with self._lock:
            for name in entry.offered:
                self._types.setdefault(name, None)
            for name, fields in entry.gpu.items():
                self._types[name] = GpuType(**fields)
        known = len(self._types)
        offered = self._learn(ec2, region)
        if len(self._types) > known:  # a type the entry did not know: keep what was learned
            self._save(account, region, offered)
        return offered

    def _save(self, account: str, region: str, offered: set[str]) -> None:
        if self._disk is None:
            return
        with self._lock:
            gpu = {name: asdict(found) for name in offered if (found := self._types.get(name))}
        self._disk.save(account, region, frozenset(offered), gpu)

    def _learn(self, ec2: EC2Client, region: str) -> set[str]:
        with self._lock:
            if not self._types:
                return self._describe_all(ec2)
        try:
            offered = self._offered_names(ec2)
        except ClientError as exc:
            if error_code(exc) not in AUTH_CODES:
                raise
            # An older policy without this permission: the types learned elsewhere still find
            # every instance of a type offered in both regions, which is nearly all of them.
            log.warning("aws_type_offerings_denied", region=region, error=str(exc))
            with self._lock:
                return set(self._types)
        with self._lock:
            unknown = sorted(offered - self._types.keys())
            for names in chunked(unknown, self._limits.instance_types_per_call):
                # The stubs type names as a Literal of today's types; tomorrow's are plain str.
                requested: list[Any] = list(names)
                response = ec2.describe_instance_types(InstanceTypes=requested)
                self._remember(response["InstanceTypes"])
                for name in names:  # a name the API did not return is not a GPU type we know
                    self._types.setdefault(name, None)
        return offered

    def _describe_all(self, ec2: EC2Client) -> set[str]:
        names: set[str] = set()
        paginator = ec2.get_paginator("describe_instance_types")
        pages = paginator.paginate(
            PaginationConfig={"PageSize": self._limits.instance_types_per_call}
        )
        for page in pages:
            self._remember(page["InstanceTypes"])
            names.update(info["InstanceType"] for info in page["InstanceTypes"])
        return names

    def _offered_names(self, ec2: EC2Client) -> set[str]:
        paginator = ec2.get_paginator("describe_instance_type_offerings")
        pages = paginator.paginate(LocationType="region", PaginationConfig={"PageSize": 1000})
        return {o["InstanceType"] for page in pages for o in page["InstanceTypeOfferings"]}

    def _remember(self, infos: Sequence[InstanceTypeInfoTypeDef]) -> None:
        for info in infos:
            self._types[info["InstanceType"]] = gpu_type_from(info)


def spot_request_types(
    ec2: EC2Client, instance_ids: Sequence[str], limits: AwsLimits
) -> dict[str, str]:
    """instance id → spot request type (``one-time`` | ``persistent``), batched by filter."""
    found: dict[str, tuple[bool, str]] = {}
    paginator = ec2.get_paginator("describe_spot_instance_requests")
    for ids in chunked(instance_ids, limits.filter_values):
        pages = paginator.paginate(Filters=[{"Name": "instance-id", "Values": list(ids)}])
        for page in pages:
            for request in page["SpotInstanceRequests"]:
                instance_id = request.get("InstanceId")
                if not instance_id:
                    continue
                active = request.get("State") == "active"
                # An old, closed request for the same instance must not hide the active one.
                if instance_id not in found or (active and not found[instance_id][0]):
                    found[instance_id] = (active, request.get("Type", "one-time"))
    return {instance_id: kind for instance_id, (_, kind) in found.items()}


def _reservation(raw: InstanceTypeDef) -> str | None:
    """The capacity reservation (or block) the instance runs in, if any."""
    if raw.get("InstanceLifecycle") == "capacity-block":
        return raw.get("CapacityReservationId") or "capacity block"
    return raw.get("CapacityReservationId") or None


def to_instance(
    raw: InstanceTypeDef,
    *,
    account: str,
    region: str,
    gpu: GpuType,
    owner_tags: Sequence[str],
) -> GpuInstance:
    """The instance as guardian sees it; a spot one is taken as one-time until its request's
    type is known (``discover_region`` looks the requests up for the whole region at once)."""
    tags = {tag["Key"]: tag.get("Value", "") for tag in raw.get("Tags", []) if "Key" in tag}
    spot = raw.get("InstanceLifecycle") == "spot"
    return GpuInstance(
        provider="aws",
        account=account,
        region=region,
        zone=raw.get("Placement", {}).get("AvailabilityZone", ""),
        instance_id=raw["InstanceId"],
        instance_type=raw["InstanceType"],
        launch_time=raw["LaunchTime"].astimezone(UTC),
        gpu_count=gpu.gpu_count,
        gpu_model=gpu.gpu_model,
        gpu_memory_mib=gpu.gpu_memory_mib,
        name=tags.get("Name") or None,
        lifecycle=Lifecycle.SPOT if spot else Lifecycle.ON_DEMAND,
        tags=tags,
        owner=next((tags[key] for key in owner_tags if tags.get(key)), None),
        has_instance_store=gpu.has_instance_store,
        spot_one_time=spot,
        hibernation_configured=bool(raw.get("HibernationOptions", {}).get("Configured", False)),
        managed_by=aws_managed_by(tags),
        reservation=_reservation(raw),
    )


# Every InstanceLifecycle EC2 documents (absent = on-demand). Another is a kind of capacity
# guardian does not know how a stop would treat: the instance is skipped, not guessed at.
_KNOWN_LIFECYCLES = frozenset({"spot", "scheduled", "capacity-block"})


def unusable_reason(raw: InstanceTypeDef) -> str | None:
    """Why an instance in a DescribeInstances answer cannot be judged (None: it can).

    The filter asked for running instances, but a malformed or surprising answer must not make
    guardian judge, or stop, a machine it cannot describe: without its type there are no GPUs
    and no price, without its launch time no uptime, and only a running machine is stopped.
    """
    if not raw.get("InstanceId"):
        return "no InstanceId"
    if not raw.get("InstanceType"):
        return "no InstanceType"
    state = raw.get("State", {}).get("Name")
    if state != "running":
        return f"state {state!r}, not running" if state else "no State"
    if not isinstance(raw.get("LaunchTime"), datetime):
        return "no LaunchTime"
    lifecycle = raw.get("InstanceLifecycle")
    if lifecycle is not None and lifecycle not in _KNOWN_LIFECYCLES:
        return f"unknown InstanceLifecycle {lifecycle!r}"
    return None


def _page_instances(page: DescribeInstancesResultTypeDef) -> Iterator[InstanceTypeDef]:
    for reservation in page["Reservations"]:
        yield from reservation.get("Instances", [])


def discover_region(
    ec2: EC2Client,
    *,
    account: str,
    region: str,
    gpu_types: Mapping[str, GpuType],
    owner_tags: Sequence[str],
    limits: AwsLimits,
) -> list[GpuInstance]:
    """Every running instance of a GPU type in one account and region, sorted by id.

    Each page is turned into ``GpuInstance``s as it arrives and dropped: a page of 1,000 parsed
    instances is about 10 MB of dicts, so holding a region's pages until the end would cost
    memory in proportion to the fleet.
    """
    found: dict[str, GpuInstance] = {}  # by id: an instance is never counted twice
    paginator = ec2.get_paginator("describe_instances")
    for names in chunked(sorted(gpu_types), limits.filter_values):
        pages = paginator.paginate(
            Filters=[
                {"Name": "instance-state-name", "Values": ["running"]},
                {"Name": "instance-type", "Values": list(names)},
            ],
            PaginationConfig={"PageSize": limits.page_size},
        )
        for page in pages:
            for raw in _page_instances(page):
                why = unusable_reason(raw)
                if why is not None:
                    log.warning(
                        "aws_instance_skipped",
                        account=account,
                        region=region,
                        instance_id=raw.get("InstanceId", ""),
                        reason=why,
                    )
                    continue
                gpu = gpu_types.get(raw["InstanceType"])
                if gpu is None:  # cannot happen with an exact filter; a looser API must not fool us
                    continue
                found[raw["InstanceId"]] = to_instance(
                    raw, account=account, region=region, gpu=gpu, owner_tags=owner_tags
                )
            del page  # not kept alive while the paginator fetches and parses the next one
    spot_ids = sorted(i for i, instance in found.items() if instance.lifecycle is Lifecycle.SPOT)
    if spot_ids:
        # One-time spot instances cannot be stopped. Where the request cannot be found the
        # instance stays one-time (as to_instance made it): guardian then only reports it.
        kinds = spot_request_types(ec2, spot_ids, limits)
        for instance_id in spot_ids:
            if kinds.get(instance_id, "one-time") != "one-time":
                found[instance_id] = replace(found[instance_id], spot_one_time=False)
    return [found[instance_id] for instance_id in sorted(found)]
