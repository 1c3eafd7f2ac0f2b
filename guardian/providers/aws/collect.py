"""Reduce GetMetricData answers to per-instance histories as the batches complete.

The AWS provider submits every batch of every region to one thread pool; this turns the futures
back into ``(instance key, GpuUtilisation)`` pairs as soon as every batch holding an instance's
queries is in, and drops the raw points, so memory follows the batches in flight, not the fleet.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, as_completed

import structlog

from guardian.model import GpuInstance, GpuUtilisation, InstanceMetric
from guardian.providers.aws.errors import map_aws_error
from guardian.providers.aws.metrics import Dims, MetricNames, Points, Query, reduce_instance

__all__ = ["Fetched", "Listings", "instance_listings", "reduce_as_completed"]

log = structlog.get_logger(__name__)

Fetched = tuple[dict[str, Points], dict[str, str]]  # points and failures by query id


Listings = Mapping[tuple[tuple[str, str], str, str], "Future[dict[str, list[Dims]]]"]


def instance_listings(
    unit: tuple[str, str], listings: Listings, names: MetricNames
) -> dict[InstanceMetric, dict[str, list[Dims]]]:
    """The listed per-instance series of one unit; a failed listing only loses that series."""
    found: dict[InstanceMetric, dict[str, list[Dims]]] = {}
    for spec in names.instance_series:
        if not spec.listed:
            continue
        try:
            found[spec.key] = listings[(unit, spec.namespace, spec.metric)].result()
        except Exception as exc:
            log.warning(
                "aws_instance_series_listing_failed",
                region=unit[1],
                metric=spec.metric,
                error=str(exc),
            )
    return found


def reduce_as_completed(
    batch_of: dict[Future[Fetched], list[Query]],
    measured: Sequence[GpuInstance],
    names: MetricNames,
) -> Iterator[tuple[str, GpuUtilisation]]:
    """Reduce each instance to its samples as soon as every batch holding its queries is in,
    yield it and drop its raw points: memory stays bounded by the batches in flight (and what
    the caller keeps), not the fleet.

    Takes the futures over (``batch_of`` is emptied), so no answer outlives its reduction. A
    failed call fails each of its queries, with the call's error as the reason.
    """
    by_key = {instance.key: instance for instance in measured}
    queries: dict[str, list[Query]] = {}
    outstanding: Counter[str] = Counter()
    for batch in batch_of.values():
        for query in batch:
            queries.setdefault(query.instance_key, []).append(query)
        outstanding.update({query.instance_key for query in batch})
    points: dict[str, Points] = {}
    failed: dict[str, str] = {}
    for future in as_completed(list(batch_of)):
        batch = batch_of.pop(future)  # drop our reference: the answer is not kept twice
        try:
            batch_points, batch_failed = future.result()
        except Exception as exc:
            error = map_aws_error(exc, operation="cloudwatch:GetMetricData")
            failed.update({query.id: str(error) for query in batch})
        else:
            points.update(batch_points)
            failed.update(batch_failed)
        for key in {query.instance_key for query in batch}:
            outstanding[key] -= 1
            if outstanding[key]:
                continue
            mine = queries.pop(key)
            reduced = reduce_instance(by_key[key], mine, points, failed, names)
            for query in mine:
                points.pop(query.id, None)
                failed.pop(query.id, None)
            yield key, reduced
