"""The one small contract every cloud provider implements.

No boto3 dict or protobuf crosses it: providers return the dataclasses of ``guardian.model``.
Importing this package imports no cloud SDK; ``guardian.providers.aws`` and ``.gcp`` do, lazily.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from guardian.model import GpuInstance, GpuUtilisation, ScalingGroup

__all__ = [
    "Caller",
    "Discovery",
    "Patience",
    "Provider",
    "ScalingGroups",
    "StopResult",
    "Unit",
    "UnitError",
    "UnitPlan",
]

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


@dataclass(frozen=True, order=True)
class Unit:
    """The smallest piece of a cycle: one AWS account in one region, or one GCP project
    (region ``global``: one aggregated list covers its zones). ``guardian run`` audits and
    enforces unit by unit, several at once, and with PostgreSQL spreads them over replicas."""

    provider: str
    account: str
    region: str

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.account}/{self.region}"

    @classmethod
    def from_key(cls, key: str) -> Unit:
        provider, account, region = key.split("/", 2)
        return cls(provider, account, region)

    def covers(self, provider: str, account: str, region: str) -> bool:
        """Whether an instance (or episode) of that provider, account and region is in it."""
        if (provider, account) != (self.provider, self.account):
            return False
        return self.region in ("global", region)


@dataclass(frozen=True)
class UnitPlan:
    """What a provider would audit now; accounts or projects that could not even be listed
    or entered are ``errors`` (reported, and their instances left alone this cycle)."""

    units: tuple[Unit, ...]
    errors: tuple[UnitError, ...] = ()


@dataclass(frozen=True)
class Discovery:
    instances: tuple[GpuInstance, ...]
    errors: tuple[UnitError, ...] = ()
    api_calls: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StopResult:
    instance_key: str
    ok: bool
    action: str  # "stop" | "hibernate" | "standby+stop"
    message: str = ""
    # The cloud refuses this stop for good (stop protection, an unsupported instance): retrying
    # cannot help, so enforcement records it once and never tries again this episode.
    permanent: bool = False
    # Not ok, but the call may still have taken effect: its answer was lost (a timeout, a
    # dropped connection, a server error). Enforcement then reads the outcome from the
    # instance's state in the next cycle instead of calling it failed — or stopping again.
    unconfirmed: bool = False


class Provider(Protocol):
    """Discover GPU instances, fetch their GPU utilisation in batches, stop one, close."""

    name: str

    def units(self) -> UnitPlan:
        """The units of the configured scope: accounts (an Organization's, found now) × their
        regions, or projects (a folder's, found now). Cheap enough for every cycle: listings
        are cached by the provider."""
        ...

    def discover(self, units: Sequence[Unit] | None = None) -> Discovery:
        """Every running GPU instance in ``units`` (None: the whole configured scope); units
        that failed are in ``errors``."""
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

    def describe(self, instance: GpuInstance) -> GpuInstance:
        """This one instance as discovery would see it now, read with the few calls it needs
        (the node agent's re-check before it stops itself). Raises ``ProviderError`` when it
        cannot be read or is no longer a running GPU instance."""
        ...

    def stop_protection(self, instance: GpuInstance) -> bool | None:
        """Whether the cloud refuses API stops of this instance (AWS ``DisableApiStop``); None
        when it cannot be read. One call: asked once per warning, never per cycle."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class ScalingGroups(Protocol):
    """What a provider with Auto Scaling groups adds (AWS): read groups' capacity, and put an
    idle member into Standby (desired capacity decremented) before stopping it."""

    def scaling_groups(
        self, account: str, region: str, names: Sequence[str]
    ) -> dict[str, ScalingGroup]:
        """The named groups' capacity, in as few calls as the API allows."""
        ...

    def standby_and_stop(self, instance: GpuInstance, *, hibernate: bool = False) -> StopResult:
        """EnterStandby (decrementing the desired capacity), then stop. Never terminates."""
        ...
