"""The simulated GCP project ``guardian demo`` shows: the real provider, the real policy and the
embedded price catalog give every verdict once, and a stop takes the VM out of the next cycle."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from guardian.config import Config
from guardian.cycle import audit_cycle
from guardian.model import Verdict
from guardian.prices.catalog import load_embedded
from guardian.providers.gcp.provider import GcpProvider
from guardian.simulated.gcp import DEMO_PROJECT, start_demo_gcp, start_simulated_gcp
from tests.fakes.gcp_compute import FakeVm
from tests.fakes.gcp_monitoring import GpuTrace


def test_the_demo_project_shows_every_verdict_and_stops_the_idle_vm() -> None:
    now = datetime.now(UTC)
    sim = start_demo_gcp(now)
    config = Config.model_validate(
        {"mode": "enforce", "aws": {"enabled": False}, "gcp": sim.gcp_config().model_dump()}
    )
    provider = GcpProvider(config)
    try:
        result = audit_cycle(config, [provider], load_embedded(), now)
        verdicts = {f.instance.name: f.decision.verdict for f in result.findings}
        assert verdicts == {
            "train-llm-a100": Verdict.IDLE,
            "batch-spot-l4": Verdict.IDLE,
            "notebook-t4": Verdict.UNDERUSED,
            "serve-l4": Verdict.BUSY,
            "render-t4": Verdict.UNMEASURED,
            "eval-a100": Verdict.PROTECTED,
            "l4-pool-7xk2": Verdict.IDLE,  # a managed instance group's member: alert-only
        }
        assert result.errors == ()
        by_name = {f.instance.name: f for f in result.findings}
        idle = by_name["train-llm-a100"]
        assert idle.instance.account == DEMO_PROJECT
        assert idle.price.hourly_price is not None  # priced from the embedded catalog
        assert idle.price.premium is not None
        assert by_name["batch-spot-l4"].instance.lifecycle.value == "spot"
        assert by_name["serve-l4"].instance.has_instance_store  # local SSD: alert-only
        owner = by_name["l4-pool-7xk2"].instance.managed_by
        assert owner is not None
        assert (owner.kind.value, owner.name) == ("managed-instance-group", "l4-pool")

        stopped = provider.stop(idle.instance)
        assert stopped.ok, stopped.message
        remaining = {i.name for i in provider.discover().instances}
        assert "train-llm-a100" not in remaining
        assert len(remaining) == 6
    finally:
        provider.close()
        sim.stop()


def test_start_simulated_gcp_serves_what_it_is_given_until_stopped() -> None:
    now = datetime.now(UTC)
    vm = FakeVm("one", "us-central1-a", "n1-standard-4", (("nvidia-tesla-t4", 1),))
    compute, monitoring, stop = start_simulated_gcp(
        "p", [vm], {"one": [GpuTrace([(now, 42.0)], [(now, 1000.0)])]}
    )
    config = Config.model_validate(
        {
            "aws": {"enabled": False},
            "gcp": {
                "enabled": True,
                "projects": ["p"],
                "credentials": "anonymous",
                "compute_endpoint": compute,
                "monitoring_endpoint": monitoring,
            },
        }
    )
    provider = GcpProvider(config)
    try:
        [instance] = provider.discover().instances
        [utilisation] = dict(
            provider.utilisation([instance], now - timedelta(hours=1), now)
        ).values()
        assert [(s.gpu_util_pct, s.mem_used_mib) for s in utilisation.samples] == [(42.0, 1000.0)]
    finally:
        provider.close()
        stop()
    host = urlsplit(compute)
    with socket.socket() as probe:
        assert probe.connect_ex((host.hostname or "", host.port or 0)) != 0  # really stopped
