"""The one small contract every cloud provider implements.

No boto3 dict or protobuf crosses it: providers return the dataclasses of ``guardian.model``.
Importing this package imports no cloud SDK; ``guardian.providers.aws`` and ``.gcp`` do, lazily.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from guardian.model import GpuInstance, GpuUtilisation

__all__ = ["Discovery", "Provider", "StopResult", "UnitError"]


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
    # Not ok, but the call may still have taken effect: its answer was lost (a timeout, a
    # dropped connection, a server error). Enforcement then reads the outcome from the
    # instance's state in the next cycle instead of calling it failed — or stopping again.
    unconfirmed: bool = False


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
