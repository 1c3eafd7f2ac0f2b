"""The gRPC Cloud Monitoring ``MetricService`` fake (``guardian.simulated.gcp_monitoring_fake``)."""

from guardian.simulated.gcp import GpuTrace, ops_agent_series, sampled
from guardian.simulated.gcp_monitoring_fake import (
    FakeMonitoringServer,
    FakeMonitoringState,
    FakeTimeSeries,
    RecordedQuery,
    parse_filter,
)

__all__ = [
    "FakeMonitoringServer",
    "FakeMonitoringState",
    "FakeTimeSeries",
    "GpuTrace",
    "RecordedQuery",
    "ops_agent_series",
    "parse_filter",
    "sampled",
]
