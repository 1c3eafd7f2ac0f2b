"""The AWS provider: GPU instances from EC2, their GPU utilisation from CloudWatch, stop.

Every (account, region) is a unit discovered on its own worker thread; a unit that fails becomes
a ``UnitError`` and the others carry on. No call is ever made per instance: instances are listed
per region, spot requests and metrics are fetched in batches at the APIs' limits
(``AwsLimits``). The endpoint is overridden only the standard boto3 way (``AWS_ENDPOINT_URL``),
which is how the tests and ``guardian demo`` point it at moto.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

import boto3
import structlog
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from guardian.config import AwsOrganizationAccounts, Config
from guardian.errors import AuthError, ProviderError
from guardian.model import Controller, GpuInstance, GpuUtilisation, ScalingGroup
from guardian.providers import Caller, Discovery, StopResult, Unit, UnitError, UnitPlan
from guardian.providers.aws.accounts import AccountDirectory
from guardian.providers.aws.actions import (
    describe_groups,
    describe_running,
    read_stop_protection,
    refusal,
    standby_then_stop,
    stop_instance,
)
from guardian.providers.aws.clients import (
    PATIENCE,
    AccountAccess,
    AwsClients,
    CallCounter,
)
from guardian.providers.aws.collect import Fetched, instance_listings, reduce_as_completed
from guardian.providers.aws.discovery import (
    GpuTypeCatalog,
    discover_region,
    spot_request_types,
    to_instance,
)
from guardian.providers.aws.errors import is_expected, map_aws_error
from guardian.providers.aws.limits import AwsLimits
from guardian.providers.aws.metrics import (
    InstanceSeriesSpec,
    MetricNames,
    Query,
    aligned_window,
    fetch_batch,
    list_instance_series,
    no_series_error,
    plan_batches,
)
from guardian.providers.aws.type_cache import TypeCacheFile

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


class AwsProvider:
    """``guardian.providers.Provider`` for EC2 and CloudWatch, across accounts and regions.

    ``session`` (tests, benchmarks) replaces the default boto3 session; its clients are made to
    parse epoch timestamps straight to UTC (the same instants, several times faster).
    ``catalog`` shares learned GPU types between providers; ``limits`` and ``client_config``
    shrink the API limits and retries for tests. ``instance_series`` adds per-instance series
    to read beside the GPUs' (each in the same GetMetricData calls). ``caller`` picks the
    timeouts and retries (``PATIENCE``): a person waits less than the daemon;
    ``build_providers`` says which, and a provider built without saying gets the patient
    settings. ``keep_types_on_disk`` keeps the instance-type catalog in ``state_dir`` for a
    day, so the next audit skips its listing.
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
        caller: Caller = "daemon",
        keep_types_on_disk: bool = False,
    ) -> None:
        self._config = config
        self._limits = limits or AwsLimits()
        disk = TypeCacheFile(config.state_dir) if keep_types_on_disk else None
        self._catalog = catalog or GpuTypeCatalog(limits=self._limits, disk=disk)
        self._clients = AwsClients(
            session,
            home_region=_home_region(config),
            client_config=client_config,
            patience=PATIENCE[caller],
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
        self._directory = AccountDirectory(config.aws, self._clients, self._unit_error)

    @property
    def api_calls(self) -> dict[str, int]:
        """Every API call this provider has made, per ``service:Operation``."""
        return self._clients.counter.snapshot()

    # -- discovery ------------------------------------------------------------------------------

    def units(self) -> UnitPlan:
        """Every (account, region) to audit: the accounts entered now (an Organization's listed,
        at most hourly), each with its regions (``all``: that account's enabled regions, read
        at most daily). Accounts that cannot be entered are the plan's errors."""
        errors: list[UnitError] = []
        accesses = self._directory.resolve(errors)
        with self._pool(len(accesses)) as pool:
            regions = [(a, pool.submit(self._enabled_regions, a)) for a in accesses]
        units: list[Unit] = []
        for access, future in regions:
            try:
                units.extend(Unit(self.name, access.account_id, r) for r in future.result())
            except Exception as exc:
                errors.append(self._unit_error(exc, access.account_id, "*", "ec2:DescribeRegions"))
        return UnitPlan(tuple(units), tuple(errors))

    def discover(self, units: Sequence[Unit] | None = None) -> Discovery:
        before = self._clients.counter.snapshot()
        started = time.monotonic()
        errors: list[UnitError] = []
        if units is None:
            plan = self.units()
            errors.extend(plan.errors)
            units = plan.units
        pairs: list[tuple[AccountAccess, str]] = []
        for unit in units:
            try:
                pairs.append((self._access(unit.account), unit.region))
            except Exception as exc:
                errors.append(self._unit_error(exc, unit.account, unit.region, "sts:AssumeRole"))
        # Clients are made here, on one thread, before the workers share them.
        clients = [(a, r, self._clients.client(a, "ec2", r)) for a, r in pairs]
        instances: list[GpuInstance] = []
        with self._pool(len(pairs)) as pool:
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
            units=len(pairs),
            failed_units=len(errors),
            api_calls=sum(calls.values()),
            seconds=round(time.monotonic() - started, 3),
        )
        return Discovery(tuple(instances), tuple(errors), calls)

    def _discover_unit(
        self, access: AccountAccess, region: str, ec2: EC2Client
    ) -> list[GpuInstance]:
        gpu_types = self._catalog.gpu_types(ec2, region, access.account_id)
        return discover_region(
            ec2,
            account=access.account_id,
            region=region,
            gpu_types=gpu_types,
            owner_tags=self._config.owner_tags,
            limits=self._limits,
        )

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
        window_s = int((end - start).total_seconds())
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
                    self._limits.metric_queries,
                    id_prefix=f"u{unit_number}q",
                    instance_listings=instance_listings(unit, listings, names),
                    max_datapoints=self._limits.datapoints_per_call,
                    window_s=window_s,
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
            yield from reduce_as_completed(fetches, measured, names)

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

    # -- acting on one instance -----------------------------------------------------------------

    def stop(self, instance: GpuInstance, *, hibernate: bool = False) -> StopResult:
        """StopInstances, with Hibernate only when asked and configured on the instance.

        A second lock behind enforcement's gates: an instance a controller owns is never sent
        a stop here (``standby_and_stop`` is the one way for a plain Auto Scaling group)."""
        action = "hibernate" if hibernate and instance.hibernation_configured else "stop"
        if instance.provider != self.name:
            return StopResult(instance.key, False, action, "not an AWS instance")
        refused = refusal(instance)
        if refused is not None:
            return StopResult(instance.key, False, action, refused, permanent=True)
        try:
            ec2 = self._clients.client(self._access(instance.account), "ec2", instance.region)
        except Exception as exc:
            return StopResult(instance.key, False, action, str(map_aws_error(exc)))
        return stop_instance(ec2, instance, hibernate=hibernate)

    def standby_and_stop(self, instance: GpuInstance, *, hibernate: bool = False) -> StopResult:
        """A plain Auto Scaling group's member: Standby (desired capacity decremented, never
        below the minimum), then stop. Nothing is terminated."""
        owner = instance.managed_by
        if owner is None or owner.kind is not Controller.AUTOSCALING_GROUP:
            return self.stop(instance, hibernate=hibernate)
        if instance.spot_one_time:
            return StopResult(instance.key, False, "standby+stop", refusal(instance) or "")
        try:
            access = self._access(instance.account)
            autoscaling = self._clients.client(access, "autoscaling", instance.region)
            ec2 = self._clients.client(access, "ec2", instance.region)
        except Exception as exc:
            return StopResult(instance.key, False, "standby+stop", str(map_aws_error(exc)))
        return standby_then_stop(autoscaling, ec2, instance, hibernate=hibernate)

    def scaling_groups(
        self, account: str, region: str, names: Sequence[str]
    ) -> dict[str, ScalingGroup]:
        """DescribeAutoScalingGroups for these names, 50 a call. Raises ProviderError."""
        try:
            access = self._access(account)
            return describe_groups(self._clients.client(access, "autoscaling", region), names)
        except Exception as exc:
            raise map_aws_error(exc, operation="autoscaling:DescribeAutoScalingGroups") from exc

    def stop_protection(self, instance: GpuInstance) -> bool | None:
        """``DisableApiStop``, one DescribeInstanceAttribute; None when it cannot be read."""
        try:
            ec2 = self._clients.client(self._access(instance.account), "ec2", instance.region)
            return read_stop_protection(ec2, instance.instance_id)
        except Exception as exc:
            error = map_aws_error(exc, operation="ec2:DescribeInstanceAttribute")
            log.warning(
                "aws_stop_protection_unread", instance_id=instance.instance_id, error=str(error)
            )
            return None

    def describe(self, instance: GpuInstance) -> GpuInstance:
        """This instance now: one DescribeInstances by id, DescribeInstanceTypes for its type
        the first time, and DescribeSpotInstanceRequests for a spot instance only."""
        try:
            ec2 = self._clients.client(self._access(instance.account), "ec2", instance.region)
            raw = describe_running(ec2, instance.instance_id)
            gpu = self._catalog.gpu_type(ec2, raw["InstanceType"])
            if gpu is None:
                raise ProviderError(
                    f"{raw['InstanceType']} has no GPU (DescribeInstanceTypes)", provider="aws"
                )
            fresh = to_instance(
                raw,
                account=instance.account,
                region=instance.region,
                gpu=gpu,
                owner_tags=self._config.owner_tags,
            )
            if fresh.spot_one_time:
                kinds = spot_request_types(ec2, [fresh.instance_id], self._limits)
                if kinds.get(fresh.instance_id, "one-time") != "one-time":
                    fresh = replace(fresh, spot_one_time=False)
        except ProviderError:
            raise
        except Exception as exc:
            raise map_aws_error(exc, operation="ec2:DescribeInstances") from exc
        return fresh

    def close(self) -> None:
        self._clients.close()

    # -- helpers --------------------------------------------------------------------------------

    def _access(self, account_id: str) -> AccountAccess:
        """The credentials for an account, resolving the configured accounts on first use."""
        try:
            return self._clients.account(account_id)
        except AuthError:
            self._directory.resolve([])  # a unit or stop before any plan: enter the accounts
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
        if not is_expected(exc):
            log.exception("aws_unit_crashed", account=account, region=region)
        return UnitError("aws", account, region, error.operation or operation, str(error))


