"""An answer cut short is an error, not a shorter answer.

botocore reads with urllib3's length check off, and its CBOR parser (CloudWatch) reads a cut
answer as a complete, shorter one: without the check, a ListMetrics cut in half lists fewer
series and a GPU memory series that could not be read passes for one that does not exist.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from botocore.config import Config as BotoConfig

from guardian.config import Config
from guardian.providers.aws.discovery import GpuTypeCatalog
from guardian.providers.aws.provider import AwsProvider
from guardian.simulated.aws import SimInstance, constant, seed_fleet
from tests.conftest import MotoServer
from tests.fakes.fault_proxy import Fault, FaultProxy, ScheduledFaults

ONE_TRY = BotoConfig(retries={"mode": "standard", "total_max_attempts": 1})


@pytest.mark.parametrize("operation", ["monitoring:ListMetrics", "monitoring:GetMetricData"])
def test_a_cut_short_metrics_answer_is_a_failed_fetch(
    moto_server: MotoServer,
    aws_gpu_catalog: GpuTypeCatalog,
    monkeypatch: pytest.MonkeyPatch,
    operation: str,
) -> None:
    now = datetime.now(UTC)
    seed_fleet(
        moto_server.client("ec2"),
        moto_server.client("cloudwatch"),
        [SimInstance("g5g.xlarge", constant(0.0, 100.0, 30), count=3)],
        now,
    )
    with FaultProxy(moto_server.endpoint_url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        provider = AwsProvider(Config(), catalog=aws_gpu_catalog, client_config=ONE_TRY)
        try:
            found = provider.discover().instances
            assert len(found) == 3
            whole = dict(provider.utilisation(found, now - timedelta(hours=1), now))
            assert all(u.error is None and u.samples for u in whole.values())
            proxy.plan = ScheduledFaults(always={operation: Fault("truncate")})
            cut = dict(provider.utilisation(found, now - timedelta(hours=1), now))
        finally:
            provider.close()
    assert proxy.injected_total() >= 1
    for utilisation in cut.values():
        assert utilisation.fetch_failed
        assert utilisation.error is not None
        assert "total bytes expected" in utilisation.error
