"""The agent's sinks against real local servers: a Prometheus scrape over HTTP, CloudWatch on the
moto server (read back by the daemon's own AwsProvider), and a local gRPC MetricService."""

from __future__ import annotations

import threading
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from guardian.agent.gpu import GpuReading
from guardian.agent.gpu.fake import FakeNvml, ManualClock, Scenario, load_scenario
from guardian.agent.gpu.nvml import Nvml
from guardian.agent.loop import Agent, local_instance
from guardian.agent.poll import PollResult
from guardian.agent.publish import (
    CW_MAX_DATUMS,
    GCP_MEM_METRIC,
    GCP_UTIL_METRIC,
    CloudWatchSink,
    GcpMonitoringSink,
    PrometheusSink,
    cloudwatch_batches,
    cloudwatch_datums,
)
from guardian.config import Config, parse_config
from guardian.model import GpuInstance
from guardian.providers.aws.provider import AwsProvider
from guardian.simulated.gcp_grpc import FakeGrpcServer, unary
from tests.clock import NOW
from tests.fakes.local_disks import FakeBlockTree, Usage

INSTANCE_ID = "i-0123456789abcdef0"
LOCAL_DISK_METRIC = "custom.googleapis.com/guardian/local_disk/used_bytes"


def poll_results(
    scenario: str | dict[str, Any],
    polls: int,
    clock: ManualClock,
    config: Config,
    disks: FakeBlockTree | None = None,
) -> tuple[Agent, list[PollResult]]:
    loaded = load_scenario(scenario) if isinstance(scenario, str) else Scenario.from_dict(scenario)
    nvml = Nvml.open(FakeNvml(loaded, clock=clock.monotonic))
    instance = local_instance(nvml.expected_gpus, None, clock.now() - timedelta(hours=1), "h")
    probe = disks.probe() if disks is not None else None
    agent = Agent(config, nvml, instance, clock=clock, local_disks=probe)
    results = []
    for _ in range(polls):
        results.append(agent.poll())
        clock.advance(config.agent.interval.total_seconds())
    return agent, results


# -- Prometheus --------------------------------------------------------------------------------


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_prometheus_serves_per_gpu_gauges_and_the_verdict() -> None:
    sink = PrometheusSink("127.0.0.1:0")
    try:
        assert sink.port
        clock = ManualClock()
        _, results = poll_results("training-then-idle", 1, clock, parse_config({}))
        sink.publish(results[0])
        text = scrape(sink.port)
        uuid = results[0].snapshot.gpus[1].uuid
        labels = f'gpu="1",model="NVIDIA A100-SXM4-40GB",uuid="{uuid}"'
        assert f"guardian_agent_gpu_utilization_percent{{{labels}}} 90.0" in text
        assert f"guardian_agent_gpu_memory_used_mib{{{labels}}} 28672.0" in text
        assert f"guardian_agent_gpu_processes{{{labels}}} 1.0" in text
        assert 'guardian_agent_verdict{verdict="busy"} 1.0' in text
        assert 'guardian_agent_verdict{verdict="idle"} 0.0' in text
        assert "guardian_agent_polls_total 1.0" in text
        # Its own registry: none of the process-wide default collectors leak in.
        assert "process_cpu_seconds_total" not in text
        assert "python_info" not in text
    finally:
        sink.close()


def test_prometheus_drops_unknown_values_instead_of_reporting_zero() -> None:
    sink = PrometheusSink("127.0.0.1:0")
    try:
        assert sink.port
        clock = ManualClock()
        _, results = poll_results("lost-gpu", 32, clock, parse_config({}))
        sink.publish(results[0])
        assert 'gpu="1"' in scrape(sink.port)
        sink.publish(results[-1])  # GPU 1 is lost by now
        text = scrape(sink.port)
        util_lines = [
            line
            for line in text.splitlines()
            if line.startswith("guardian_agent_gpu_utilization_percent{")
        ]
        assert len(util_lines) == 1
        assert 'gpu="0"' in util_lines[0]
        assert 'guardian_agent_verdict{verdict="unmeasured"} 1.0' in text
        assert 'guardian_agent_gpu_problems_total{severity="fault"} 1.0' in text
        # No stop is pending and idle minutes are unknown: no sample, not a 0 (issue 12).
        samples = [line for line in text.splitlines() if not line.startswith("#")]
        for name in ("guardian_agent_stop_deadline_timestamp_seconds", "guardian_agent_idle_"):
            assert not [line for line in samples if line.startswith(name)], name
        assert "# TYPE guardian_agent_stop_deadline_timestamp_seconds gauge" in text
    finally:
        sink.close()