def probe_credentials(config: Config, *, session: boto3.Session | None = None) -> str:
    """Who the default credentials are, and that every configured role can be assumed.

    ``arn:aws:iam::123456789012:user/me (account 123456789012)``; raises ``AuthError`` and
    friends with a one-line message (``guardian check-config --probe`` prints it).
    """
    clients = AwsClients(
        session, home_region=_home_region(config), patience=PATIENCE["interactive"]
    )
    operation = "sts:GetCallerIdentity"
    try:
        arn, account = clients.default_identity()
        parts = [f"{arn} (account {account})"]
        operation = "sts:AssumeRole"
        if isinstance(config.aws.accounts, AwsOrganizationAccounts):
            operation = "organizations:ListAccounts"
            errors: list[UnitError] = []
            directory = AccountDirectory(config.aws, clients, _probe_error)
            entered = directory.resolve(errors)
            if errors and not entered:
                raise AuthError(errors[0].message, provider="aws", operation=errors[0].operation)
            parts.append(f"organization: {len(entered)} accounts entered")
            parts.extend(f"account {e.account} not entered: {e.message}" for e in errors)
            return "; ".join(parts)
        for configured in config.aws.accounts:
            access = clients.role_account(configured)
            parts.append(f"role {configured.role_arn} assumed (account {access.account_id})")
        return "; ".join(parts)
    except Exception as exc:
        raise map_aws_error(exc, operation=operation) from exc
    finally:
        clients.close()


def _probe_error(exc: BaseException, account: str, region: str, operation: str) -> UnitError:
    error = map_aws_error(
        exc, operation=_operation(exc, operation.split(":", maxsplit=1)[0], operation)
    )
    return UnitError("aws", account, region, error.operation or operation, str(error))
