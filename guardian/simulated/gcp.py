"""A simulated Google Cloud project for ``guardian demo``, the tests and the benchmarks.

Starts the three local fakes — Compute REST (``gcp_compute_fake``), Monitoring gRPC
(``gcp_monitoring_fake``) and the Billing Catalog gRPC (``gcp_billing_fake``) — seeded with VMs
and the Ops Agent's GPU metrics in its own schema: ``agent.googleapis.com/gpu/utilization``
(percent) and ``agent.googleapis.com/gpu/memory/bytes_used`` (bytes, ``memory_state`` used and
free), one series per GPU labelled ``gpu_number``, ``uuid`` and ``model``.

GPU readings are functions of time sampled every minute up to the moment they are asked for,
so a demo daemon that runs for an hour keeps seeing fresh, consistent metrics.

Host series beside them (``host_series``): Compute Engine's own
``compute.googleapis.com/instance/cpu/utilization`` (a fraction, every VM has it) and the Ops
Agent's ``agent.googleapis.com/memory/percent_used`` (one series per ``state``).

``start_demo_gcp()`` seeds a believable ML team's project; its ``gcp_config()`` is a ready
``GcpConfig`` (anonymous credentials, plaintext local endpoints).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from guardian.config import GcpConfig
from guardian.simulated.gcp_billing_fake import FakeBillingServer
from guardian.simulated.gcp_compute_fake import FakeComputeServer, FakeComputeState, FakeVm
from guardian.simulated.gcp_monitoring_fake import (
    FakeMonitoringServer,
    FakeMonitoringState,
    FakeTimeSeries,
    PointSource,
)

__all__ = [
    "DEMO_PROJECT",
    "GCE_CPU",
    "OPS_AGENT_HOST_MEMORY",
    "OPS_AGENT_MEMORY",
    "OPS_AGENT_UTIL",
    "GpuTrace",
    "SimulatedGcp",
    "demo_project",
    "host_series",
    "ops_agent_series",
    "sampled",
    "start_demo_gcp",
    "start_simulated_gcp",
]

DEMO_PROJECT = "acme-ml-research"
OPS_AGENT_UTIL = "agent.googleapis.com/gpu/utilization"
OPS_AGENT_MEMORY = "agent.googleapis.com/gpu/memory/bytes_used"
GCE_CPU = "compute.googleapis.com/instance/cpu/utilization"
OPS_AGENT_HOST_MEMORY = "agent.googleapis.com/memory/percent_used"
_MIB = 1024 * 1024
_GPU_MEMORY_MIB = {
    "nvidia-tesla-a100": 40_960,
    "nvidia-a100-80gb": 81_920,
    "nvidia-l4": 23_034,
    "nvidia-tesla-t4": 15_360,
    "nvidia-h100-80gb": 81_559,
}

Reading = Callable[[datetime], float | None]  # None: no sample at that moment


def sampled(
    reading: Reading,
    step_s: int = 60,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> PointSource:
    """A point source that samples ``reading`` every ``step_s`` seconds, never in the future."""

    def points(start: datetime, end: datetime) -> list[tuple[datetime, float]]:
        stop = min(end, clock())
        first = int(start.timestamp()) // step_s * step_s + step_s
        result = []
        for second in range(first, int(stop.timestamp()) + 1, step_s):
            at = datetime.fromtimestamp(second, UTC)
            value = reading(at)
            if value is not None:
                result.append((at, value))
        return result

    return points


@dataclass(frozen=True)
class GpuTrace:
    """One GPU's readings: utilisation in percent and memory used in MiB (None: not reported)."""

    util_pct: PointSource
    mem_used_mib: PointSource | None = None


def _scaled(source: PointSource, factor: float) -> PointSource:
    def points(start: datetime, end: datetime) -> list[tuple[datetime, float]]:
        raw = source(start, end) if callable(source) else source
        return [(at, value * factor) for at, value in raw]

    return points


def _free(source: PointSource, total_mib: float) -> PointSource:
    def points(start: datetime, end: datetime) -> list[tuple[datetime, float]]:
        raw = source(start, end) if callable(source) else source
        return [(at, max(0.0, total_mib - value) * _MIB) for at, value in raw]

    return points