# -- CloudWatch --------------------------------------------------------------------------------


def _gpu(index: int, name: str | None = "NVIDIA A10G", util: float | None = 50.0) -> GpuReading:
    return GpuReading(index, f"GPU-{index}", name, util, 10.0, 1000.0, 23028.0, ())


def test_datums_follow_the_cloudwatch_agent_schema_and_skip_unknowns() -> None:
    at = NOW
    datums = cloudwatch_datums(
        [_gpu(0), _gpu(1, util=None), _gpu(2, name=None)], at, INSTANCE_ID, Config()
    )
    by_metric: dict[str, list[dict[str, Any]]] = {}
    for datum in datums:
        by_metric.setdefault(datum["MetricName"], []).append(datum)
    assert sorted(by_metric) == [
        "nvidia_smi_memory_total",
        "nvidia_smi_memory_used",
        "nvidia_smi_utilization_gpu",
        "nvidia_smi_utilization_memory",
    ]
    [util] = by_metric["nvidia_smi_utilization_gpu"]  # GPU 1's is unknown: not sent as 0
    assert util["Dimensions"] == [
        {"Name": "InstanceId", "Value": INSTANCE_ID},
        {"Name": "index", "Value": "0"},
        {"Name": "name", "Value": "NVIDIA A10G"},
    ]
    assert (util["Value"], util["Unit"], util["Timestamp"]) == (50.0, "Percent", at)
    assert by_metric["nvidia_smi_memory_used"][0]["Unit"] == "Megabytes"
    assert all(d["Dimensions"][1]["Value"] != "2" for d in datums)  # no name, no series


def test_batches_respect_the_datum_count_and_the_megabyte() -> None:
    at = NOW
    many = cloudwatch_datums([_gpu(i) for i in range(8)], at, INSTANCE_ID, Config()) * 80
    batches = cloudwatch_batches(many)
    assert [len(b) for b in batches] == [1000, 1000, 560]
    huge_name = "N" * 1000  # long dimension values: bytes, not count, must split these
    heavy = cloudwatch_datums([_gpu(i, name=huge_name) for i in range(8)], at, "i-1", Config())
    heavy = heavy * 60  # 1920 datums: two calls by count, but ~1.3 kB each
    byte_batches = cloudwatch_batches(heavy)
    assert len(byte_batches) > 2
    assert all(len(b) < CW_MAX_DATUMS for b in byte_batches)
    assert sum(len(b) for b in byte_batches) == len(heavy)
    # What botocore actually sends stays under the 1 MB limit.
    import botocore.session

    model = botocore.session.get_session().get_service_model("cloudwatch")
    from botocore.serialize import QuerySerializer

    operation = model.operation_model("PutMetricData")
    for batch in byte_batches:
        body = QuerySerializer().serialize_to_request(
            {"Namespace": "CWAgent", "MetricData": batch}, operation
        )["body"]
        encoded = body if isinstance(body, bytes) else urllib.parse.urlencode(body).encode()
        assert len(encoded) < 1_000_000


def _count_put_calls(client: Any) -> list[int]:
    sizes: list[int] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        sizes.append(len(params["MetricData"]))

    client.meta.events.register("provide-client-params.cloudwatch.PutMetricData", record)
    return sizes


