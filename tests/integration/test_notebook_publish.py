"""The notebook signal on the wire: the agent's sinks send it beside the GPU metrics, only while
it is present, and the daemon's providers — built from config as ``guardian run`` builds them —
read it back in the same batched calls."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from guardian.agent.notebook import NotebookReport
from guardian.agent.poll import PollResult
from guardian.agent.publish import CloudWatchSink, GcpMonitoringSink
from guardian.config import parse_config
from guardian.model import GpuInstance, InstanceMetric
from guardian.providers.factory import aws_instance_series, gcp_instance_series
from guardian.providers.gcp.metrics import NOTEBOOK_IDLE_METRIC_TYPE
from tests.conftest import AwsWire, MotoServer
from tests.integration.test_agent_publish import FakeMetricWriter, poll_results

INSTANCE_ID = "i-0feedfacecafe0001"


def with_signal(result: PollResult, idle_s: float | None) -> PollResult:
    """The poll as the agent would have it with its notebook watch reporting ``idle_s``."""
    why = "signal" if idle_s is not None else "a browser is connected"
    return dataclasses.replace(result, notebook=NotebookReport((), (), idle_s, why))


def test_cloudwatch_carries_the_signal_and_the_daemon_reads_it_in_the_gpu_call(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: Any
) -> None:
    from guardian.agent.gpu.fake import ManualClock
    from guardian.providers.aws.provider import AwsProvider

    config = parse_config({"aws": {"regions": ["us-east-1"], "metrics": {"namespace": "Lab"}}})
    client = moto_server.client("cloudwatch")
    sink = CloudWatchSink(config, INSTANCE_ID, "us-east-1", client=client)
    clock = ManualClock(datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=9))
    _, results = poll_results("paused-job", 54, clock, config)  # 9 minutes at 10 s
    # The browser closed at minute 5: the signal from then on, counting from minute 0.
    for n, result in enumerate(results):
        sink.publish(with_signal(result, n * 10.0 if n >= 30 else None))
    sink.close()

    listed = client.list_metrics(Namespace="Lab", MetricName="guardian_notebook_idle")["Metrics"]
    assert [m["Dimensions"] for m in listed] == [[{"Name": "InstanceId", "Value": INSTANCE_ID}]]
    provider = AwsProvider(
        config,
        session=aws_wire.session,
        catalog=aws_gpu_catalog,
        instance_series=aws_instance_series(config),
    )
    instance = GpuInstance(
        provider="aws",
        account="123456789012",
        region="us-east-1",
        zone="us-east-1a",
        instance_id=INSTANCE_ID,
        instance_type="g5.xlarge",
        launch_time=clock.now() - timedelta(hours=2),
        gpu_count=1,
    )
    got = dict(provider.utilisation([instance], clock.now() - timedelta(minutes=30), clock.now()))
    provider.close()
    utilisation = got[instance.key]
    points = utilisation.instance_series[InstanceMetric.NOTEBOOK_IDLE_S]
    # Minutes 5 to 8 have it (the Minimum of each minute's polls); minutes 0 to 4 do not.
    assert [value for _, value in points] == [300.0, 360.0, 420.0, 480.0]
    assert points[-1][0] == utilisation.samples[-1].at  # beside the newest GPU sample
    (call,) = aws_wire.sent("cloudwatch:GetMetricData")  # one call for GPUs and the signal
    notebook_queries = [
        q["MetricStat"]
        for q in call.params["MetricDataQueries"]
        if q["MetricStat"]["Metric"]["MetricName"] == "guardian_notebook_idle"
    ]
    assert [(q["Metric"]["Namespace"], q["Stat"]) for q in notebook_queries] == [("Lab", "Minimum")]


def test_cloud_monitoring_gets_a_point_only_for_a_period_the_signal_held_throughout() -> None:
    from guardian.agent.gpu.fake import ManualClock

    writer = FakeMetricWriter()
    with writer.server:
        config = parse_config(
            {"gcp": {"credentials": "anonymous", "monitoring_endpoint": writer.server.endpoint}}
        )
        sink = GcpMonitoringSink(config, "lab", "1234567890", "us-central1-a")
        _, results = poll_results("paused-job", 19, ManualClock(), config)  # flushes at 60, 120 s
        for n, result in enumerate(results):
            # The first minute has a gap (a browser came and went); the second holds throughout.
            signal = None if n == 3 else 1000.0 + n * 10
            sink.publish(with_signal(result, signal))
        sink.close()
    written = [
        (s.metric.type, dict(s.resource.labels)["instance_id"], s.points[0].value.double_value)
        for request in writer.requests
        for s in request.time_series
        if s.metric.type == NOTEBOOK_IDLE_METRIC_TYPE
    ]
    # None for the first period; then the smallest of each period's polls (7..12, then 13..18
    # at close), so a reset within a period is never averaged away.
    assert written == [
        (NOTEBOOK_IDLE_METRIC_TYPE, "1234567890", 1070.0),
        (NOTEBOOK_IDLE_METRIC_TYPE, "1234567890", 1130.0),
    ]
    # ... the very metric type the daemon's GCP provider is built to read.
    assert NOTEBOOK_IDLE_METRIC_TYPE in [s.metric_type for s in gcp_instance_series(config)]


def test_no_report_means_no_datum() -> None:
    sent: list[Any] = []

    class Client:
        def put_metric_data(self, **kwargs: Any) -> None:
            sent.extend(kwargs["MetricData"])

    from guardian.agent.gpu.fake import ManualClock

    config = parse_config({})
    sink = CloudWatchSink(config, INSTANCE_ID, "us-east-1", client=Client())
    _, results = poll_results("paused-job", 7, ManualClock(), config)
    for result in results:
        sink.publish(result)  # no notebook watch at all
        sink.publish(with_signal(result, None))  # watched, signal absent
    sink.close()
    assert sent
    assert {d["MetricName"] for d in sent} == {
        "nvidia_smi_utilization_gpu",
        "nvidia_smi_utilization_memory",
        "nvidia_smi_memory_used",
        "nvidia_smi_memory_total",
    }