def ops_agent_series(project: str, vm: FakeVm, traces: Sequence[GpuTrace]) -> list[FakeTimeSeries]:
    """The Ops Agent's GPU series of one VM, in its schema."""
    model = vm.guest_accelerators[0][0] if vm.guest_accelerators else ""
    resource = {"project_id": project, "instance_id": str(vm.instance_id), "zone": vm.zone}
    total = _GPU_MEMORY_MIB.get(model, 24_576)
    series: list[FakeTimeSeries] = []
    for number, trace in enumerate(traces):
        labels = {
            "gpu_number": str(number),
            "uuid": f"GPU-{vm.instance_id:x}-{number:02d}",
            "model": model or "NVIDIA GPU",
        }
        series.append(
            FakeTimeSeries(project, OPS_AGENT_UTIL, resource, labels, trace.util_pct, "DOUBLE", "%")
        )
        if trace.mem_used_mib is not None:
            for state, source in (
                ("used", _scaled(trace.mem_used_mib, _MIB)),
                ("free", _free(trace.mem_used_mib, total)),
            ):
                series.append(
                    FakeTimeSeries(
                        project,
                        OPS_AGENT_MEMORY,
                        resource,
                        {**labels, "memory_state": state},
                        source,
                        "INT64",
                        "By",
                    )
                )
    return series


def host_series(
    project: str,
    vm: FakeVm,
    cpu_fraction: PointSource | None = None,
    mem_used_pct: PointSource | None = None,
) -> list[FakeTimeSeries]:
    """A VM's host series in their schemas: CPU utilisation as a fraction of its vCPUs, and the
    Ops Agent's memory percent split by ``state`` (used, and the rest as free)."""
    resource = {"project_id": project, "instance_id": str(vm.instance_id), "zone": vm.zone}
    series: list[FakeTimeSeries] = []
    if cpu_fraction is not None:
        series.append(
            FakeTimeSeries(
                project,
                GCE_CPU,
                resource,
                {"instance_name": vm.name},
                cpu_fraction,
                "DOUBLE",
                "10^2.%",
            )
        )
    if mem_used_pct is not None:
        for state, source in (
            ("used", mem_used_pct),
            ("free", _scaled(_free(mem_used_pct, 100.0), 1 / _MIB)),  # 100 - used, in %
        ):
            series.append(
                FakeTimeSeries(
                    project,
                    OPS_AGENT_HOST_MEMORY,
                    resource,
                    {"state": state},
                    source,
                    "DOUBLE",
                    "%",
                )
            )
    return series


@dataclass
class SimulatedGcp:
    """The running fakes of one simulated project.

    It also unpacks as ``(compute_endpoint, monitoring_endpoint, stop)``, the shape
    ``start_simulated_gcp`` promises to callers that want only those three.
    """

    project: str
    compute: FakeComputeServer
    monitoring: FakeMonitoringServer
    billing: FakeBillingServer

    @property
    def projects(self) -> tuple[str, ...]:
        return (self.project,)

    @property
    def compute_endpoint(self) -> str:
        return self.compute.endpoint

    @property
    def monitoring_endpoint(self) -> str:
        return self.monitoring.endpoint

    @property
    def billing_endpoint(self) -> str:
        return self.billing.endpoint

    def __iter__(self) -> Iterator[Any]:
        return iter((self.compute_endpoint, self.monitoring_endpoint, self.stop))

    def gcp_config(self) -> GcpConfig:
        return GcpConfig(
            enabled=True,
            projects=[self.project],
            credentials="anonymous",
            compute_endpoint=self.compute.endpoint,
            monitoring_endpoint=self.monitoring.endpoint,
            billing_endpoint=self.billing.endpoint,
        )

    def stop(self) -> None:
        for server in (self.compute, self.monitoring, self.billing):
            server.stop()