def test_cloudwatch_publishing_is_read_back_by_the_daemon(
    moto_server: Any, aws_gpu_catalog: Any
) -> None:
    config = parse_config({"agent": {"interval": "10s"}, "aws": {"regions": ["us-east-1"]}})
    client = moto_server.client("cloudwatch")
    sizes = _count_put_calls(client)
    sink = CloudWatchSink(config, INSTANCE_ID, "us-east-1", client=client)
    # Recent timestamps: the daemon lists series active in the last 3 hours.
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20))
    scenario = {
        "gpus": 8,
        "model": "NVIDIA H100 80GB HBM3",
        "phases": [{"for": "10m", "util_pct": 97}, {"util_pct": 0, "mem_used_mib": 0}],
    }
    _, results = poll_results(scenario, 120, clock, config)  # 20 minutes at 10 s
    for result in results:
        sink.publish(result)
    sink.close()
    # 8 GPUs x 4 metrics x 6 polls per 60 s flush = 192 datums a call, 20 calls, not 120.
    assert sum(sizes) == 120 * 8 * 4
    assert len(sizes) == 20
    assert max(sizes) <= CW_MAX_DATUMS
    listed = client.list_metrics(Namespace="CWAgent", MetricName="nvidia_smi_utilization_gpu")
    dims = {tuple(sorted(d["Name"] for d in m["Dimensions"])) for m in listed["Metrics"]}
    assert dims == {("InstanceId", "index", "name")}
    # The daemon's reader, unchanged, sees 8 GPUs: busy for 10 minutes, then idle.
    provider = AwsProvider(config, catalog=aws_gpu_catalog)
    instance = GpuInstance(
        provider="aws",
        account="123456789012",
        region="us-east-1",
        zone="us-east-1a",
        instance_id=INSTANCE_ID,
        instance_type="p5.48xlarge",
        launch_time=clock.now() - timedelta(hours=2),
        gpu_count=8,
    )
    utilisation = dict(
        provider.utilisation([instance], clock.now() - timedelta(minutes=30), clock.now())
    )
    provider.close()
    got = utilisation[instance.key]
    assert got.error is None
    assert got.gpus_reporting == 8
    assert got.samples[0].gpu_util_pct == 97.0
    assert got.samples[-1].gpu_util_pct == 0.0
    assert all(s.complete for s in got.samples)


