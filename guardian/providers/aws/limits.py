"""The AWS API limits the provider batches to, in one value tests can shrink.

moto enforces none of these, so the tests assert what is sent against a small ``AwsLimits``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AwsLimits"]


@dataclass(frozen=True)
class AwsLimits:
    # EC2: values in one filter (DescribeInstances, DescribeSpotInstanceRequests).
    filter_values: int = 200
    # EC2 DescribeInstances MaxResults (5..1000).
    page_size: int = 1000
    # EC2 DescribeInstanceTypes: names per call and MaxResults (both at most 100).
    instance_types_per_call: int = 100
    # CloudWatch GetMetricData: queries per call, and datapoints per response page.
    metric_queries: int = 500
    datapoints_per_call: int = 100_800
    # Worker threads across regions and metric batches.
    workers: int = 16

    def __post_init__(self) -> None:
        for name in (
            "filter_values",
            "page_size",
            "instance_types_per_call",
            "metric_queries",
            "datapoints_per_call",
            "workers",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"AwsLimits.{name} must be at least 1")
