"""Plain data that flows through a cycle: instances, their GPU samples, prices and findings.

Frozen dataclasses with units in field names. Absence is ``None`` (checked by mypy), never 0:
a missing sample is not 0 % utilisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

__all__ = [
    "Controller",
    "CpuEquivalent",
    "CpuMove",
    "Decision",
    "Finding",
    "GpuInstance",
    "GpuSample",
    "GpuSummary",
    "GpuUtilisation",
    "InstanceMetric",
    "Lifecycle",
    "ManagedBy",
    "Point",
    "PriceAssessment",
    "Recommendation",
    "ScalingGroup",
    "Verdict",
]


class Verdict(StrEnum):
    """The contract's verdict names, exactly."""

    IDLE = "idle"
    UNDERUSED = "underused"
    BUSY = "busy"
    UNMEASURED = "unmeasured"
    PROTECTED = "protected"


Point = tuple[datetime, float]  # (aware UTC time, value)


class InstanceMetric(StrEnum):
    """Per-instance series read beside the GPUs' series, in the same batched calls: one value
    per instance and time, not per GPU. Each is optional; absent means not measured, never 0."""

    HOST_CPU_PCT = "host_cpu_pct"  # the host's CPUs busy, percent
    HOST_MEM_PCT = "host_mem_pct"  # the host's memory in use, percent
    LOCAL_DISK_USED_MIB = "local_disk_used_mib"  # instance store / local SSD in use (agent)
    NOTEBOOK_IDLE_S = "notebook_idle_s"  # since the GPU-holding notebook kernels' last activity


class Lifecycle(StrEnum):
    ON_DEMAND = "on-demand"
    SPOT = "spot"  # AWS one-time or persistent spot, GCP Spot VM
    PREEMPTIBLE = "preemptible"  # GCP legacy preemptible VM


class Controller(StrEnum):
    """What can own an instance and replace it when it is stopped (``managed_by.kind``)."""

    AUTOSCALING_GROUP = "autoscaling-group"  # a plain EC2 Auto Scaling group
    EKS_NODEGROUP = "eks-nodegroup"
    KARPENTER = "karpenter"
    KUBERNETES = "kubernetes"  # a self-managed Kubernetes node (kubernetes.io/cluster/* tag)
    BATCH = "batch"  # AWS Batch compute environment
    PARALLELCLUSTER = "parallelcluster"
    EMR = "emr"
    EC2_FLEET = "ec2-fleet"
    SPOT_FLEET = "spot-fleet"
    MIG = "managed-instance-group"  # GCP
    GKE = "gke"
    DATAPROC = "dataproc"
    GCP_BATCH = "gcp-batch"
    WORKBENCH = "workbench"  # Vertex AI Workbench


@dataclass(frozen=True)
class ManagedBy:
    """The controller that owns an instance: stopping it would fight the controller."""

    kind: Controller
    name: str  # the group, node pool, cluster or fleet that owns it
    cluster: str | None = None  # the cluster a node group or node pool belongs to


@dataclass(frozen=True)
class ScalingGroup:
    """An Auto Scaling group's capacity, read when enforcement needs it (never per cycle)."""

    name: str
    min_size: int
    desired: int
    max_size: int
    standby: frozenset[str] = frozenset()  # instance ids in Standby already


@dataclass(frozen=True)
class GpuInstance:
    """One running GPU instance (AWS) or VM (GCP), as discovered."""

    provider: str  # "aws" | "gcp"
    account: str  # AWS account id, GCP project id
    region: str
    zone: str
    instance_id: str
    instance_type: str
    launch_time: datetime  # aware UTC
    gpu_count: int
    gpu_model: str | None = None
    gpu_memory_mib: int | None = None
    name: str | None = None
    lifecycle: Lifecycle = Lifecycle.ON_DEMAND
    tags: Mapping[str, str] = field(default_factory=dict)
    owner: str | None = None
    has_instance_store: bool = False  # AWS instance store / GCP local SSD: lost on stop
    spot_one_time: bool = False  # AWS one-time spot requests cannot be stopped at all
    hibernation_configured: bool = False
    managed_by: ManagedBy | None = None  # a controller that would replace it if stopped
    # The capacity reservation or block it runs in (AWS cr-…, "capacity block", GCP
    # reservation name): paid whether it runs or not, so a stop saves nothing.
    reservation: str | None = None

    @property
    def key(self) -> str:
        """Stable identity across cycles: provider, account and id."""
        return f"{self.provider}:{self.account}:{self.instance_id}"

    @property
    def reserved(self) -> bool:
        return self.reservation is not None


@dataclass(frozen=True, slots=True)  # the most numerous object: a fleet holds millions
class GpuSample:
    """One timestamp of an instance's GPUs, already reduced over its GPUs.

    ``gpu_util_pct`` is the max over the GPUs that reported; ``complete`` says whether every GPU
    known to the instance reported at this timestamp. An incomplete sample under the threshold
    proves nothing (the missing GPU may be working), so the policy never counts it as idle.
    ``mem_used_mib`` is the max over the GPUs, or None when memory was not reported by all.
    """

    at: datetime
    gpu_util_pct: float
    mem_used_mib: float | None = None
    complete: bool = True
    processes: int | None = None  # compute processes holding a GPU (agent only; None = unknown)