def test_cloudwatch_outage_keeps_the_data_for_the_next_flush(moto_server: Any) -> None:
    config = parse_config({})
    calls = {"n": 0}

    class Flaky:
        def put_metric_data(self, **kwargs: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise ConnectionError("endpoint unreachable")
            moto_server.client("cloudwatch").put_metric_data(**kwargs)

    sink = CloudWatchSink(config, INSTANCE_ID, "us-east-1", client=Flaky())
    clock = ManualClock(datetime.now(UTC) - timedelta(minutes=5))
    _, results = poll_results("idle", 13, clock, config)  # flushes at 60 s and 120 s
    for result in results:
        sink.publish(result)
    assert calls["n"] == 2
    cloudwatch = moto_server.client("cloudwatch")
    data = cloudwatch.get_metric_statistics(
        Namespace="CWAgent",
        MetricName="nvidia_smi_utilization_gpu",
        Dimensions=[
            {"Name": "InstanceId", "Value": INSTANCE_ID},
            {"Name": "index", "Value": "0"},
            {"Name": "name", "Value": "NVIDIA T4"},
        ],
        StartTime=clock.now() - timedelta(minutes=10),
        EndTime=clock.now() + timedelta(minutes=1),
        Period=60,
        Statistics=["SampleCount"],
    )
    # The first flush (7 polls) failed; the second sent them with its own 6: nothing lost.
    assert sum(p["SampleCount"] for p in data["Datapoints"]) == 13


# -- Cloud Monitoring --------------------------------------------------------------------------


class FakeMetricWriter:
    """MetricService.CreateTimeSeries on a local insecure gRPC port, recording each request."""

    def __init__(self) -> None:
        from google.cloud import monitoring_v3
        from google.protobuf import empty_pb2

        self.requests: list[Any] = []
        self._lock = threading.Lock()

        def create(request: Any, _context: Any) -> Any:
            with self._lock:
                self.requests.append(request)
            return empty_pb2.Empty()

        class _Empty:
            serialize = staticmethod(lambda message: message.SerializeToString())

        self.server = FakeGrpcServer(
            "google.monitoring.v3.MetricService",
            {"CreateTimeSeries": unary(create, monitoring_v3.CreateTimeSeriesRequest, _Empty)},
        )


def test_cloud_monitoring_gets_custom_metrics_the_gcp_provider_reads() -> None:
    writer = FakeMetricWriter()
    with writer.server:
        config = parse_config(
            {
                "gcp": {
                    "credentials": "anonymous",
                    "monitoring_endpoint": writer.server.endpoint,
                },
            }
        )
        sink = GcpMonitoringSink(config, "my-project", "1234567890", "us-central1-a")
        clock = ManualClock()
        scenario = {
            "gpus": 2,
            "model": "NVIDIA L4",
            "phases": [
                {"for": "30s", "util_pct": 0, "mem_used_mib": 100},
                {"for": "10s", "util_pct": 70, "mem_used_mib": 5000},
                {"util_pct": 0, "mem_used_mib": 100},
            ],
        }
        _, results = poll_results(scenario, 7, clock, config)  # 0..60 s: one flush at 60 s
        for result in results:
            sink.publish(result)
        sink.close()
    assert len(writer.requests) == 1
    request = writer.requests[0]
    assert request.name == "projects/my-project"
    series = {(s.metric.type, s.metric.labels["gpu_number"]): s for s in request.time_series}
    assert sorted(series) == [
        (GCP_MEM_METRIC, "0"),
        (GCP_MEM_METRIC, "1"),
        (GCP_UTIL_METRIC, "0"),
        (GCP_UTIL_METRIC, "1"),
    ]
    util = series[(GCP_UTIL_METRIC, "0")]
    assert util.resource.type == "gce_instance"
    assert dict(util.resource.labels) == {
        "project_id": "my-project",
        "instance_id": "1234567890",
        "zone": "us-central1-a",
    }
    assert dict(util.metric.labels) == {
        "gpu_number": "0",
        "uuid": results[0].snapshot.gpus[0].uuid,
        "model": "NVIDIA L4",
    }
    [point] = util.points
    assert point.value.double_value == 70.0  # the burst inside the minute, not its average
    mem = series[(GCP_MEM_METRIC, "0")]
    assert mem.metric.labels["memory_state"] == "used"  # the label the GCP provider filters on
    assert mem.points[0].value.double_value == 5000 * 1024 * 1024  # bytes, as the Ops Agent


def test_cloud_monitoring_gets_the_local_ssd_reading(tmp_path: Path) -> None:
    disks = FakeBlockTree(tmp_path / "vm")
    disks.gcp_local_ssd("nvme0n2", 0)
    disks.mount("/dev/nvme0n2", "/mnt/disks/ssd", "ext4", Usage(375 * 1024, 3 * 1024, 10**6, 40))
    writer = FakeMetricWriter()
    with writer.server:
        config = parse_config(
            {"gcp": {"credentials": "anonymous", "monitoring_endpoint": writer.server.endpoint}}
        )
        sink = GcpMonitoringSink(config, "my-project", "1234567890", "us-central1-a")
        _, results = poll_results("idle", 7, ManualClock(), config, disks)
        for result in results:
            sink.publish(result)
        sink.close()
    [request] = writer.requests
    [local] = [s for s in request.time_series if s.metric.type == LOCAL_DISK_METRIC]
    assert dict(local.metric.labels) == {}  # one series per VM: the gce_instance resource
    assert local.points[0].value.double_value == 3 * 1024**3  # bytes beyond empty filesystems


def test_publish_failures_never_reach_the_poll_loop() -> None:
    config = parse_config(
        {"gcp": {"credentials": "anonymous", "monitoring_endpoint": "http://127.0.0.1:9"}}
    )
    sink = GcpMonitoringSink(config, "p", "1", "z")
    clock = ManualClock()
    _, results = poll_results("idle", 7, clock, config)
    for result in results:
        sink.publish(result)  # the flush at 60 s fails against a closed port
    sink.close()
    assert sink.calls >= 1


@pytest.mark.parametrize("listen", ["nonsense", "127.0.0.1:http"])
def test_bad_listen_address_is_a_config_error(listen: str) -> None:
    from guardian.errors import ConfigError

    with pytest.raises(ConfigError, match=r"agent\.listen"):
        PrometheusSink(listen)
