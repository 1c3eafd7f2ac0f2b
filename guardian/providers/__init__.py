"""The one small contract every cloud provider implements.

No boto3 dict or protobuf crosses it: providers return the dataclasses of ``guardian.model``.
Importing this package imports no cloud SDK; ``guardian.providers.aws`` and ``.gcp`` do, lazily.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from guardian.model import GpuInstance, GpuUtilisation

__all__ = ["Caller", "Discovery", "Patience", "Provider", "StopResult", "UnitError"]

# Who is waiting on the cloud: a person at a terminal (audit, check-config --probe, backtest,
# prices) or a service (the daemon, the agent), which can wait longer and retry more.
Caller = Literal["interactive", "daemon"]


@dataclass(frozen=True)
class Patience:
    """How long one API call may take and how often it is tried before its unit (account and
    region, project) is given up for this cycle. Each cloud keeps its two settings, one per
    ``Caller``, in one place: ``PATIENCE`` in ``providers/aws/clients.py`` and
    ``providers/gcp/clients.py``."""

    connect_s: float  # to open the connection
    read_s: float  # for the answer to a request (between bytes, for a streamed one)
    attempts: int  # tries in all, the first included

    @property
    def worst_case_s(self) -> float:
        """The longest one call can take against an endpoint that never answers: every
        attempt's connect and read timeouts, plus the SDKs' backoff between attempts."""
        return self.attempts * (self.connect_s + self.read_s) + 2.0 ** (self.attempts - 1)


@dataclass(frozen=True)
class UnitError:
    """A unit (account+region, project) that could not be listed this cycle."""

    provider: str
    account: str
    region: str
    operation: str
    message: str


@dataclass(frozen=True)
class Discovery:
    instances: tuple[GpuInstance, ...]
    errors: tuple[UnitError, ...] = ()
    api_calls: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StopResult:
    instance_key: str
    ok: bool
    action: str  # "stop" | "hibernate"
    message: str = ""


class Provider(Protocol):
    """Discover GPU instances, fetch their GPU utilisation in batches, stop one, close."""

    name: str

    def discover(self) -> Discovery:
        """Every running GPU instance in the configured scope; failed units in ``errors``."""
        ...

    def utilisation(
        self, instances: Sequence[GpuInstance], start: datetime, end: datetime
    ) -> Iterator[tuple[str, GpuUtilisation]]:
        """``(GpuInstance.key, history)`` for every instance exactly once (with ``error`` set
        where its batch failed), fetched in batches at the API's limits and yielded as soon as
        an instance's data are in, in no particular order: a caller that decides on each and
        drops it holds the batches in flight, not the fleet's history."""
        ...

    def stop(self, instance: GpuInstance, *, hibernate: bool = False) -> StopResult:
        """Stop (or hibernate) one instance. Never terminates, never deletes."""
        ...

    def close(self) -> None: ...