def _start(
    project: str,
    vms: Sequence[FakeVm],
    metrics: Mapping[str, Sequence[GpuTrace]],
    extra: Callable[[str, Sequence[FakeVm]], list[FakeTimeSeries]] | None = None,
) -> SimulatedGcp:
    unknown = set(metrics) - {vm.name for vm in vms}
    if unknown:
        raise ValueError(f"metrics for VMs that are not in the project: {sorted(unknown)}")
    compute_state = FakeComputeState()
    compute_state.add(project, vms)
    monitoring_state = FakeMonitoringState()
    for vm in vms:
        monitoring_state.series.extend(ops_agent_series(project, vm, metrics.get(vm.name, ())))
    if extra is not None:  # after add(): the VMs have their instance ids now
        monitoring_state.series.extend(extra(project, vms))
    compute = FakeComputeServer(compute_state).start()
    monitoring = FakeMonitoringServer(monitoring_state).start()
    billing = FakeBillingServer().start()
    return SimulatedGcp(project, compute, monitoring, billing)


def start_simulated_gcp(
    project: str = DEMO_PROJECT,
    vms: Sequence[FakeVm] | None = None,
    metrics: Mapping[str, Sequence[GpuTrace]] | None = None,
    *,
    now: datetime | None = None,
) -> SimulatedGcp:
    """Start the fakes with these VMs and GPU traces (keyed by VM name; absent = no Ops Agent),
    or, without ``vms``, with the demo project as of ``now``.

    Unpacks as ``compute_endpoint, monitoring_endpoint, stop = start_simulated_gcp(...)``; the
    returned object also has ``gcp_config()``, ``projects`` and ``billing_endpoint``.
    """
    if vms is None:
        demo_vms, demo_metrics = demo_project(now or datetime.now(UTC))
        return _start(project, demo_vms, demo_metrics, _demo_host_series)
    return _start(project, vms, metrics or {})


# -- the demo project ------------------------------------------------------------------------


def _jitter(at: datetime, seed: str) -> float:
    """Deterministic noise in [0, 1) for a moment: the same every run, different per VM."""
    return zlib.crc32(f"{seed}:{int(at.timestamp())}".encode()) % 1000 / 1000


def _steady(low: float, high: float, seed: str) -> Reading:
    return lambda at: low + (high - low) * _jitter(at, seed)


def _switch(at_moment: datetime, before: Reading, after: Reading) -> Reading:
    return lambda at: before(at) if at < at_moment else after(at)


def _bursts(base: Reading, burst: Reading, every: timedelta, length: timedelta) -> Reading:
    """``burst`` for ``length`` at the start of every ``every``, else ``base`` (a notebook)."""
    period, span = int(every.total_seconds()), int(length.total_seconds())
    return lambda at: burst(at) if int(at.timestamp()) % period < span else base(at)


def _const(value: float) -> Reading:
    return lambda _at: value


