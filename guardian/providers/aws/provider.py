"""The AWS provider: GPU instances from EC2, their GPU utilisation from CloudWatch, stop.

Every (account, region) is a unit discovered on its own worker thread; a unit that fails becomes
a ``UnitError`` and the others carry on. No call is ever made per instance: instances are listed
per region, spot requests and metrics are fetched in batches at the APIs' limits
(``AwsLimits``). The endpoint is overridden only the standard boto3 way (``AWS_ENDPOINT_URL``),
which is how the tests and ``guardian demo`` point it at moto.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from datetime import datetime
from typing import TYPE_CHECKING

import boto3
import structlog
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from guardian.config import Config
from guardian.errors import AuthError, GuardianError, Unavailable
from guardian.model import GpuInstance, GpuUtilisation, InstanceMetric
from guardian.providers import Discovery, StopResult, UnitError
from guardian.providers.aws.clients import (
    AccountAccess,
    AwsClients,
    CallCounter,
    account_from_role_arn,
)
from guardian.providers.aws.discovery import GpuTypeCatalog, discover_region
from guardian.providers.aws.errors import map_aws_error
from guardian.providers.aws.limits import AwsLimits
from guardian.providers.aws.metrics import (
    Dims,
    InstanceSeriesSpec,
    MetricNames,
    Points,
    Query,
    aligned_window,
    fetch_batch,
    list_instance_series,
    no_series_error,
    plan_batches,
    queries_per_call,
    reduce_instance,
)

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_ec2 import EC2Client

__all__ = ["AwsLimits", "AwsProvider", "GpuTypeCatalog", "probe_credentials"]

log = structlog.get_logger(__name__)

REGIONS_TTL_S = 24 * 3600.0
_OPTED_IN = ["opt-in-not-required", "opted-in"]


def _home_region(config: Config) -> str:
    regions = config.aws.regions
    return regions[0] if isinstance(regions, list) and regions else "us-east-1"


def _operation(exc: BaseException, service: str, default: str) -> str:
    """The IAM-style action that failed: from the ClientError, else the phase's main call."""
    if isinstance(exc, ClientError) and exc.operation_name:
        return f"{service}:{exc.operation_name}"
    return default


Fetched = tuple[dict[str, Points], dict[str, str]]  # points and failures by query id


Listings = Mapping[tuple[tuple[str, str], str, str], "Future[dict[str, list[Dims]]]"]


