"""Accounts, credentials and boto3 clients for the AWS provider, safe to use from many threads.

boto3 clients are thread-safe but sessions are not, so every client is created here under one
lock and then shared by the worker threads. Accounts come from ``aws.accounts``: each role is
assumed through STS (and assumed again before its credentials expire, for a long-running
daemon); with no accounts listed the default credentials' own account is audited, its id read
once from STS GetCallerIdentity. Every client counts its API calls per operation through
botocore's ``before-call`` event, for ``Discovery.api_calls`` and the fleet benchmark.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, overload

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import IncompleteReadError
from botocore.utils import parse_timestamp

from guardian.config import AwsAccount
from guardian.errors import AuthError
from guardian.providers import Caller, Patience
from guardian.providers.aws.parse_gate import ParseGate

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_organizations import OrganizationsClient
    from mypy_boto3_sts import STSClient

__all__ = [
    "PATIENCE",
    "AccountAccess",
    "AwsClients",
    "CallCounter",
    "account_from_role_arn",
    "boto_config",
    "refuse_cut_short_answer",
]

ROLE_SESSION_NAME = "gpu-guardian"
# Assume a role again this long before its credentials expire, so no call runs on stale keys.
REFRESH_BEFORE = timedelta(minutes=10)
# Responses of several MB (1,000 instances; 500 series of two hours), parsed one at a time.
LARGE_RESPONSES = {"ec2": ("DescribeInstances",), "cloudwatch": ("GetMetricData",)}
# How long AWS calls wait, per caller: the only place these numbers live (docs/aws.md).
PATIENCE: Mapping[Caller, Patience] = MappingProxyType(
    {
        # A person waits: an endpoint that accepts connections and never answers is named in
        # about 30 s, not six minutes. AWS answers a page of 1,000 instances or a GetMetricData
        # call of 500 series in a few seconds; 15 s leaves room for a slow one, and one retry
        # rides out a dropped connection.
        "interactive": Patience(connect_s=5.0, read_s=15.0, attempts=2),
        # The daemon and the agent may wait out a slow minute; the next cycle comes anyway.
        "daemon": Patience(connect_s=10.0, read_s=30.0, attempts=3),
    }
)


def boto_config(patience: Patience, **options: Any) -> BotoConfig:
    """A botocore client config with ``patience``'s timeouts and retries (standard mode)."""
    return BotoConfig(
        # total_max_attempts counts the first try; botocore's max_attempts would not.
        retries={"mode": "standard", "total_max_attempts": patience.attempts},
        connect_timeout=patience.connect_s,
        read_timeout=patience.read_s,
        **options,
    )


def provider_client_config(patience: Patience) -> BotoConfig:
    return boto_config(
        patience,
        max_pool_connections=32,  # worker threads share one client per service and region
        user_agent_extra="gpu-guardian",
    )


def refuse_cut_short_answer(response_dict: Mapping[str, Any], **_: Any) -> None:
    """An answer shorter than its Content-Length is an error, never parsed.

    botocore reads answers with urllib3's length check switched off, so a connection cut
    mid-answer hands the parser a shorter body — and its CBOR parser (CloudWatch) reads that as
    a shorter answer without a word: fewer series listed, fewer datapoints. A metric that could
    not be read would pass for one that is not there (found under injected faults).
    """
    headers = response_dict.get("headers") or {}
    body = response_dict.get("body")
    expected = headers.get("content-length")
    if not isinstance(body, bytes) or expected is None or not str(expected).isdigit():
        return
    if headers.get("content-encoding", "identity") != "identity":
        return  # the length counts the encoded bytes; botocore decodes later
    if len(body) < int(expected):
        raise IncompleteReadError(actual_bytes=len(body), expected_bytes=int(expected))


class CallCounter:
    """API calls per ``service:Operation``, counted once per call (not per retry attempt)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def __call__(self, model: Any = None, **_: Any) -> None:
        name = f"{model.service_model.service_name}:{model.name}" if model else "unknown"
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @staticmethod
    def since(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
        """The calls made between two snapshots."""
        return {
            name: after[name] - before.get(name, 0)
            for name in sorted(after)
            if after[name] - before.get(name, 0)
        }


_EPOCHS: dict[int | float, datetime] = {}  # epoch seconds → the one datetime for it
# A day of minutes is 1,440 timestamps; emptied when full, so a daemon that runs for months
# holds at most ~1 MB here (a cache miss only costs building the datetime again).
_EPOCHS_MAX = 8_192


def fast_timestamp(value: Any) -> datetime:
    """botocore's timestamp parser, minus its cost for epoch numbers (CloudWatch answers in
    CBOR with epoch timestamps): botocore builds each in the local zone through dateutil, about
    20 us a datapoint, which dominates reading a day of minutes for thousands of GPUs. Same
    instant, in UTC.

    Every series of a GetMetricData answer has the same period timestamps, so each epoch maps
    to one shared (immutable) datetime: 9,400 series of 121 points then hold 121 datetimes, not
    1.1 million of 48 bytes each. Thread-safe: a race only builds a datetime twice."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        found = _EPOCHS.get(value)
        if found is None:
            if len(_EPOCHS) >= _EPOCHS_MAX:
                _EPOCHS.clear()
            found = _EPOCHS[value] = datetime.fromtimestamp(value, UTC)
        return found
    return parse_timestamp(value)


def account_from_role_arn(role_arn: str) -> str:
    """``arn:aws:iam::123456789012:role/x`` → ``123456789012`` (the role's own account)."""
    parts = role_arn.split(":")
    if len(parts) >= 6 and parts[0] == "arn" and parts[4].isdigit():
        return parts[4]
    return role_arn


