"""The fault-injecting proxy speaks each service's own trouble: the real clients, pointed at it,
parse every injected fault as they would parse the real one (error codes, retryability)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ResponseStreamingError,
)
from botocore.parsers import ResponseParserError
from urllib3.exceptions import ProtocolError

from guardian.config import Config
from guardian.errors import Throttled, Unavailable
from guardian.providers import Patience
from guardian.providers.aws.errors import map_aws_error
from guardian.providers.gcp.provider import GcpProvider
from guardian.simulated.aws import launch_gpu_instances
from tests.clock import NOW
from tests.conftest import MotoServer
from tests.fakes.fault_proxy import (
    Fault,
    FaultProxy,
    RandomFaults,
    ScheduledFaults,
    grpc_fault_interceptor,
    operation_of,
)
from tests.fakes.gcp_compute import FakeComputeServer, FakeVm
from tests.fakes.gcp_monitoring import FakeMonitoringServer, GpuTrace, ops_agent_series

ONE_TRY = BotoConfig(retries={"mode": "standard", "total_max_attempts": 1})
THREE_TRIES = BotoConfig(retries={"mode": "standard", "total_max_attempts": 3})


@pytest.fixture
def proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    with FaultProxy(moto_server.endpoint_url) as running:
        yield running


def _client(proxy: FaultProxy, service: str, config: BotoConfig = ONE_TRY) -> Any:
    import boto3

    return boto3.client(  # type: ignore[call-overload]
        service, region_name="us-east-1", endpoint_url=proxy.endpoint, config=config
    )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code"))


@pytest.mark.parametrize(
    ("service", "operation", "call", "code"),
    [
        ("ec2", "ec2:DescribeInstances", lambda c: c.describe_instances(), "RequestLimitExceeded"),
        ("cloudwatch", "monitoring:ListMetrics", lambda c: c.list_metrics(), "Throttling"),
        ("sts", "sts:GetCallerIdentity", lambda c: c.get_caller_identity(), "Throttling"),
    ],
)
def test_throttling_arrives_in_each_services_wire_format(
    proxy: FaultProxy, service: str, operation: str, call: Any, code: str
) -> None:
    proxy.plan = ScheduledFaults(always={operation: Fault("throttle")})
    client = _client(proxy, service)
    with pytest.raises(ClientError) as raised:
        call(client)
    assert _code(raised.value) == code
    assert isinstance(map_aws_error(raised.value, operation=operation), Throttled)
    assert proxy.injected[(operation, "throttle")] == 1


def test_botocore_retries_a_server_error_and_the_proxy_counts_both_calls(proxy: FaultProxy) -> None:
    proxy.plan = ScheduledFaults({"ec2:DescribeInstances": [Fault("http503")]})
    client = _client(proxy, "ec2", THREE_TRIES)
    client.describe_instances()
    assert proxy.calls["ec2:DescribeInstances"] == 2
    assert proxy.injected_total() == 1


def test_server_errors_dropped_and_truncated_answers_fail_the_call(proxy: FaultProxy) -> None:
    client = _client(proxy, "ec2")
    proxy.plan = ScheduledFaults(always={"ec2:DescribeInstances": Fault("http500")})
    with pytest.raises(ClientError) as raised:
        client.describe_instances()
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert isinstance(map_aws_error(raised.value, operation="ec2:DescribeInstances"), Unavailable)
    proxy.plan = ScheduledFaults(always={"ec2:DescribeInstances": Fault("drop")})
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        client.describe_instances()
    proxy.plan = ScheduledFaults(always={"ec2:DescribeInstances": Fault("truncate")})
    # A broken read, not an AWS answer: half an XML document.
    with pytest.raises((ResponseParserError, ResponseStreamingError, ProtocolError)):
        client.describe_instances()


def test_latency_delays_and_forward_then_drop_acts_but_never_answers(
    proxy: FaultProxy, moto_server: MotoServer
) -> None:
    (instance_id,) = launch_gpu_instances(moto_server.client("ec2"), "g5.xlarge")
    client = _client(proxy, "ec2")
    proxy.plan = ScheduledFaults(always={"ec2:DescribeInstances": Fault("latency", delay_s=0.3)})
    started = time.monotonic()
    client.describe_instances(InstanceIds=[instance_id])
    assert time.monotonic() - started >= 0.3
    proxy.plan = ScheduledFaults(always={"ec2:StopInstances": Fault("forward_then_drop")})
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        client.stop_instances(InstanceIds=[instance_id])
    state = moto_server.client("ec2").describe_instances(InstanceIds=[instance_id])
    assert state["Reservations"][0]["Instances"][0]["State"]["Name"] in {"stopping", "stopped"}


def test_random_faults_are_seeded_and_limited_to_the_named_operations() -> None:
    def draw(seed: int) -> list[Fault | None]:
        plan = RandomFaults(rate=0.5, seed=seed, operations=("ec2:",))
        return [plan.fault_for("ec2:DescribeInstances", n) for n in range(1, 50)]

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    assert 10 < sum(f is not None for f in draw(1)) < 40
    plan = RandomFaults(rate=1.0, operations=("ec2:",))
    assert plan.fault_for("monitoring:GetMetricData", 1) is None


def test_the_rewrite_hook_changes_forwarded_answers(proxy: FaultProxy) -> None:
    seen: list[str] = []

    def rewrite(operation: str, body: bytes, headers: Any) -> bytes:
        seen.append(operation)
        return body.replace(
            b"<regionName>us-east-1</regionName>", b"<regionName>mars-1</regionName>"
        )

    proxy.rewrite = rewrite
    regions = _client(proxy, "ec2").describe_regions()["Regions"]
    assert "mars-1" in {r["RegionName"] for r in regions}
    assert seen == ["ec2:DescribeRegions"]


def test_operations_are_named_for_every_protocol() -> None:
    scope = f"AK/{NOW:%Y%m%d}/us-east-1/{{}}/aws4_request"  # SigV4: key, day, region, service
    auth = {"authorization": f"AWS4-HMAC-SHA256 Credential={scope}"}
    ec2 = {"authorization": auth["authorization"].format("ec2")}
    assert operation_of("POST", "/", ec2, b"Action=StopInstances&Version=2016") == (
        "ec2:StopInstances"
    )
    cbor = {"authorization": auth["authorization"].format("monitoring")}
    path = "/service/GraniteServiceVersion20100801/operation/GetMetricData"
    assert operation_of("POST", path, cbor, b"") == "monitoring:GetMetricData"
    orgs = {
        "authorization": auth["authorization"].format("organizations"),
        "x-amz-target": "AWSOrganizationsV20161128.ListAccounts",
    }
    assert operation_of("POST", "/", orgs, b"{}") == "organizations:ListAccounts"
    assert operation_of("GET", "/compute/v1/projects/p/aggregated/instances?x=1", {}, b"") == (
        "compute:GET /compute/v1/projects/p/aggregated/instances"
    )


def test_gcp_rest_throttling_and_grpc_faults_reach_the_google_clients() -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    compute = FakeComputeServer().start()
    operation = "grpc:/google.monitoring.v3.MetricService/ListTimeSeries"
    monitoring = FakeMonitoringServer(
        interceptors=[
            grpc_fault_interceptor(ScheduledFaults(always={operation: Fault("throttle")}))
        ]
    ).start()
    proxy = FaultProxy(compute.endpoint).start()
    vm = FakeVm("nb", "us-central1-a", "g2-standard-8", created_at=now - timedelta(days=1))
    compute.state.add("proj-a", [vm])
    points = [(now - timedelta(minutes=m), 0.0) for m in range(3)]
    monitoring.state.series.extend(
        ops_agent_series("proj-a", compute.state.vm("proj-a", "nb"), [GpuTrace(points)])
    )
    config = Config.model_validate(
        {
            "aws": {"enabled": False},
            "gcp": {
                "enabled": True,
                "projects": ["proj-a"],
                "credentials": "anonymous",
                "compute_endpoint": proxy.endpoint,
                "monitoring_endpoint": monitoring.endpoint,
            },
        }
    )
    # One second a call and for its retries: a throttled call is given up within the test.
    provider = GcpProvider(config, patience=Patience(connect_s=0.5, read_s=0.5, attempts=1))
    try:
        found = provider.discover()
        assert [i.name for i in found.instances] == ["nb"]
        assert sum(proxy.calls.values()) >= 2  # Compute went through the proxy

        proxy.plan = ScheduledFaults(
            always={
                "compute:GET /compute/v1/projects/proj-a/aggregated/instances": Fault("throttle")
            }
        )
        throttled = provider.discover()
        assert throttled.instances == ()
        (error,) = throttled.errors
        assert "429" in error.message or "Too Many Requests" in error.message

        [(_, utilisation)] = list(
            provider.utilisation(found.instances, now - timedelta(hours=1), now)
        )
        assert utilisation.error is not None
        assert "ResourceExhausted" in utilisation.error or "RESOURCE_EXHAUSTED" in utilisation.error
    finally:
        provider.close()
        proxy.stop()
        monitoring.stop()
        compute.stop()
