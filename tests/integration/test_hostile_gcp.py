"""GCP answers with missing fields, wrong types and unknown enum values, through the real
Google clients: a VM guardian cannot judge is skipped with its reason, a series point that is
no reading is never read as 0 %, the rest of the project is audited and enforced as before, and
nothing busy, unknown or skipped is stopped.

The daemon runs in this process on a simulated clock (as in ``test_faults_gcp.py``): Compute
REST through a ``FaultProxy`` whose ``rewrite`` breaks one VM's object in the
``instances.aggregatedList`` JSON, Monitoring gRPC against the fake with hostile data and a
``grpc_answer_interceptor`` for what the fake's data cannot say (future points, string values).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from guardian.config import Config
from guardian.daemon.service import CycleReport, Daemon
from guardian.providers import Patience
from guardian.providers.gcp.provider import GcpProvider
from tests.e2e.receivers import HttpReceiver
from tests.fakes.body_rewrites import compute_instance_rewrite, grpc_answer_interceptor
from tests.fakes.fault_proxy import FaultProxy, Rewrite
from tests.fakes.gcp_compute import FakeComputeServer, FakeVm
from tests.fakes.gcp_monitoring import FakeMonitoringServer, GpuTrace, ops_agent_series

SHORT = Patience(connect_s=0.5, read_s=2.0, attempts=1)
LIST_SERIES = "/google.monitoring.v3.MetricService/ListTimeSeries"
CYCLES = 5  # past the 3-minute grace: every idle VM that may be stopped is stopped
IDLE, BUSY = 0.0, 85.0

JsonEdit = Callable[[dict[str, Any]], object]


def _set(path: str, value: object) -> JsonEdit:
    """Set ``a.b`` in a VM's JSON (a string where a number goes, an unknown enum value...)."""

    def edit(vm: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        holder = vm
        for part in parents:
            holder = holder[part][0] if isinstance(holder[part], list) else holder[part]
        holder[last] = value

    return edit


def _drop(key: str) -> JsonEdit:
    return lambda vm: vm.pop(key)


@dataclass
class GcpWorld:
    """Compute and Monitoring fakes, the proxy, a webhook receiver and an enforcing daemon."""

    tmp_path: Path
    interceptors: Sequence[Any] = ()
    start: datetime = field(default_factory=lambda: datetime.now(UTC).replace(second=0))

    def __post_init__(self) -> None:
        self.start = self.start.replace(microsecond=0)
        self.compute = FakeComputeServer().start()
        self.monitoring = FakeMonitoringServer(interceptors=list(self.interceptors)).start()
        self.proxy = FaultProxy(self.compute.endpoint).start()
        self.receiver = HttpReceiver()
        self.now = self.start
        self.reports: list[CycleReport] = []
        self.projects: list[str] = []
        self._daemon: Daemon | None = None

    def add(self, project: str, vm: FakeVm, util_pct: Sequence[float] | None = None) -> None:
        """A VM reporting ``util_pct`` per GPU (each its own constant) for the last hour."""
        vm.created_at = self.start - timedelta(days=1)
        self.compute.state.add(project, [vm])
        if project not in self.projects:
            self.projects.append(project)
        minutes = [self.start + timedelta(minutes=m) for m in range(-60, 3 * CYCLES)]
        traces = [
            GpuTrace([(at, pct) for at in minutes], [(at, 9000.0) for at in minutes])
            for pct in util_pct or ()
        ]
        self.monitoring.state.series.extend(
            ops_agent_series(project, self.compute.state.vm(project, vm.name), traces)
        )

    def instance_id(self, project: str, name: str) -> str:
        return str(self.compute.state.vm(project, name).instance_id)

    def status(self, project: str, name: str) -> str:
        return self.compute.state.vm(project, name).status

    def run(self, cycles: int) -> None:
        config = Config.model_validate(
            {
                "mode": "enforce",
                "poll_interval": "1m",
                "state_dir": str(self.tmp_path / "state"),
                "metrics": {"listen": ""},
                "cost": {"lookback": "1h"},
                "limits": {"max_idle_fraction": 1.0, "max_stops_per_cycle": 50},
                "idle": {"window": "20m", "grace": "3m", "history_margin": 0},
                "aws": {"enabled": False},
                "gcp": {
                    "enabled": True,
                    "projects": self.projects,
                    "credentials": "anonymous",
                    "compute_endpoint": self.proxy.endpoint,
                    "monitoring_endpoint": self.monitoring.endpoint,
                },
                "notify": {"urls": [self.receiver.url()], "digest": ""},
            }
        )
        self._daemon = Daemon(
            config,
            providers=lambda cfg: [GcpProvider(cfg, patience=SHORT)],
            clock=lambda: self.now,
        )
        for _ in range(cycles):
            report = self._daemon.run_cycle()
            assert report is not None
            self.reports.append(report)
            self.now += timedelta(minutes=1)

    def verdicts(self, report: CycleReport) -> dict[str, tuple[str, tuple[str, ...]]]:
        """instance id → (verdict, reasons) in one cycle's report."""
        return {
            f.instance.instance_id: (f.decision.verdict.value, f.decision.reasons)
            for f in report.result.findings
        }

    def close(self) -> None:
        if self._daemon is not None:
            self._daemon.close()
        self.proxy.stop()
        self.monitoring.stop()
        self.compute.stop()
        self.receiver.close()


@pytest.fixture
def world_factory(tmp_path: Path) -> Iterator[Callable[..., GcpWorld]]:
    made: list[GcpWorld] = []

    def make(interceptors: Sequence[Any] = ()) -> GcpWorld:
        made.append(GcpWorld(tmp_path, interceptors))
        return made[-1]

    yield make
    for world in made:
        world.close()


def _chain(*rewrites: Rewrite) -> Rewrite:
    def rewrite(operation: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        for each in rewrites:
            body = each(operation, body, headers)
        return body

    return rewrite


# Guardian reads these fields itself: the VM is skipped with this reason, its project audited.
SKIPPED: dict[str, tuple[JsonEdit, str]] = {
    "no-machine-type": (_drop("machineType"), "no machineType"),
    "no-zone": (_drop("zone"), "no zone"),
    "no-id": (_drop("id"), "no id"),
    "unknown-status": (_set("status", "HIBERNATING_SOON"), "status 'HIBERNATING_SOON'"),
    "unknown-provisioning": (
        _set("scheduling.provisioningModel", "CAPACITY_FUTURE"),
        "unknown provisioningModel 'CAPACITY_FUTURE'",
    ),
    "creation-not-a-time": (_set("creationTimestamp", "the day before"), "creationTimestamp"),
}
# The client library itself rejects these (json_format: ParseError) for the whole page.
PAGE_BREAKING: dict[str, JsonEdit] = {
    "proj-count-word": _set("guestAccelerators.acceleratorCount", "two"),
    "proj-id-object": _set("id", {}),
    "proj-labels-list": _set("labels", ["team", "ml"]),
}
T4 = (("nvidia-tesla-t4", 1),)


def test_vms_compute_lists_brokenly_are_skipped_and_the_project_goes_on(
    world_factory: Callable[..., GcpWorld],
) -> None:
    """Per-VM breakage is skipped with its reason, the rest of the project is audited and the
    idle VM stopped; a wrong type the Google client rejects fails only that project's listing,
    reported as an error, and stops nothing there."""
    world = world_factory()
    for name in SKIPPED:
        world.add("proj-a", FakeVm(name, "us-central1-a", "g2-standard-8"), [IDLE])
    world.add("proj-a", FakeVm("unknown-accelerator", "us-central1-a", "n1-standard-8", T4), [IDLE])
    world.add("proj-a", FakeVm("idle", "us-central1-a", "g2-standard-8"), [IDLE])
    world.add("proj-a", FakeVm("busy", "us-central1-b", "g2-standard-8"), [BUSY])
    for project in PAGE_BREAKING:
        world.add(project, FakeVm("broken", "us-central1-a", "n1-standard-8", T4), [IDLE])
        world.add(project, FakeVm("fine", "us-central1-a", "g2-standard-8"), [IDLE])
    rewrites = [compute_instance_rewrite(name, edit) for name, (edit, _) in SKIPPED.items()]
    rewrites.append(
        compute_instance_rewrite(
            "unknown-accelerator",
            _set("guestAccelerators.acceleratorType", "zones/us-central1-a/acceleratorTypes/q-9"),
        )
    )

    def page_breaking(operation: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        for project, edit in PAGE_BREAKING.items():
            if f"/projects/{project}/" in operation:
                return compute_instance_rewrite("broken", edit)(operation, body, headers)
        return body

    world.proxy.rewrite = _chain(*rewrites, page_breaking)

    with capture_logs() as logs:
        world.run(CYCLES)

    skipped = {
        (e["name"], e["reason"])
        for e in logs
        if e["event"] == "gcp_instance_skipped" and e["project"] == "proj-a"
    }
    assert {name for name, _ in skipped} == SKIPPED.keys()
    for name, reason in skipped:
        assert SKIPPED[name][1] in reason, (name, reason)
    broken_ids = {world.instance_id("proj-a", name) for name in SKIPPED}
    for report in world.reports:
        verdicts = world.verdicts(report)
        assert not verdicts.keys() & broken_ids
        assert verdicts[world.instance_id("proj-a", "busy")][0] == "busy"
        failed = {e.account: e.message for e in report.result.errors}
        assert failed.keys() == PAGE_BREAKING.keys()  # proj-a is audited
        assert all("instances.aggregatedList" in message for message in failed.values())
        for project in PAGE_BREAKING:
            assert world.instance_id(project, "fine") not in verdicts
    # The accelerator's name is not needed to judge the VM: it is audited as it is.
    first = world.verdicts(world.reports[0])
    assert first[world.instance_id("proj-a", "unknown-accelerator")][0] == "idle"
    assert first[world.instance_id("proj-a", "idle")][0] == "idle"
    for name in SKIPPED:
        assert world.status("proj-a", name) == "RUNNING", name
    assert world.status("proj-a", "idle") == "TERMINATED"
    assert world.status("proj-a", "unknown-accelerator") == "TERMINATED"
    assert world.status("proj-a", "busy") == "RUNNING"
    for project in PAGE_BREAKING:
        assert (world.status(project, "broken"), world.status(project, "fine")) == (
            "RUNNING",
            "RUNNING",
        )


def _edit_series(edits: Mapping[str, Callable[[Any], None]]) -> Callable[[Any], None]:
    """Apply ``edits[instance_id]`` to each series of that VM in a ListTimeSeries answer."""

    def edit(answer: Any) -> None:
        for series in answer.time_series:
            change = edits.get(series.resource.labels.get("instance_id", ""))
            if change is not None:
                change(series)

    return edit


def _each_point(change: Callable[[Any], None]) -> Callable[[Any], None]:
    def edit(series: Any) -> None:
        for point in series.points:
            change(point)

    return edit


def _to_future(point: Any) -> None:
    point.interval.end_time = point.interval.end_time + timedelta(hours=2)


def _to_string(point: Any) -> None:
    point.value.string_value = "0"


def _add_future_zeros(series: Any) -> None:
    """Every minute answered a second time, as 0 %, an hour ahead (a clock gone wrong)."""
    from google.cloud import monitoring_v3

    for point in list(series.points):
        series.points.append(
            monitoring_v3.Point(
                interval=monitoring_v3.TimeInterval(
                    end_time=point.interval.end_time + timedelta(hours=1)
                ),
                value=monitoring_v3.TypedValue(double_value=0.0),
            )
        )


def test_hostile_monitoring_points_are_no_readings(
    world_factory: Callable[..., GcpWorld],
) -> None:
    """NaN, infinite and negative doubles, points in the future, values that are not numbers and
    a series without its instance_id leave the VM unmeasured with a reason; an int64 is read;
    a future 0 % does not outvote real busy minutes; only the really idle VM is stopped."""
    edits: dict[str, Callable[[Any], None]] = {}
    world = world_factory([grpc_answer_interceptor(LIST_SERIES, _edit_series(edits))])
    unmeasured = {"nan": math.nan, "inf": math.inf, "negative": -5.0}
    for name, value in unmeasured.items():
        world.add("proj-m", FakeVm(name, "us-central1-a", "g2-standard-8"), [value])
    for name in ("future-only", "strings", "no-instance-id", "idle"):
        world.add("proj-m", FakeVm(name, "us-central1-a", "g2-standard-8"), [IDLE])
    world.add("proj-m", FakeVm("int64-busy", "us-central1-a", "g2-standard-8"), [BUSY])
    world.add("proj-m", FakeVm("busy-then-future-0", "us-central1-a", "g2-standard-8"), [BUSY])
    world.add("proj-m", FakeVm("half-nan", "us-central1-a", "g2-standard-24"), [IDLE, math.nan])
    vm = {name: world.instance_id("proj-m", name) for name in (*unmeasured, "future-only")}
    vm |= {
        name: world.instance_id("proj-m", name)
        for name in ("strings", "no-instance-id", "idle", "int64-busy")
    }
    vm |= {name: world.instance_id("proj-m", name) for name in ("busy-then-future-0", "half-nan")}
    for series in world.monitoring.state.series:
        instance_id = series.resource_labels["instance_id"]
        if instance_id == vm["int64-busy"]:
            series.value_type = "INT64"
        if instance_id == vm["no-instance-id"]:
            series.resource_labels = {"zone": "us-central1-a", "project_id": "proj-m"}

    edits[vm["future-only"]] = _each_point(_to_future)
    edits[vm["strings"]] = _each_point(_to_string)
    edits[vm["busy-then-future-0"]] = _add_future_zeros

    with capture_logs() as logs:
        world.run(CYCLES)

    for report in world.reports:
        assert not report.result.errors
        verdicts = world.verdicts(report)
        for name in (*unmeasured, "future-only", "strings", "no-instance-id"):
            verdict, reasons = verdicts[vm[name]]
            assert verdict == "unmeasured", (name, verdict, reasons)
            assert reasons, name
        for name in ("nan", "inf", "negative", "future-only", "strings"):
            assert "was a reading" in " ".join(verdicts[vm[name]][1]), name
        assert verdicts[vm["int64-busy"]][0] == "busy"
        assert verdicts[vm["busy-then-future-0"]][0] == "busy"
        assert verdicts[vm["half-nan"]][0] != "idle"
    assert world.verdicts(world.reports[0])[vm["idle"]][0] == "idle"
    dropped = [e for e in logs if e["event"] == "gcp_series_points_dropped"]
    assert dropped
    assert all(e["project"] == "proj-m" for e in dropped)
    assert any(e["series_without_instance_id"] for e in dropped)
    stopped = {name for name in vm if world.status("proj-m", name) == "TERMINATED"}
    assert stopped == {"idle"}
