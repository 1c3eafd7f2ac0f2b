"""Right-sizing end to end: the real providers read the GPUs and the hosts (moto, the GCP fakes),
the real cycle sizes each instance against the embedded catalog.

The issue's cases: a one-GPU job on a g5.12xlarge, a p4d using all eight GPUs, a g6e.xlarge whose
light work fits an L4, a GPU that does not earn its premium (the CPU move), a GCP a2-highgpu-4g
using one GPU — and a protected instance, shown but never sized.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from guardian.config import Config
from guardian.cycle import audit_cycle
from guardian.model import Finding
from guardian.prices import load_catalog
from guardian.providers.aws.discovery import GpuTypeCatalog
from guardian.providers.aws.provider import AwsProvider
from guardian.providers.factory import aws_instance_series, gcp_instance_series
from guardian.simulated.aws import (
    Reading,
    SimInstance,
    constant,
    fake_aws_env,
    reset_moto_server,
    seed_fleet,
)
from guardian.simulated.gcp import host_series
from tests.conftest import AwsWire, MotoServer
from tests.fakes.gcp_monitoring import GpuTrace, ops_agent_series
from tests.integration.test_gcp_provider import Fakes, fakes  # noqa: F401

# Minutes of metrics, all inside the lookback. Stock moto scans every datum for every query and
# period, so the AWS fleet is seeded and audited once for the module (5-10 s), not per test.
HISTORY = 40
LOOKBACK = "40m"
CATALOG = load_catalog(None)


def _now() -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0)


def _notebook(minutes: int) -> list[Reading]:
    """Waiting on its user, a short burst every 30 minutes: the GPU does not earn its premium."""
    return [Reading(40.0 if m % 30 == 0 else 0.0, 6_000.0) for m in range(minutes)]


def _aws_fleet() -> list[SimInstance]:
    hours = timedelta(hours=3)
    idle_gpus = {i: constant(0.0, 0.0, HISTORY) for i in (1, 2, 3)}
    return [
        SimInstance(
            "g5.12xlarge",
            {0: constant(90.0, 20 * 1024.0, HISTORY), **idle_gpus},
            tags={"Name": "one-of-four"},
            age=hours,
            host_cpu_pct=[5.0] * (HISTORY // 5),
            host_mem_pct=[8.0] * HISTORY,
        ),
        SimInstance(
            "p4d.24xlarge",
            constant(30.0, 30 * 1024.0, HISTORY),
            tags={"Name": "all-eight"},
            age=hours,
        ),
        SimInstance(
            "g6e.xlarge",
            constant(10.0, 10 * 1024.0, HISTORY),
            tags={"Name": "light-l40s"},
            age=hours,
            host_cpu_pct=[20.0] * (HISTORY // 5),
            host_mem_pct=[20.0] * HISTORY,
        ),
        SimInstance("g5.2xlarge", _notebook(HISTORY), tags={"Name": "notebook"}, age=hours),
        SimInstance(
            "g5.12xlarge",
            {0: constant(90.0, 20 * 1024.0, HISTORY), **idle_gpus},
            tags={"Name": "kept", "guardian:protect": "true"},
            age=hours,
        ),
    ]


def _by_name(findings: Sequence[Finding]) -> dict[str, Finding]:
    return {f.instance.name or f.instance.instance_id: f for f in findings}


@dataclass(frozen=True)
class AwsAudit:
    findings: dict[str, Finding]
    wire: AwsWire  # what was sent


@pytest.fixture(scope="module")
def aws_audit(_moto_endpoint: str, aws_gpu_catalog: GpuTypeCatalog) -> Iterator[AwsAudit]:
    with pytest.MonkeyPatch.context() as env:
        # What the function-scoped ``moto_server`` fixture does, once for the module.
        reset_moto_server(_moto_endpoint)
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_ROLE_ARN"):
            env.delenv(name, raising=False)
        for name, value in fake_aws_env(_moto_endpoint).items():
            env.setenv(name, value)
        moto_server, wire = MotoServer(_moto_endpoint), AwsWire()
        now = _now()
        region = "us-east-1"
        seed_fleet(
            moto_server.client("ec2", region),
            moto_server.client("cloudwatch", region),
            _aws_fleet(),
            now,
        )
        config = Config.model_validate(
            {"cost": {"lookback": LOOKBACK}, "aws": {"regions": [region]}}
        )
        provider = AwsProvider(
            config,
            session=wire.session,
            catalog=aws_gpu_catalog,
            instance_series=aws_instance_series(config),
        )
        try:
            result = audit_cycle(config, [provider], CATALOG, now)
        finally:
            provider.close()
        yield AwsAudit(_by_name(result.findings), wire)


def _recommended(finding: Finding) -> Any:
    assert finding.recommendation is not None, finding.rightsize_note
    return finding.recommendation


def test_one_busy_gpu_of_four_moves_to_a_one_gpu_g5_as_the_host_allows(aws_audit: AwsAudit) -> None:
    rec = _recommended(aws_audit.findings["one-of-four"])
    assert rec.move == "resize"
    # The host's measured need (5% of 48 vCPUs, 8% of 192 GiB, with headroom) fits 8 vCPUs and
    # 32 GiB, not the 16 GiB of a g5.xlarge.
    assert rec.instance_type == "g5.2xlarge"
    assert (rec.gpus_used, rec.peak_gpu_mem_mib) == (1, 20 * 1024.0)
    assert rec.saves_usd_month == round((5.672 - 1.212) * 730, 2)
    assert rec.not_measured == ()
    assert "host CPU p99.5 5% of 48 vCPUs" in rec.reason
    # The host series rode in the GPUs' GetMetricData calls: CPU by exactly {InstanceId} at
    # 5 minutes (no listing), the agent's memory from one ListMetrics of the region.
    sent = [
        q["MetricStat"]
        for call in aws_audit.wire.sent("cloudwatch:GetMetricData")
        for q in call.params["MetricDataQueries"]
    ]
    cpu = [s for s in sent if s["Metric"]["MetricName"] == "CPUUtilization"]
    assert cpu
    assert {s["Period"] for s in cpu} == {300}
    assert {len(s["Metric"]["Dimensions"]) for s in cpu} == {1}
    assert {s["Period"] for s in sent if s["Metric"]["MetricName"] == "mem_used_percent"} == {300}
    listed = {c.params["MetricName"] for c in aws_audit.wire.sent("cloudwatch:ListMetrics")}
    assert "mem_used_percent" in listed
    assert "CPUUtilization" not in listed


def test_all_eight_gpus_used_means_no_gpu_count_cut(aws_audit: AwsAudit) -> None:
    finding = aws_audit.findings["all-eight"]
    rec = finding.recommendation
    if rec is not None:  # another 8-GPU type would be fine; fewer GPUs never
        entry = CATALOG.lookup("aws", "us-east-1", rec.instance_type)
        assert entry is not None
        assert entry.gpus >= 8
    else:
        assert finding.rightsize_note is not None
        assert "8+ GPUs" in finding.rightsize_note


def test_light_work_on_an_l40s_fits_an_l4(aws_audit: AwsAudit) -> None:
    rec = _recommended(aws_audit.findings["light-l40s"])
    entry = CATALOG.lookup("aws", "us-east-1", rec.instance_type)
    assert entry is not None
    assert rec.instance_type.startswith("g6.")
    assert entry.gpu_model == "NVIDIA L4"
    assert rec.peak_gpu_mem_mib == 10 * 1024.0
    assert "fits a NVIDIA L4" in rec.reason


def test_a_premium_not_earned_offers_the_cpu_move(aws_audit: AwsAudit) -> None:
    finding = aws_audit.findings["notebook"]
    assert finding.decision.verdict.value == "underused"
    rec = _recommended(finding)
    equivalent = finding.price.cpu_equivalent
    assert equivalent is not None
    cpu = rec.move_to_cpu if rec.move == "resize" else rec
    assert cpu is not None
    assert cpu.instance_type == equivalent.instance_type
    assert cpu.saves_usd_month == round((1.212 - equivalent.hourly_price) * 730, 2)
    # Without host metrics the resize keeps the host's size, and says so.
    if rec.move == "resize":
        assert "host CPU not measured: kept 8 vCPUs" in rec.not_measured


def test_a_protected_instance_is_shown_marked_and_never_sized(
    aws_audit: AwsAudit,
) -> None:
    finding = aws_audit.findings["kept"]
    assert finding.recommendation is None
    assert finding.rightsize_note == "protected: not sized"


def _fraction(value: float, minutes: int, end: datetime) -> list[tuple[datetime, float]]:
    return [(end - timedelta(minutes=m), value) for m in range(minutes)]


def test_gcp_a2_highgpu_4g_using_one_gpu_moves_to_a2_highgpu_1g(fakes: Fakes) -> None:  # noqa: F811
    from tests.fakes.gcp_compute import FakeVm

    now = _now()
    fakes.cs.add(
        "proj-a",
        [FakeVm("a2-four", "us-central1-a", "a2-highgpu-4g", created_at=now - timedelta(days=1))],
    )
    vm = fakes.cs.vm("proj-a", "a2-four")
    busy = GpuTrace(_fraction(85.0, HISTORY, now), _fraction(30 * 1024.0, HISTORY, now))
    idle = GpuTrace(_fraction(0.0, HISTORY, now), _fraction(0.0, HISTORY, now))
    fakes.ms.series.extend(ops_agent_series("proj-a", vm, [busy, idle, idle, idle]))
    fakes.ms.series.extend(
        host_series(
            "proj-a",
            vm,
            cpu_fraction=_fraction(0.08, HISTORY, now),
            mem_used_pct=_fraction(12.0, HISTORY, now),
        )
    )
    config = Config.model_validate({"cost": {"lookback": LOOKBACK}})
    provider = fakes.provider(
        ["proj-a"],
        cost={"lookback": LOOKBACK},
        provider_kwargs={"instance_series": gcp_instance_series(config)},
    )
    result = audit_cycle(provider_config(config), [provider], CATALOG, now)

    finding = _by_name(result.findings)["a2-four"]
    rec = _recommended(finding)
    assert rec.instance_type == "a2-highgpu-1g"
    assert (rec.gpus_used, rec.peak_gpu_mem_mib) == (1, 30 * 1024.0)
    assert rec.not_measured == ()
    # CPU and memory were each one more query for the project, at 5 minutes, memory "used" only.
    filters = {q.filter: q.alignment_period_s for q in fakes.ms.first_pages()}
    cpu = 'metric.type = "compute.googleapis.com/instance/cpu/utilization"'
    assert [p for f, p in filters.items() if f.startswith(cpu)] == [300]
    memory = [f for f in filters if "memory/percent_used" in f]
    assert memory == [
        'metric.type = "agent.googleapis.com/memory/percent_used" AND '
        'resource.type = "gce_instance" AND metric.labels.state = "used"'
    ]


def provider_config(config: Config) -> Config:
    return config.model_copy(update={"aws": config.aws.model_copy(update={"enabled": False})})
