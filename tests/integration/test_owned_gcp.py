"""GCP: a managed instance group's member, a GKE node and a VM in a specific reservation, all
idle, through the real Google clients against the local fakes: found as managed / reserved,
alerted about once per group, never sent a stop. And ``instances.get`` for the node agent."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from guardian.config import Config
from guardian.cycle import audit_cycle
from guardian.daemon.enforce import Enforcer
from guardian.daemon.notify import Notifier
from guardian.daemon.store import Store
from guardian.model import Controller, ManagedBy
from guardian.prices import load_catalog
from guardian.providers.gcp.provider import GcpProvider
from tests.fakes.gcp_compute import FakeVm
from tests.fakes.gcp_monitoring import GpuTrace, ops_agent_series
from tests.integration.test_gcp_provider import NOW, Fakes, _minutes, fakes  # noqa: F401

MIG = "projects/123456789/zones/us-central1-a/instanceGroupManagers/l4-pool"


def _fleet(fakes: Fakes) -> None:  # noqa: F811
    old = NOW - timedelta(days=1)
    fakes.cs.add(
        "proj-a",
        [
            FakeVm("l4-pool-x1", "us-central1-a", "g2-standard-8", metadata={"created-by": MIG},
                   created_at=old),
            FakeVm("l4-pool-x2", "us-central1-a", "g2-standard-8", metadata={"created-by": MIG},
                   created_at=old),
            FakeVm("gke-prod-a100-pool-9f3c", "us-central1-a", "a2-highgpu-1g", created_at=old,
                   labels={"goog-gke-node": "", "goog-k8s-cluster-name": "prod",
                           "goog-k8s-node-pool-name": "a100-pool"},
                   metadata={"created-by": MIG.replace("l4-pool", "gke-prod-a100-pool-grp")}),
            FakeVm("reserved-a100", "us-central1-a", "a2-highgpu-1g", reservation="a100-res",
                   created_at=old),
            FakeVm("plain-l4", "us-central1-a", "g2-standard-8", created_at=old),
        ],
    )  # fmt: skip
    for vm in fakes.cs.projects["proj-a"]:
        idle = GpuTrace(_minutes([0.0] * 90), _minutes([0.0] * 90))
        fakes.ms.series.extend(ops_agent_series("proj-a", vm, [idle]))


def test_mig_members_gke_nodes_and_reservations_are_alert_only(
    fakes: Fakes,  # noqa: F811
    tmp_path: Path,
) -> None:
    _fleet(fakes)
    provider = fakes.provider(
        ["proj-a"],
        mode="enforce",
        idle={"grace": "5m", "window_released": "10m"},
        limits={"max_idle_fraction": 1.0},
        notify={"urls": ["json://127.0.0.1:9/hook"]},
        state_dir=str(tmp_path),
    )
    found = {i.name: i for i in provider.discover().instances}
    assert found["l4-pool-x1"].managed_by == ManagedBy(Controller.MIG, "l4-pool")
    assert found["gke-prod-a100-pool-9f3c"].managed_by == ManagedBy(
        Controller.GKE, "a100-pool", "prod"
    )
    assert found["reserved-a100"].reservation == "a100-res"
    assert found["plain-l4"].managed_by is None
    config: Config = provider._config
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    notifier = Notifier(config.notify, store, backoff_base=timedelta(seconds=1))
    enforcer = Enforcer(config, store, notifier, [provider])
    catalog = load_catalog(tmp_path)
    for minutes in (0, 5, 6):
        at = NOW + timedelta(minutes=minutes)
        enforcer.run(audit_cycle(config, [provider], catalog, NOW), at, f"c{minutes}")

    # Only the plain VM is stopped; the others are left to their owner, one alert per group.
    stops = fakes.cs.calls("POST", r"/stop$")
    assert [call.path.rsplit("/", 2)[1] for call in stops] == ["plain-l4"]
    with store.reader() as tx:
        owned = [r for r in tx.notifications_since(NOW) if r.kind == "owned"]
    texts = sorted(repr(r.message) for r in owned)
    assert len(texts) == 3
    assert any("GKE node pool" in t and "--min-nodes 0" in t for t in texts)
    assert any("managed instance group" in t and "2 instances" in t for t in texts)
    assert any("a100-res" in t and "release it or put work on it" in t for t in texts)
    store.close()


def test_describe_reads_one_vm_with_instances_get(fakes: Fakes) -> None:  # noqa: F811
    _fleet(fakes)
    provider: GcpProvider = fakes.provider(["proj-a"])
    listed = {i.name: i for i in provider.discover().instances}["l4-pool-x1"]
    before = len(fakes.cs.requests)
    fresh = provider.describe(listed)
    assert fresh == listed
    calls = fakes.cs.requests[before:]
    assert [(c.method, c.path) for c in calls] == [
        ("GET", "/compute/v1/projects/proj-a/zones/us-central1-a/instances/l4-pool-x1")
    ]


def test_the_provider_never_stops_a_managed_vm(fakes: Fakes) -> None:  # noqa: F811
    _fleet(fakes)
    provider: GcpProvider = fakes.provider(["proj-a"])
    member = {i.name: i for i in provider.discover().instances}["l4-pool-x1"]
    result = provider.stop(member)
    assert (result.ok, result.permanent) == (False, True)
    assert "managed instance group l4-pool" in result.message
    assert fakes.cs.calls("POST", r"/stop$") == []
