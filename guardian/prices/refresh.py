"""Refresh the price cache from a provider's price API: the shared loop and its report.

A ``PriceSource`` returns every price of one region; ``refresh`` asks it region by region and
writes the cache once, atomically. A region is all or nothing: if any page of it fails, that
region keeps its old cached prices (or the embedded ones), and the regions that succeeded are
still written. Access denied stops the whole refresh before anything is written: it would fail
the same way for every region. The sources are ``refresh_aws`` (the AWS Price List API) and
``refresh_gcp`` (the Cloud Billing Catalog); ``sources.source_for`` picks one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog

from guardian.errors import AuthError, GuardianError, ProviderError
from guardian.prices.catalog import (
    CatalogError,
    PriceCache,
    RegionPrices,
    cache_path,
    load_embedded,
    merge,
    read_cache,
    regions,
    write_cache,
)

if TYPE_CHECKING:
    from guardian.config import Config

__all__ = [
    "PriceChange",
    "PriceSource",
    "RefreshReport",
    "RegionOutcome",
    "default_regions",
    "refresh",
]

log = structlog.get_logger(__name__)


class PriceSource(Protocol):
    """Every on-demand price of one region of one provider, read from that provider's API."""

    provider: str
    name: str

    def fetch_region(self, region: str, now: datetime) -> RegionPrices:
        """All prices of ``region``; raises a ``ProviderError`` if any part fails."""
        ...


# ---------------------------------------------------------------- running


def default_regions(provider: str, config: Config, state_dir: Path | None) -> list[str]:
    """The configured AWS regions; with ``all`` (or for GCP) every region the catalog knows."""
    if provider == "aws" and isinstance(config.aws.regions, list):
        return list(config.aws.regions)
    known = set(regions(load_embedded(), provider))
    if state_dir is not None:
        try:
            cached = read_cache(cache_path(state_dir))
        except (OSError, CatalogError):
            cached = PriceCache()
        known |= {region for (p, region) in cached.regions if p == provider}
    return sorted(known)


@dataclass(frozen=True)
class PriceChange:
    provider: str
    region: str
    instance_type: str
    old_usd: float | None  # None: the type had no price before
    new_usd: float

    @property
    def relative(self) -> float | None:
        return None if self.old_usd is None else (self.new_usd - self.old_usd) / self.old_usd


@dataclass(frozen=True)
class RegionOutcome:
    region: str
    types: int
    new: int
    changed: int

    @property
    def unchanged(self) -> int:
        return self.types - self.new - self.changed


@dataclass(frozen=True)
class RefreshReport:
    provider: str
    source: str
    cache_path: Path
    outcomes: tuple[RegionOutcome, ...]
    changes: tuple[PriceChange, ...]
    failures: Mapping[str, str] = field(default_factory=dict)  # region → one-line reason
    moved_aside: Path | None = None  # an unreadable old cache, kept rather than overwritten

    def biggest_moves(self, limit: int = 5) -> list[PriceChange]:
        moved = [c for c in self.changes if c.relative is not None]
        moved.sort(key=lambda c: (-abs(c.relative or 0.0), c.region, c.instance_type))
        return moved[:limit]


def _check_writable(state_dir: Path) -> None:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GuardianError(
            f"cannot create the state dir {state_dir} for the price cache: "
            f"{exc.strerror or exc}; set state_dir in the config to a writable folder"
        ) from exc
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise GuardianError(
            f"cannot write the price cache in {state_dir}: permission denied; "
            "set state_dir in the config to a writable folder"
        )


def refresh(
    source: PriceSource, region_names: Sequence[str], state_dir: Path, now: datetime
) -> RefreshReport:
    """Fetch every region, then write the regions that succeeded into the cache at once."""
    path = cache_path(state_dir)
    _check_writable(state_dir)  # before any API call: fail fast, spend nothing
    moved_aside: Path | None = None
    try:
        old = read_cache(path)
        unreadable = False
    except CatalogError as exc:
        log.warning("price_cache_unreadable", path=str(path), error=str(exc))
        old, unreadable = PriceCache(), True
    except OSError as exc:
        raise GuardianError(f"cannot read the price cache {path}: {exc.strerror or exc}") from exc
    before = merge(old)

    fetched: dict[str, RegionPrices] = {}
    failures: dict[str, str] = {}
    for region in _unique(region_names):
        try:
            fetched[region] = source.fetch_region(region, now)
        except AuthError:
            raise  # the same for every region: stop before writing anything
        except ProviderError as exc:
            log.warning("price_refresh_failed", provider=source.provider, region=region)
            failures[region] = str(exc)

    outcomes: list[RegionOutcome] = []
    changes: list[PriceChange] = []
    for region, block in fetched.items():
        new = changed = 0
        for name, entry in sorted(block.types.items()):
            previous = before.lookup(source.provider, region, name)
            old_usd = previous.hourly_usd if previous is not None else None
            new_usd = entry.hourly_usd or 0.0
            if old_usd is None:
                new += 1
                changes.append(PriceChange(source.provider, region, name, None, new_usd))
            elif abs(old_usd - new_usd) > 1e-6:
                changed += 1
                changes.append(PriceChange(source.provider, region, name, old_usd, new_usd))
        outcomes.append(RegionOutcome(region, len(block.types), new, changed))

    if fetched:
        if unreadable:
            moved_aside = path.with_name(f"{path.name}.unreadable-{now:%Y%m%dT%H%M%SZ}")
            os.replace(path, moved_aside)  # keep it for a person to look at, never delete
        blocks = dict(old.regions)
        blocks.update({(source.provider, region): b for region, b in fetched.items()})
        write_cache(path, PriceCache(blocks))
    return RefreshReport(
        source.provider,
        source.name,
        path,
        tuple(outcomes),
        tuple(changes),
        failures,
        moved_aside,
    )


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