@dataclass(frozen=True, slots=True)
class GpuSummary:
    """One GPU over the whole window, summarised while its series is reduced: the per-GPU
    series themselves are not kept (a fleet's would not fit), only these few numbers.

    ``util_p95_pct`` is None when the GPU reported no finite utilisation; ``mem_peak_mib`` when
    it reported no memory. Neither is ever 0 for "unknown".
    """

    gpu: str  # its label: the agent's ``index``, GCP's ``gpu_number`` or ``uuid``
    util_p95_pct: float | None
    mem_peak_mib: float | None
    samples: int  # utilisation samples behind the p95


@dataclass(frozen=True)
class GpuUtilisation:
    """The measured GPU history of one instance over the lookback, oldest sample first.

    ``error`` says why there is no usable data (agent absent, API failure): the instance is then
    ``unmeasured``. ``processes`` is only known to the on-host agent: the number of compute
    processes holding any GPU (0 = training finished), None where it cannot be seen.
    """

    samples: tuple[GpuSample, ...] = ()
    period_s: int = 60
    gpus_reporting: int = 0
    error: str | None = None
    processes: int | None = None
    # ``error`` came from the metrics API failing (an outage, throttling, a denied call), not
    # from data that is absent or too old: the first is guardian's problem to report.
    fetch_failed: bool = False
    # The instance's other series over the same window, oldest first; a metric not read, or
    # with no data, has no entry.
    instance_series: Mapping[InstanceMetric, tuple[Point, ...]] = field(default_factory=dict)
    # One summary per GPU that reported, in GPU order; empty where the source keeps none (the
    # agent, a backtest): right-sizing then says the per-GPU need is unknown.
    gpus: tuple[GpuSummary, ...] = ()

    def newest(self, metric: InstanceMetric) -> Point | None:
        """The newest point of one of the instance's series, if it has any."""
        series = self.instance_series.get(metric)
        return series[-1] if series else None


@dataclass(frozen=True)
class CpuEquivalent:
    instance_type: str
    hourly_price: float


@dataclass(frozen=True)
class PriceAssessment:
    """What an instance costs and what its CPU equivalent would; None where unknown (with why)."""

    hourly_price: float | None
    price_source: str | None
    cpu_equivalent: CpuEquivalent | None
    premium: float | None  # hourly_price / cpu_equivalent.hourly_price
    reason: str | None = None  # why a price or equivalent is unknown


@dataclass(frozen=True)
class Decision:
    """What ``policy.decide`` concluded about one instance at one moment."""

    verdict: Verdict
    reasons: tuple[str, ...]
    action: str  # none | report | notify | stop (the mode's action; enforcement applies gates)
    idle_minutes: float | None
    wasted_usd: float | None
    gpu_util_mean: float | None
    gpu_util_max: float | None
    gpu_mem_used_max_mib: float | None
    metric_coverage: float | None
    newest_sample_age_s: float | None
    required_speedup: float | None
    idle_window_minutes: float | None = None  # the window that applied (held or released)
    # Set when the verdict rests on the agent's notebook signal (idle.window_notebook): how long
    # the GPU-holding notebook kernels had been idle with no browser connected.
    notebook_idle_minutes: float | None = None


@dataclass(frozen=True)
class CpuMove:
    """The CPU equivalent offered beside a GPU right-size when the GPU premium is not earned."""

    instance_type: str
    hourly_price: float
    saves_usd_month: float


@dataclass(frozen=True)
class Recommendation:
    """The cheaper machine that would do an instance's measured work (``prices.rightsize``).

    Advice only: nothing acts on it. ``move`` is ``resize`` (a cheaper GPU type) or ``cpu`` (the
    CPU equivalent, when the GPU does not earn its premium and no GPU type fits). ``gpus_used``
    and ``peak_gpu_mem_mib`` are the measured need, not the candidate's shape. ``not_measured``
    says what was kept at the current size for want of a measurement.
    """

    move: str  # resize | cpu
    instance_type: str
    hourly_price: float
    saves_usd_month: float
    gpus_used: int
    peak_gpu_mem_mib: float | None
    reason: str
    not_measured: tuple[str, ...] = ()
    window_hours: float | None = None  # the evidence: the measured span of the lookback
    move_to_cpu: CpuMove | None = None  # also offered with a resize when the premium is not earned


@dataclass(frozen=True)
class Finding:
    """An instance with its price and decision: one row of the audit."""

    instance: GpuInstance
    price: PriceAssessment
    decision: Decision
    sparkline: tuple[float | None, ...] = ()  # the last hour, one value per period (None = gap)
    # The newest reading of the agent's local-disk metric (MiB used beyond empty filesystems),
    # None when not reported: the local-disk gate of enforcement reads it.
    local_disk_used: Point | None = None
    recommendation: Recommendation | None = None
    rightsize_note: str | None = None  # why there is no recommendation, where it is worth saying
    # The metrics API failed for it (not: no agent), so the daemon can tell "metrics down"
    # from "not instrumented" and alert once about the first.
    metrics_failed: bool = False