def demo_project(now: datetime) -> tuple[list[FakeVm], dict[str, list[GpuTrace]]]:
    """An ML team's project as ``now`` sees it: every verdict appears once or more.

    - ``train-llm-a100`` (a2-highgpu-1g): training ended three hours ago, memory released → idle
    - ``serve-l4`` (g2-standard-8, local SSD): serving at 70-95 % → busy
    - ``notebook-t4`` (n1-standard-8 + 1×T4): short bursts in a notebook → underused
    - ``batch-spot-l4`` (g2-standard-4, Spot): a hung job holds memory at 0 % → idle
    - ``render-t4`` (n1-standard-4 + 1×T4): no Ops Agent → unmeasured
    - ``eval-a100`` (a2-highgpu-1g, guardian-protect=true): idle but protected
    - ``l4-pool-7xk2`` (g2-standard-4), a managed instance group's member: idle since its
      batch ended, but the group would recreate it — alert-only
    - ``web-frontend`` (e2, no GPU) and ``old-experiment`` (stopped) are not GPU VMs to audit.
    """
    ended = now - timedelta(hours=3)
    hung = now - timedelta(hours=2)
    vms = [
        FakeVm(
            "train-llm-a100",
            "us-central1-a",
            "a2-highgpu-1g",
            labels={"owner": "alice", "team": "nlp", "job": "llm-finetune"},
            created_at=now - timedelta(days=2, hours=5),
        ),
        FakeVm(
            "serve-l4",
            "us-central1-b",
            "g2-standard-8",
            labels={"owner": "bob", "team": "platform", "env": "staging"},
            local_ssd=True,
            created_at=now - timedelta(days=9),
        ),
        FakeVm(
            "notebook-t4",
            "us-central1-a",
            "n1-standard-8",
            guest_accelerators=(("nvidia-tesla-t4", 1),),
            labels={"owner": "carol", "team": "research"},
            created_at=now - timedelta(days=4),
        ),
        FakeVm(
            "batch-spot-l4",
            "us-central1-c",
            "g2-standard-4",
            labels={"owner": "dave", "team": "vision"},
            provisioning_model="SPOT",
            created_at=now - timedelta(hours=7),
        ),
        FakeVm(
            "render-t4",
            "us-east1-c",
            "n1-standard-4",
            guest_accelerators=(("nvidia-tesla-t4", 1),),
            labels={"owner": "erin", "team": "graphics"},
            created_at=now - timedelta(days=1),
        ),
        FakeVm(
            "eval-a100",
            "us-central1-f",
            "a2-highgpu-1g",
            labels={"owner": "frank", "team": "nlp", "guardian-protect": "true"},
            created_at=now - timedelta(days=1, hours=2),
        ),
        FakeVm(
            "l4-pool-7xk2",
            "us-central1-b",
            "g2-standard-4",
            labels={"owner": "grace", "team": "vision"},
            metadata={
                "created-by": "projects/123456789012/zones/us-central1-b/"
                "instanceGroupManagers/l4-pool"
            },
            created_at=now - timedelta(days=3),
        ),
        FakeVm("web-frontend", "us-central1-a", "e2-standard-4", labels={"team": "web"}),
        FakeVm("old-experiment", "us-central1-b", "g2-standard-8", status="TERMINATED"),
    ]
    idle = _const(0.0)
    metrics = {
        "train-llm-a100": [
            GpuTrace(
                sampled(_switch(ended, _steady(88, 99, "train"), idle)),
                sampled(_switch(ended, _steady(36_000, 38_500, "train-mem"), _const(0.0))),
            )
        ],
        "serve-l4": [
            GpuTrace(
                sampled(_steady(70, 95, "serve")), sampled(_steady(17_500, 18_500, "serve-mem"))
            )
        ],
        "notebook-t4": [
            GpuTrace(
                sampled(
                    _bursts(
                        _steady(0.5, 3, "nb"),
                        _steady(35, 60, "nb-burst"),
                        timedelta(minutes=40),
                        timedelta(minutes=5),
                    )
                ),
                sampled(_steady(3_000, 3_400, "nb-mem")),
            )
        ],
        "batch-spot-l4": [
            GpuTrace(
                sampled(_switch(hung, _steady(80, 92, "spot"), idle)),
                sampled(_const(12_288.0)),
            )
        ],
        "eval-a100": [GpuTrace(sampled(idle), sampled(_const(0.0)))],
        "l4-pool-7xk2": [
            GpuTrace(
                sampled(_switch(ended, _steady(60, 90, "pool"), idle)),
                sampled(_switch(ended, _steady(9_000, 11_000, "pool-mem"), _const(0.0))),
            )
        ],
    }
    return vms, metrics


def _demo_host_series(project: str, vms: Sequence[FakeVm]) -> list[FakeTimeSeries]:
    """serve-l4's host is measured, and mostly idle: right-sizing can name a smaller G2."""
    serve = next(vm for vm in vms if vm.name == "serve-l4")
    return host_series(
        project,
        serve,
        cpu_fraction=sampled(_steady(0.12, 0.22, "serve-cpu")),
        mem_used_pct=sampled(_steady(24, 30, "serve-mem-host")),
    )


def start_demo_gcp(now: datetime | None = None, project: str = DEMO_PROJECT) -> SimulatedGcp:
    """Start the fakes seeded with ``demo_project``; call ``.stop()`` when done."""
    return start_simulated_gcp(project, now=now)
