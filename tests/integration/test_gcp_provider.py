"""``GcpProvider`` with the real Google clients against the local Compute REST and Monitoring
gRPC fakes: discovery, metrics, stop, and what happens when one project's API fails.

The fakes record every request, so these tests assert what guardian *sends* (filters,
aggregations, one call per project and metric, page tokens followed), not only what it returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from guardian.config import Config
from guardian.cycle import audit_cycle
from guardian.errors import AuthError, ConfigError
from guardian.model import GpuInstance, Lifecycle, Verdict
from guardian.prices import PriceCatalog
from guardian.providers import Patience
from guardian.providers.gcp.probe import probe_credentials
from guardian.providers.gcp.provider import GcpProvider
from tests.clock import NOW
from tests.fakes.gcp_compute import (
    DEFAULT_MACHINE_TYPES,
    FakeComputeServer,
    FakeComputeState,
    FakeMachineType,
    FakeVm,
)
from tests.fakes.gcp_monitoring import (
    FakeMonitoringServer,
    FakeMonitoringState,
    FakeTimeSeries,
    GpuTrace,
    ops_agent_series,
)

UTIL = "agent.googleapis.com/gpu/utilization"
MEM = "agent.googleapis.com/gpu/memory/bytes_used"
# A family no name table knows: found only by asking machineTypes.
FUTURE_TYPE = FakeMachineType("g9-standard-8", 8, 32 * 1024, (("nvidia-future-x", 2),))


@dataclass
class Fakes:
    compute: FakeComputeServer
    monitoring: FakeMonitoringServer
    providers: list[GcpProvider] = field(default_factory=list)

    def provider(self, projects: list[str], **settings: Any) -> GcpProvider:
        gcp: dict[str, Any] = {
            "enabled": True,
            "projects": projects,
            "credentials": "anonymous",
            "compute_endpoint": self.compute.endpoint,
            "monitoring_endpoint": self.monitoring.endpoint,
        }
        gcp.update(settings.pop("gcp", {}))
        provider_kwargs = settings.pop("provider_kwargs", {})
        config = Config.model_validate({"aws": {"enabled": False}, "gcp": gcp, **settings})
        provider = GcpProvider(config, **provider_kwargs)
        self.providers.append(provider)
        return provider

    @property
    def cs(self) -> FakeComputeState:
        return self.compute.state

    @property
    def ms(self) -> FakeMonitoringState:
        return self.monitoring.state


@pytest.fixture
def fakes() -> Iterator[Fakes]:
    compute = FakeComputeServer(
        FakeComputeState(machine_types=(*DEFAULT_MACHINE_TYPES, FUTURE_TYPE))
    ).start()
    monitoring = FakeMonitoringServer().start()
    bundle = Fakes(compute, monitoring)
    yield bundle
    for provider in bundle.providers:
        provider.close()
    compute.stop()
    monitoring.stop()


def _fleet() -> dict[str, list[FakeVm]]:
    day = timedelta(days=1)
    return {
        "proj-a": [
            FakeVm(
                "nb-t4",
                "us-central1-a",
                "n1-standard-8",
                (("nvidia-tesla-t4", 1),),
                labels={"owner": "carol", "team": "research"},
                created_at=NOW - 10 * day,
                last_started_at=NOW - day,
            ),
            FakeVm("train-a2", "us-central1-b", "a2-highgpu-2g", local_ssd=True),
            FakeVm(
                "spot-l4",
                "us-central1-c",
                "g2-standard-8",
                labels={"createdby": "ci-bot"},
                provisioning_model="SPOT",
            ),
            FakeVm(
                "legacy-v100",
                "us-east1-c",
                "n1-standard-16",
                (("nvidia-tesla-v100", 4),),
                provisioning_model="PREEMPTIBLE",
            ),
            FakeVm("future", "us-central1-a", "g9-standard-8"),
            FakeVm("custom-t4", "us-central1-a", "n1-custom-8-30720", (("nvidia-tesla-t4", 1),)),
            FakeVm("web", "us-central1-a", "e2-standard-4"),
            FakeVm("stopped-g2", "us-central1-a", "g2-standard-8", status="TERMINATED"),
        ],
        "proj-b": [FakeVm("b-l4", "europe-west4-a", "g2-standard-4", labels={"team": "vision"})],
    }


def _seed(fakes: Fakes) -> None:
    for project, vms in _fleet().items():
        fakes.cs.add(project, vms)


def _by_name(instances: tuple[GpuInstance, ...]) -> dict[str, GpuInstance]:
    return {i.name or "": i for i in instances}


# -- discovery -------------------------------------------------------------------------------


def test_discovery_finds_running_gpu_vms_in_every_project_across_pages(fakes: Fakes) -> None:
    _seed(fakes)
    fakes.cs.page_size = 2  # proj-a's 7 running VMs come back in 4 pages
    provider = fakes.provider(["proj-a", "proj-b"])

    found = provider.discover()

    assert found.errors == ()
    vms = _by_name(found.instances)
    assert set(vms) == {
        "nb-t4",
        "train-a2",
        "spot-l4",
        "legacy-v100",
        "future",
        "custom-t4",
        "b-l4",
    }
    nb = vms["nb-t4"]
    assert (nb.provider, nb.account, nb.region, nb.zone) == (
        "gcp",
        "proj-a",
        "us-central1",
        "us-central1-a",
    )
    assert (nb.instance_type, nb.gpu_count, nb.gpu_model) == ("n1-standard-8", 1, "nvidia-tesla-t4")
    assert nb.instance_id == str(fakes.cs.vm("proj-a", "nb-t4").instance_id)
    assert nb.owner == "carol"  # the first of config.owner_tags present
    assert dict(nb.tags) == {"owner": "carol", "team": "research"}
    assert nb.launch_time == NOW - timedelta(days=1)  # the last start, not the creation
    assert nb.lifecycle is Lifecycle.ON_DEMAND
    assert not nb.has_instance_store
    a2 = vms["train-a2"]  # lists no guestAccelerators: learned from machineTypes
    assert (a2.gpu_count, a2.gpu_model, a2.has_instance_store) == (2, "nvidia-tesla-a100", True)
    assert vms["spot-l4"].lifecycle is Lifecycle.SPOT
    assert vms["spot-l4"].owner == "ci-bot"  # CreatedBy, looked up lowercased as labels are
    assert vms["legacy-v100"].lifecycle is Lifecycle.PREEMPTIBLE
    assert (vms["legacy-v100"].gpu_count, vms["legacy-v100"].region) == (4, "us-east1")
    assert (vms["future"].gpu_count, vms["future"].gpu_model) == (2, "nvidia-future-x")
    assert vms["b-l4"].owner == "vision"  # "team" is the first owner tag it has
    assert vms["b-l4"].region == "europe-west4"

    listed = fakes.cs.calls("GET", r"/aggregated/instances$")
    assert {r.query["filter"] for r in listed} == {"status = RUNNING"}
    proj_a = [r for r in listed if "/proj-a/" in r.path]
    assert [r.query.get("pageToken") for r in proj_a] == [None, "2", "4", "6"]
    assert len([r for r in listed if "/proj-b/" in r.path]) == 1
    # One machineTypes lookup serves both projects, for exactly the names not self-described.
    lookups = fakes.cs.calls("GET", r"/aggregated/machineTypes$")
    assert [r.query.get("pageToken") for r in lookups][:2] == [None, "2"]  # one call, paged
    assert lookups[0].query["filter"] == (
        'name eq "(a2-highgpu-2g|e2-standard-4|g2-standard-4|g2-standard-8|g9-standard-8)"'
    )
    assert found.api_calls == {
        "compute.instances.aggregatedList": 5,
        "compute.machineTypes.aggregatedList": len(lookups),  # pages
    }


def test_machine_types_are_cached_for_a_day(fakes: Fakes) -> None:
    _seed(fakes)
    clock = [NOW]
    provider = fakes.provider(["proj-a"], provider_kwargs={"clock": lambda: clock[0]})
    provider.discover()
    provider.discover()
    assert len(fakes.cs.calls("GET", r"/aggregated/machineTypes$")) == 1
    clock[0] = NOW + timedelta(hours=25)
    provider.discover()
    assert len(fakes.cs.calls("GET", r"/aggregated/machineTypes$")) == 2


def test_without_machine_types_known_families_are_still_found(fakes: Fakes) -> None:
    _seed(fakes)
    fakes.cs.fail_machine_types = (403, "Required 'compute.machineTypes.list' permission")
    provider = fakes.provider(["proj-a"])
    with capture_logs() as logs:
        found = provider.discover()
    vms = _by_name(found.instances)
    assert (vms["train-a2"].gpu_count, vms["train-a2"].gpu_model) == (2, "nvidia-tesla-a100")
    assert (vms["spot-l4"].gpu_count, vms["spot-l4"].gpu_model) == (1, "nvidia-l4")
    assert "future" not in vms  # an unknown family cannot be guessed from its name
    assert "nb-t4" in vms
    assert "custom-t4" in vms
    assert found.errors == ()
    warning = [e for e in logs if e["event"] == "gcp_machine_types_unavailable"]
    assert len(warning) == 1
    assert "Forbidden (403)" in warning[0]["error"]


def test_unreachable_zone_is_reported_and_empty_zones_are_not(fakes: Fakes) -> None:
    _seed(fakes)
    fakes.cs.unreachable_zones = {"us-east1-c"}
    found = fakes.provider(["proj-a"]).discover()
    assert "legacy-v100" not in _by_name(found.instances)
    assert [(e.account, e.region, e.operation) for e in found.errors] == [
        ("proj-a", "us-east1-c", "instances.aggregatedList")
    ]
    assert "UNREACHABLE" in found.errors[0].message


def test_a_failing_project_is_one_unit_error_and_the_others_are_listed(fakes: Fakes) -> None:
    _seed(fakes)
    fakes.cs.fail_projects["proj-a"] = (403, "Required 'compute.instances.list' permission")
    found = fakes.provider(["proj-a", "proj-b"]).discover()
    assert [i.name for i in found.instances] == ["b-l4"]
    assert len(found.errors) == 1
    error = found.errors[0]
    assert (error.provider, error.account, error.operation) == (
        "gcp",
        "proj-a",
        "instances.aggregatedList",
    )
    assert "Forbidden (403)" in error.message
    assert "compute.instances.list" in error.message


def test_an_unreachable_endpoint_fails_fast_as_a_unit_error(fakes: Fakes) -> None:
    _seed(fakes)
    provider = fakes.provider(
        ["proj-a"], gcp={"compute_endpoint": "http://127.0.0.1:9"}, provider_kwargs={}
    )
    found = provider.discover()
    assert found.instances == ()
    assert "endpoint unreachable" in found.errors[0].message


def test_server_errors_are_retried_within_the_deadline_then_reported(fakes: Fakes) -> None:
    _seed(fakes)
    fakes.cs.fail_projects["proj-a"] = (503, "backend unavailable")
    # Two attempts of 0.3 s each: the retry stops within 0.6 s.
    patience = Patience(connect_s=0.1, read_s=0.2, attempts=2)
    provider = fakes.provider(["proj-a"], provider_kwargs={"patience": patience})
    found = provider.discover()
    assert "gave up retrying" in found.errors[0].message
    assert "ServiceUnavailable (503)" in found.errors[0].message
    assert len(fakes.cs.calls("GET", r"/proj-a/aggregated/instances$")) >= 2  # retried


# -- utilisation -----------------------------------------------------------------------------


def _minutes(values: list[float | None], end: datetime = NOW) -> list[tuple[datetime, float]]:
    """One point a minute ending at ``end``; None leaves a gap."""
    start = end - timedelta(minutes=len(values) - 1)
    return [(start + timedelta(minutes=i), v) for i, v in enumerate(values) if v is not None]


def _add_metrics(fakes: Fakes, project: str, name: str, traces: list[GpuTrace]) -> None:
    fakes.ms.series.extend(ops_agent_series(project, fakes.cs.vm(project, name), traces))


def test_one_monitoring_call_per_project_and_metric_serves_every_vm(fakes: Fakes) -> None:
    _seed(fakes)
    fakes.ms.page_size = 2  # many pages per call
    _add_metrics(
        fakes,
        "proj-a",
        "nb-t4",
        [GpuTrace(_minutes([3, 40, 2]), _minutes([1024.0, 2048.0, 512.0]))],
    )
    # Two GPUs: the per-timestamp max over both; GPU 1 misses the middle minute.
    _add_metrics(
        fakes,
        "proj-a",
        "train-a2",
        [
            GpuTrace(_minutes([10, 0, 0]), _minutes([100.0, 100.0, 100.0])),
            GpuTrace(_minutes([20, None, 1]), _minutes([300.0, None, 50.0])),
        ],
    )
    for name in ("spot-l4", "legacy-v100", "future", "custom-t4"):
        _add_metrics(fakes, "proj-a", name, [GpuTrace(_minutes([50, 50, 50]))])
    _add_metrics(fakes, "proj-b", "b-l4", [GpuTrace(_minutes([0, 0, 0]), _minutes([0.0] * 3))])
    provider = fakes.provider(["proj-a", "proj-b"])
    found = provider.discover()
    start = NOW - timedelta(hours=1)

    series = dict(provider.utilisation(found.instances, start, NOW))

    assert set(series) == {i.key for i in found.instances}
    calls = fakes.ms.first_pages()
    assert sorted((q.project, q.filter) for q in calls) == [
        (
            "proj-a",
            f'metric.type = "{MEM}" AND resource.type = "gce_instance" '
            'AND metric.labels.memory_state = "used"',
        ),
        ("proj-a", f'metric.type = "{UTIL}" AND resource.type = "gce_instance"'),
        (
            "proj-b",
            f'metric.type = "{MEM}" AND resource.type = "gce_instance" '
            'AND metric.labels.memory_state = "used"',
        ),
        ("proj-b", f'metric.type = "{UTIL}" AND resource.type = "gce_instance"'),
    ]
    for query in fakes.ms.queries:
        assert (query.aligner, query.alignment_period_s, query.reducer) == (
            "ALIGN_MAX",
            60,
            "REDUCE_NONE",
        )
        assert (query.start, query.end, query.view) == (start, NOW, "FULL")
    assert len(fakes.ms.queries) > len(calls)  # the page tokens were followed
    assert provider.api_calls["monitoring.listTimeSeries"] == len(fakes.ms.queries)

    keys = {i.name: i.key for i in found.instances}
    nb = series[keys["nb-t4"]]
    assert nb.error is None
    assert nb.gpus_reporting == 1
    assert nb.period_s == 60
    assert [(s.at, s.gpu_util_pct, s.mem_used_mib) for s in nb.samples] == [
        (NOW - timedelta(minutes=2), 3.0, 1024.0),
        (NOW - timedelta(minutes=1), 40.0, 2048.0),
        (NOW, 2.0, 512.0),
    ]  # oldest first although Monitoring sends newest first; bytes → MiB
    a2 = series[keys["train-a2"]]
    assert a2.gpus_reporting == 2
    assert [(s.gpu_util_pct, s.mem_used_mib, s.complete) for s in a2.samples] == [
        (20.0, 300.0, True),
        (0.0, 100.0, False),  # one GPU silent: not complete, so it proves nothing about idle
        (1.0, 100.0, True),
    ]
    assert series[keys["spot-l4"]].samples[-1].mem_used_mib is None  # memory not reported


def test_a_vm_without_the_ops_agent_is_unmeasured(fakes: Fakes) -> None:
    fakes.cs.add(
        "proj-a",
        [FakeVm("quiet", "us-central1-a", "g2-standard-8", created_at=NOW - timedelta(days=1))],
    )
    provider = fakes.provider(["proj-a"])
    found = provider.discover()
    result = audit_cycle(provider._config, [provider], PriceCatalog({}), NOW)
    [finding] = result.findings
    assert finding.decision.verdict is Verdict.UNMEASURED
    assert "Ops Agent" in finding.decision.reasons[0]
    assert len(fakes.ms.first_pages()) == 2
    assert found.instances[0].name == "quiet"


def test_a_failing_metrics_project_leaves_its_vms_unmeasured_and_others_measured(
    fakes: Fakes,
) -> None:
    created = NOW - timedelta(days=2)
    fakes.cs.add("proj-a", [FakeVm("a-idle", "us-central1-a", "g2-standard-8", created_at=created)])
    fakes.cs.add("proj-b", [FakeVm("b-idle", "us-central1-a", "g2-standard-8", created_at=created)])
    flat = [0.0] * 180  # three idle hours, memory released: idle wherever it is measured
    for project, name in (("proj-a", "a-idle"), ("proj-b", "b-idle")):
        _add_metrics(fakes, project, name, [GpuTrace(_minutes(flat), _minutes(flat))])
    fakes.ms.fail_projects["proj-b"] = ("PERMISSION_DENIED", "monitoring.timeSeries.list denied")
    provider = fakes.provider(["proj-a", "proj-b"], mode="enforce")

    result = audit_cycle(provider._config, [provider], PriceCatalog({}), NOW)

    verdicts = {f.instance.name: f.decision for f in result.findings}
    assert verdicts["a-idle"].verdict is Verdict.IDLE
    assert verdicts["a-idle"].action == "stop"
    failed = verdicts["b-idle"]
    assert failed.verdict is Verdict.UNMEASURED
    assert failed.action == "report"
    assert "Cloud Monitoring query failed" in failed.reasons[0]
    assert "PermissionDenied" in failed.reasons[0]
    assert fakes.cs.calls("POST", r"/stop$") == []  # measuring never acts


def test_dcgm_metrics_are_read_as_fractions_with_their_state_label(fakes: Fakes) -> None:
    fakes.cs.add("proj-a", [FakeVm("dcgm", "us-central1-a", "g2-standard-8")])
    vm = fakes.cs.vm("proj-a", "dcgm")
    resource = {"instance_id": str(vm.instance_id), "zone": vm.zone, "project_id": "proj-a"}
    gpu = {"gpu_number": "0", "model": "NVIDIA L4", "uuid": "GPU-1"}
    dcgm_util = "workload.googleapis.com/gpu.dcgm.utilization"
    dcgm_mem = "workload.googleapis.com/gpu.dcgm.memory.bytes_used"
    fakes.ms.series += [
        FakeTimeSeries("proj-a", dcgm_util, resource, gpu, _minutes([0.25, 0.5]), unit="1"),
        FakeTimeSeries(
            "proj-a",
            dcgm_mem,
            resource,
            {**gpu, "state": "used"},
            _minutes([2**30, 2**29]),
            value_type="INT64",
            unit="By",
        ),
        FakeTimeSeries(
            "proj-a",
            dcgm_mem,
            resource,
            {**gpu, "state": "free"},
            _minutes([2**34, 2**34]),
            value_type="INT64",
            unit="By",
        ),
    ]
    provider = fakes.provider(
        ["proj-a"], gcp={"metrics": {"gpu_util": dcgm_util, "gpu_mem_used": dcgm_mem, "period": 60}}
    )
    found = provider.discover()
    [utilisation] = dict(
        provider.utilisation(found.instances, NOW - timedelta(hours=1), NOW)
    ).values()
    assert [(s.gpu_util_pct, s.mem_used_mib) for s in utilisation.samples] == [
        (25.0, 1024.0),
        (50.0, 512.0),
    ]
    assert any('metric.labels.state = "used"' in q.filter for q in fakes.ms.queries)


# -- stop --------------------------------------------------------------------------------------


def _discovered(provider: GcpProvider, name: str) -> GpuInstance:
    return _by_name(provider.discover().instances)[name]


def test_stop_waits_on_the_zone_operation_through_the_same_endpoint(fakes: Fakes) -> None:
    _seed(fakes)
    fakes.cs.operation_polls = 3
    provider = fakes.provider(["proj-a"])
    result = provider.stop(_discovered(provider, "nb-t4"))
    assert result.ok, result.message
    assert result.action == "stop"
    [stop] = fakes.cs.calls("POST", r"/instances/nb-t4/stop$")
    assert stop.path == "/compute/v1/projects/proj-a/zones/us-central1-a/instances/nb-t4/stop"
    assert "discardLocalSsd" not in stop.query  # no local SSD: nothing to discard
    # The library's own poller would have gone to compute.googleapis.com; ours came here.
    waits = fakes.cs.calls("POST", r"/zones/us-central1-a/operations/[^/]+/wait$")
    assert len(waits) == 3
    assert fakes.cs.vm("proj-a", "nb-t4").status == "TERMINATED"
    assert fakes.cs.calls("DELETE", ".") == []


def test_local_ssd_is_never_discarded_when_local_disks_are_alert_only(fakes: Fakes) -> None:
    _seed(fakes)
    refused = fakes.provider(["proj-a"], enforce={"local_disks": "alert"})
    result = refused.stop(_discovered(refused, "train-a2"))
    assert not result.ok
    assert result.permanent
    assert "local SSD" in result.message
    assert fakes.cs.calls("POST", r"/stop$") == []  # refused before any call

    # stop-if-unused (the default): enforcement's gate has found it unused before the call.
    allowed = fakes.provider(["proj-a"])
    result = allowed.stop(_discovered(allowed, "train-a2"))
    assert result.ok, result.message
    [stop] = fakes.cs.calls("POST", r"/stop$")
    assert stop.query["discardLocalSsd"] == "true"


def test_spot_vms_can_be_stopped_and_hibernate_falls_back_to_stop(fakes: Fakes) -> None:
    _seed(fakes)
    provider = fakes.provider(["proj-a"])
    result = provider.stop(_discovered(provider, "spot-l4"), hibernate=True)
    assert result.ok
    assert result.action == "stop"
    assert "cannot suspend" in result.message
    assert fakes.cs.calls("POST", r"/suspend$") == []


def test_stop_failures_are_results_not_exceptions(fakes: Fakes) -> None:
    _seed(fakes)
    provider = fakes.provider(["proj-a"])
    instance = _discovered(provider, "nb-t4")
    fakes.cs.fail_projects["proj-a"] = (403, "Required 'compute.instances.stop' permission")
    result = provider.stop(instance)
    assert not result.ok
    assert "Forbidden (403)" in result.message


def test_a_stop_still_running_at_the_deadline_is_not_reported_done(fakes: Fakes) -> None:
    _seed(fakes)
    fakes.cs.operation_polls = 10_000
    provider = fakes.provider(["proj-a"], provider_kwargs={"stop_timeout_s": 0.3})
    result = provider.stop(_discovered(provider, "nb-t4"))
    assert not result.ok
    assert "still RUNNING" in result.message


def test_anonymous_credentials_need_explicit_projects(fakes: Fakes) -> None:
    with pytest.raises(ConfigError, match=r"^gcp.projects: list at least one project"):
        fakes.provider([])


# -- check-config --probe ------------------------------------------------------------------------


def test_the_probe_makes_one_small_call_of_each_kind_per_project(fakes: Fakes) -> None:
    _seed(fakes)
    config = fakes.provider(["proj-a", "proj-b"])._config
    assert probe_credentials(config) == (
        "anonymous credentials; may list VMs and read GPU metrics in proj-a, proj-b"
    )
    listed = fakes.cs.calls("GET", r"/aggregated/instances$")
    assert [(r.path.split("/")[4], r.query["maxResults"]) for r in listed] == [
        ("proj-a", "1"),
        ("proj-b", "1"),
    ]
    assert [(q.project, q.page_size) for q in fakes.ms.queries] == [("proj-a", 1), ("proj-b", 1)]


def test_the_probe_names_the_project_whose_permission_is_missing(fakes: Fakes) -> None:
    _seed(fakes)
    fakes.ms.fail_projects["proj-b"] = ("PERMISSION_DENIED", "monitoring.timeSeries.list denied")
    config = fakes.provider(["proj-a", "proj-b"])._config
    with pytest.raises(AuthError, match=r"^project proj-b: monitoring.listTimeSeries: "):
        probe_credentials(config)