def _instance_listings(
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


def _reduce_as_completed(
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


class AwsProvider:
    """``guardian.providers.Provider`` for EC2 and CloudWatch, across accounts and regions.

    ``session`` (tests, benchmarks) replaces the default boto3 session; its clients are made to
    parse epoch timestamps straight to UTC (the same instants, several times faster).
    ``catalog`` shares learned GPU types between providers; ``limits`` and ``client_config``
    shrink the API limits and retries for tests. ``instance_series`` adds per-instance series
    to read beside the GPUs' (each in the same GetMetricData calls).
    """

    name = "aws"

    def __init__(
        self,
        config: Config,
        *,
        session: boto3.Session | None = None,
        catalog: GpuTypeCatalog | None = None,
        limits: AwsLimits | None = None,
        client_config: BotoConfig | None = None,
        instance_series: Sequence[InstanceSeriesSpec] = (),
    ) -> None:
        self._config = config
        self._limits = limits or AwsLimits()
        self._catalog = catalog or GpuTypeCatalog(limits=self._limits)
        self._clients = AwsClients(
            session, home_region=_home_region(config), client_config=client_config
        )
        metrics = config.aws.metrics
        self._names = MetricNames(
            metrics.namespace,
            metrics.gpu_util,
            metrics.gpu_mem_used,
            metrics.period,
            tuple(instance_series),
        )
        self._regions: dict[str, tuple[float, list[str]]] = {}  # account → enabled regions

    @property
    def api_calls(self) -> dict[str, int]:
        """Every API call this provider has made, per ``service:Operation``."""
        return self._clients.counter.snapshot()

    # -- discovery ------------------------------------------------------------------------------

    def discover(self) -> Discovery:
        before = self._clients.counter.snapshot()
        started = time.monotonic()
        errors: list[UnitError] = []
        units: list[tuple[AccountAccess, str]] = []
        for access in self._accounts(errors):
            try:
                regions = self._enabled_regions(access)
            except Exception as exc:
                errors.append(self._unit_error(exc, access.account_id, "*", "ec2:DescribeRegions"))
                continue
            units.extend((access, region) for region in regions)
        # Clients are made here, on one thread, before the workers share them.
        clients = [(a, r, self._clients.client(a, "ec2", r)) for a, r in units]
        instances: list[GpuInstance] = []
        with self._pool(len(units)) as pool:
            futures = [
                (access, region, pool.submit(self._discover_unit, access, region, ec2))
                for access, region, ec2 in clients
            ]
            for access, region, future in futures:
                try:
                    instances.extend(future.result())
                except Exception as exc:
                    errors.append(
                        self._unit_error(exc, access.account_id, region, "ec2:DescribeInstances")
                    )
        instances.sort(key=lambda i: (i.account, i.region, i.instance_id))
        calls = CallCounter.since(before, self._clients.counter.snapshot())
        log.debug(
            "aws_discovered",
            instances=len(instances),
            units=len(units),
            failed_units=len(errors),
            api_calls=sum(calls.values()),
            seconds=round(time.monotonic() - started, 3),
        )
        return Discovery(tuple(instances), tuple(errors), calls)

    def _discover_unit(
        self, access: AccountAccess, region: str, ec2: EC2Client
    ) -> list[GpuInstance]:
        gpu_types = self._catalog.gpu_types(ec2, region)
        return discover_region(
            ec2,
            account=access.account_id,
            region=region,
            gpu_types=gpu_types,
            owner_tags=self._config.owner_tags,
            limits=self._limits,
        )

    def _accounts(self, errors: list[UnitError]) -> list[AccountAccess]:
        """The accounts to audit: assumed roles, or the default credentials' own account."""
        if not self._config.aws.accounts:
            try:
                return [self._clients.default_account()]
            except Exception as exc:
                errors.append(self._unit_error(exc, "default", "*", "sts:GetCallerIdentity"))
                return []
        accesses = []
        for account in self._config.aws.accounts:
            try:
                accesses.append(self._clients.role_account(account))
            except Exception as exc:
                account_id = account_from_role_arn(account.role_arn)
                errors.append(self._unit_error(exc, account_id, "*", "sts:AssumeRole"))
        return accesses

    def _enabled_regions(self, access: AccountAccess) -> list[str]:
        regions = self._config.aws.regions
        if isinstance(regions, list):
            return list(dict.fromkeys(regions))
        cached = self._regions.get(access.account_id)
        if cached is None or time.monotonic() - cached[0] > REGIONS_TTL_S:
            ec2 = self._clients.client(access, "ec2", self._clients.home_region)
            response = ec2.describe_regions(
                Filters=[{"Name": "opt-in-status", "Values": _OPTED_IN}]
            )
            names = sorted(r["RegionName"] for r in response["Regions"] if "RegionName" in r)
            cached = (time.monotonic(), names)
            self._regions[access.account_id] = cached
        return cached[1]

    # -- utilisation ----------------------------------------------------------------------------

    def utilisation(
        self, instances: Sequence[GpuInstance], start: datetime, end: datetime
    ) -> Iterator[tuple[str, GpuUtilisation]]:
        names = self._names
        start, end = aligned_window(start, end, names.period_s)
        max_queries = queries_per_call(start, end, names.period_s, self._limits)
        groups: dict[tuple[str, str], list[GpuInstance]] = {}
        for instance in instances:
            groups.setdefault((instance.account, instance.region), []).append(instance)
        readers, unreachable = self._readers(groups)
        yield from unreachable
        fetches: dict[Future[Fetched], list[Query]] = {}
        measured: list[GpuInstance] = []
        with self._pool(2 * len(readers)) as pool:
            # Phase 1, all regions at once: which series each instance has, per metric.
            listed = [(names.namespace, names.gpu_util), (names.namespace, names.gpu_mem_used)]
            listed += [(s.namespace, s.metric) for s in names.instance_series if s.listed]
            listings = {
                (unit, namespace, metric): pool.submit(
                    list_instance_series,
                    cloudwatch,
                    namespace,
                    metric,
                    [i.instance_id for i in groups[unit]],
                )
                for unit, cloudwatch in readers.items()
                for namespace, metric in dict.fromkeys(listed)
            }
            # Phase 2: every batch of every region on the same pool.
            for unit_number, (unit, cloudwatch) in enumerate(readers.items()):
                members = groups[unit]
                try:
                    util = listings[(unit, names.namespace, names.gpu_util)].result()
                except Exception as exc:
                    yield from self._fail(members, exc, "cloudwatch:ListMetrics")
                    continue
                try:
                    mem = listings[(unit, names.namespace, names.gpu_mem_used)].result()
                except Exception as exc:
                    # Memory that is not published is unknown (no early "released"); memory
                    # that could not be read this cycle is a failed fetch. Read as absent, it
                    # would turn a warned job-ended instance "busy" and withdraw its warning.
                    yield from self._fail(members, exc, "cloudwatch:ListMetrics")
                    continue
                batches = plan_batches(
                    members,
                    util,
                    mem,
                    names,
                    max_queries,
                    id_prefix=f"u{unit_number}q",
                    instance_listings=_instance_listings(unit, listings, names),
                )
                for batch in batches:
                    future = pool.submit(fetch_batch, cloudwatch, batch, names, start, end)
                    fetches[future] = batch
                for instance in members:
                    if instance.instance_id in util:
                        measured.append(instance)
                    else:
                        yield (
                            instance.key,
                            GpuUtilisation(
                                period_s=names.period_s, error=no_series_error(instance, names)
                            ),
                        )
            # The pool stays open while the caller decides on each instance: fetching goes on.
            yield from _reduce_as_completed(fetches, measured, names)

    def _readers(
        self, groups: Mapping[tuple[str, str], list[GpuInstance]]
    ) -> tuple[dict[tuple[str, str], CloudWatchClient], list[tuple[str, GpuUtilisation]]]:
        """A CloudWatch client per (account, region), made on this thread before the workers
        share them; the instances of a unit whose account cannot be reached fail here."""
        readers: dict[tuple[str, str], CloudWatchClient] = {}
        failed: list[tuple[str, GpuUtilisation]] = []
        for (account, region), members in groups.items():
            try:
                access = self._access(account)
                readers[(account, region)] = self._clients.client(access, "cloudwatch", region)
            except Exception as exc:
                failed.extend(self._fail(members, exc, "cloudwatch:ListMetrics"))
        return readers, failed

    def _fail(
        self, members: Sequence[GpuInstance], exc: BaseException, operation: str
    ) -> list[tuple[str, GpuUtilisation]]:
        error = map_aws_error(exc, operation=_operation(exc, "cloudwatch", operation))
        log.warning(
            "aws_metrics_failed",
            account=members[0].account,
            region=members[0].region,
            instances=len(members),
            error=str(error),
        )
        failure = GpuUtilisation(period_s=self._names.period_s, error=str(error), fetch_failed=True)
        return [(instance.key, failure) for instance in members]

    # -- stop -----------------------------------------------------------------------------------

    def stop(self, instance: GpuInstance, *, hibernate: bool = False) -> StopResult:
        """StopInstances, with Hibernate only when asked and configured on the instance."""
        hibernating = hibernate and instance.hibernation_configured
        action = "hibernate" if hibernating else "stop"
        if instance.provider != self.name:
            return StopResult(instance.key, False, action, "not an AWS instance")
        if instance.spot_one_time:
            return StopResult(
                instance.key,
                False,
                action,
                "a one-time spot instance cannot be stopped, only terminated, "
                "and guardian never terminates",
            )
        try:
            ec2 = self._clients.client(self._access(instance.account), "ec2", instance.region)
            response = ec2.stop_instances(InstanceIds=[instance.instance_id], Hibernate=hibernating)
        except Exception as exc:
            error = map_aws_error(exc, operation="ec2:StopInstances")
            # Throttled or denied: nothing happened. Unavailable: the answer was lost, not
            # necessarily the stop.
            lost = isinstance(error, Unavailable)
            return StopResult(instance.key, False, action, str(error), unconfirmed=lost)
        states = {
            change.get("InstanceId"): change.get("CurrentState", {}).get("Name", "?")
            for change in response.get("StoppingInstances", [])
        }
        state = states.get(instance.instance_id)
        if state not in ("stopping", "stopped"):
            return StopResult(
                instance.key, False, action, f"StopInstances left it {state or 'unchanged'}"
            )
        message = f"instance is {state}"
        if hibernate and not hibernating:
            message += " (hibernation is not configured on it, so it was stopped instead)"
        return StopResult(instance.key, True, action, message)

    def close(self) -> None:
        self._clients.close()

    # -- helpers --------------------------------------------------------------------------------

    def _access(self, account_id: str) -> AccountAccess:
        """The credentials for an account, resolving the configured accounts on first use."""
        try:
            return self._clients.account(account_id)
        except AuthError:
            self._accounts([])  # a stop before any discovery: learn the accounts, then retry
            return self._clients.account(account_id)

    def _pool(self, tasks: int) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(
            max_workers=max(1, min(self._limits.workers, tasks)),
            thread_name_prefix="guardian-aws",
        )

    def _unit_error(
        self, exc: BaseException, account: str, region: str, operation: str
    ) -> UnitError:
        service = operation.split(":", 1)[0]
        error = map_aws_error(exc, operation=_operation(exc, service, operation))
        if not isinstance(exc, GuardianError | BotoCoreError | ClientError | ResponseParserError):
            log.exception("aws_unit_crashed", account=account, region=region)
        return UnitError("aws", account, region, error.operation or operation, str(error))


def probe_credentials(config: Config, *, session: boto3.Session | None = None) -> str:
    """Who the default credentials are, and that every configured role can be assumed.

    ``arn:aws:iam::123456789012:user/me (account 123456789012)``; raises ``AuthError`` and
    friends with a one-line message (``guardian check-config --probe`` prints it).
    """
    clients = AwsClients(session, home_region=_home_region(config))
    operation = "sts:GetCallerIdentity"
    try:
        arn, account = clients.default_identity()
        parts = [f"{arn} (account {account})"]
        operation = "sts:AssumeRole"
        for configured in config.aws.accounts:
            access = clients.role_account(configured)
            parts.append(f"role {configured.role_arn} assumed (account {access.account_id})")
        return "; ".join(parts)
    except Exception as exc:
        raise map_aws_error(exc, operation=operation) from exc
    finally:
        clients.close()
