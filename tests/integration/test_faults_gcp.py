"""The same outages on GCP: Cloud Monitoring down (gRPC ``UNAVAILABLE``) while Compute lists the
VMs, then one project unreachable (REST 503) while the other is audited.

The daemon runs in this process on a simulated clock over the real Google clients: Compute REST
through a ``FaultProxy`` in front of the Compute fake, Monitoring gRPC against the fake with a
``grpc_fault_interceptor``; apprise alerts a local webhook receiver; state in SQLite.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from guardian.config import Config
from guardian.daemon.service import CycleReport, Daemon
from guardian.providers import Patience
from guardian.providers.gcp.provider import GcpProvider
from tests.e2e.receivers import HttpReceiver
from tests.fakes.fault_proxy import Fault, FaultProxy, ScheduledFaults, grpc_fault_interceptor
from tests.fakes.gcp_compute import FakeComputeServer, FakeVm
from tests.fakes.gcp_monitoring import FakeMonitoringServer, GpuTrace, ops_agent_series

# A project that does not answer is given up in about a second, not the daemon's minute.
SHORT = Patience(connect_s=0.5, read_s=1.0, attempts=1)

LIST_SERIES = "grpc:/google.monitoring.v3.MetricService/ListTimeSeries"


def test_monitoring_down_then_one_project_unreachable_on_gcp(tmp_path: Path) -> None:
    start = datetime.now(UTC).replace(second=0, microsecond=0)
    compute = FakeComputeServer().start()
    monitoring_faults = ScheduledFaults(always={})
    monitoring = FakeMonitoringServer(
        interceptors=[grpc_fault_interceptor(monitoring_faults)]
    ).start()
    proxy = FaultProxy(compute.endpoint).start()
    receiver = HttpReceiver()
    minutes = [start + timedelta(minutes=m) for m in range(-60, 20)]
    for project in ("proj-a", "proj-b"):
        vm = FakeVm(
            f"nb-{project[-1]}",
            "us-central1-a",
            "g2-standard-8",
            created_at=start - timedelta(days=1),
        )
        compute.state.add(project, [vm])
        idle = GpuTrace([(at, 0.0) for at in minutes], [(at, 9000.0) for at in minutes])
        monitoring.state.series.extend(
            ops_agent_series(project, compute.state.vm(project, vm.name), [idle])
        )
    config = Config.model_validate(
        {
            "mode": "enforce",
            "poll_interval": "1m",
            "state_dir": str(tmp_path / "state"),
            "metrics": {"listen": ""},
            "cost": {"lookback": "1h"},
            "limits": {"max_idle_fraction": 1.0},
            "idle": {"window": "20m", "grace": "3m", "history_margin": 0, "window_bursty": "0s"},
            "aws": {"enabled": False},
            "gcp": {
                "enabled": True,
                "projects": ["proj-a", "proj-b"],
                "credentials": "anonymous",
                "compute_endpoint": proxy.endpoint,
                "monitoring_endpoint": monitoring.endpoint,
            },
            "notify": {"urls": [receiver.url()], "digest": ""},
        }
    )
    now = [start]
    daemon = Daemon(
        config,
        providers=lambda cfg: [GcpProvider(cfg, patience=SHORT)],
        clock=lambda: now[0],
    )

    def cycle() -> CycleReport | None:
        report = daemon.run_cycle()
        now[0] += timedelta(minutes=1)
        return report

    def status(project: str) -> str:
        return compute.state.vm(project, f"nb-{project[-1]}").status

    try:
        cycle()  # both warned
        monitoring_faults.always = {LIST_SERIES: Fault("http503")}  # → gRPC UNAVAILABLE
        for _ in range(4):
            report = cycle()
            assert report is not None
            assert {f.decision.verdict.value for f in report.result.findings} == {"unmeasured"}
            assert all(f.metrics_failed for f in report.result.findings)
        assert (status("proj-a"), status("proj-b")) == ("RUNNING", "RUNNING")

        monitoring_faults.always = {}
        proxy.intercept = lambda r: Fault("http503") if "/projects/proj-b/" in r.operation else None
        for _ in range(4):
            report = cycle()
            assert report is not None
            assert [ref.instance_id for ref in report.not_audited] == [
                str(compute.state.vm("proj-b", "nb-b").instance_id)
            ]
        assert (status("proj-a"), status("proj-b")) == ("TERMINATED", "RUNNING")

        proxy.intercept = None
        cycle()
        assert status("proj-b") == "TERMINATED"
        daemon.flush_outbox()
    finally:
        daemon.close()
        proxy.stop()
        monitoring.stop()
        compute.stop()
        receiver.close()
    titles = receiver.titles()
    assert [t for t in titles if not t.startswith(("Idle GPU instance", "Stopped"))] == [
        "GPU metrics missing in gcp: nothing is stopped there",
        "GPU metrics back in gcp",
        "guardian cannot audit gcp account proj-b",
        "guardian audits gcp account proj-b again",
    ]
    assert sum(t.startswith("Idle GPU instance") for t in titles) == 2  # one warning each
    assert sum(t.startswith("Stopped idle GPU instance") for t in titles) == 2