@dataclass
class AccountAccess:
    """One audited account: its id and, for a role, the temporary credentials assumed."""

    account_id: str
    role_arn: str | None = None
    external_id: str | None = None
    credentials: Mapping[str, str] | None = None  # AccessKeyId, SecretAccessKey, SessionToken
    expires_at: datetime | None = None


class AwsClients:
    """Creates and caches clients per (account, service, region); every method is thread-safe."""

    def __init__(
        self,
        session: boto3.Session | None = None,
        *,
        home_region: str = "us-east-1",
        client_config: BotoConfig | None = None,
        patience: Patience = PATIENCE["interactive"],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._session = session or boto3.Session()
        # Clients take their response parser from the botocore session at creation.
        self._session._session.get_component("response_parser_factory").set_parser_defaults(
            timestamp_parser=fast_timestamp
        )
        self.home_region = self._session.region_name or home_region
        base = provider_client_config(patience)
        self._config = base.merge(client_config) if client_config else base
        self._clock = clock
        self._lock = threading.RLock()
        self._clients: dict[tuple[str, str, str], Any] = {}
        self._accounts: dict[str, AccountAccess] = {}
        self._default_account: str | None = None
        self.counter = CallCounter()
        self._parse_gate = ParseGate()

    # -- accounts -------------------------------------------------------------------------------

    def default_identity(self) -> tuple[str, str]:
        """(ARN, account id) of the default credentials, from STS GetCallerIdentity."""
        sts = self._client(None, "sts", self.home_region)
        identity = sts.get_caller_identity()
        return identity["Arn"], identity["Account"]

    def default_account(self) -> AccountAccess:
        """The default credentials' own account; its id is read from STS once per provider."""
        with self._lock:
            if self._default_account is None:
                _, self._default_account = self.default_identity()
                self._accounts.setdefault(
                    self._default_account, AccountAccess(self._default_account)
                )
            return self._accounts[self._default_account]

    def role_account(self, account: AwsAccount) -> AccountAccess:
        """The account behind a configured role, assumed now or again when near expiry."""
        account_id = account_from_role_arn(account.role_arn)
        with self._lock:
            access = self._accounts.get(account_id)
            if access is None or access.role_arn != account.role_arn:
                access = AccountAccess(account_id, account.role_arn, account.external_id)
                self._accounts[account_id] = access
            if access.expires_at is None or access.expires_at - REFRESH_BEFORE <= self._clock():
                self._assume(access)
            return access

    def account(self, account_id: str) -> AccountAccess:
        """A known account by id (for stop); refreshes role credentials when near expiry."""
        with self._lock:
            access = self._accounts.get(account_id)
        if access is None:
            raise AuthError(
                f"account {account_id} is not one guardian audits (not in aws.accounts)",
                provider="aws",
            )
        if access.role_arn is not None:
            return self.role_account(
                AwsAccount(role_arn=access.role_arn, external_id=access.external_id)
            )
        return access

    def _assume(self, access: AccountAccess) -> None:
        assert access.role_arn is not None
        sts = self._client(None, "sts", self.home_region)
        kwargs: dict[str, Any] = {"RoleArn": access.role_arn, "RoleSessionName": ROLE_SESSION_NAME}
        if access.external_id:
            kwargs["ExternalId"] = access.external_id
        response = sts.assume_role(**kwargs)
        credentials = response["Credentials"]
        access.credentials = {
            "AccessKeyId": credentials["AccessKeyId"],
            "SecretAccessKey": credentials["SecretAccessKey"],
            "SessionToken": credentials["SessionToken"],
        }
        access.expires_at = credentials["Expiration"].astimezone(UTC)
        # New clients for the new keys; the old ones are dropped, not closed, since another
        # thread may still be finishing a call on them.
        for key in [k for k in self._clients if k[0] == access.account_id]:
            del self._clients[key]

    # -- clients --------------------------------------------------------------------------------

    @overload
    def client(self, access: AccountAccess, service: Literal["ec2"], region: str) -> EC2Client: ...
    @overload
    def client(
        self, access: AccountAccess, service: Literal["cloudwatch"], region: str
    ) -> CloudWatchClient: ...
    @overload
    def client(
        self, access: AccountAccess, service: Literal["autoscaling"], region: str
    ) -> Any: ...
    def client(self, access: AccountAccess, service: str, region: str) -> Any:
        return self._client(access, service, region)

    def organizations(self) -> OrganizationsClient:
        """Organizations with the default credentials (the management or a delegated admin
        account): a global service, answered in the home region's endpoint."""
        client: OrganizationsClient = self._client(None, "organizations", self.home_region)
        return client

    def sts(self) -> STSClient:
        client: STSClient = self._client(None, "sts", self.home_region)
        return client

    def _client(self, access: AccountAccess | None, service: str, region: str) -> Any:
        account_key = access.account_id if access and access.credentials else ""
        key = (account_key, service, region)
        with self._lock:
            existing = self._clients.get(key)
            if existing is not None:
                return existing
            credentials = access.credentials if access and access.credentials else {}
            # Clients come from the one base session so that event hooks registered on it (call
            # counting in tests and benchmarks) see the assumed-role accounts' calls too.
            client = self._session.client(
                service,  # type: ignore[call-overload]
                region_name=region,
                config=self._config,
                aws_access_key_id=credentials.get("AccessKeyId"),
                aws_secret_access_key=credentials.get("SecretAccessKey"),
                aws_session_token=credentials.get("SessionToken"),
            )
            client.meta.events.register("before-call", self.counter)
            client.meta.events.register("before-parse", refuse_cut_short_answer)
            if service in LARGE_RESPONSES:
                self._parse_gate.attach(client.meta.events, service, LARGE_RESPONSES[service])
            self._clients[key] = client
            return client

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
