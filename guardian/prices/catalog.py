"""The price catalog: embedded, dated JSON files, overridden type by type by a refreshed cache.

Embedded files, ``guardian/prices/data/prices-<provider>.json`` (``schema_version`` 1)::

    {
      "schema_version": 1,
      "provider": "aws",                      # or "gcp"
      "currency": "USD", "unit": "hour",
      "source": "where the prices were read", # shown with every price taken from this file
      "as_of": "2025-06-30",                  # the day the list prices were valid
      "notes": ["what is in, what is left out and why"],
      "shapes": {                             # one shape per type, the same in every region
        "g5.xlarge": {"vcpus": 4, "memory_gib": 16,
                      "gpus": 1, "gpu_model": "NVIDIA A10G", "gpu_memory_gib": 24},
        "m6i.xlarge": {"vcpus": 4, "memory_gib": 16}            # gpus 0: a CPU type
      },
      "prices": {"us-east-1": {"g5.xlarge": 1.006}},            # on-demand USD per hour
      "accelerators": {"us-central1": {"nvidia-tesla-t4": 0.35}},  # GCP: USD per GPU-hour
      "unit_rates": {...}                     # GCP only: documents how the prices were made
    }

A type is priced in a region only if the region's ``prices`` lists it: absence means unknown,
never "assume the us-east-1 price". GCP N1 types have ``gpus`` 0; an N1 VM with attached GPUs
costs the N1 type plus ``gpu_count`` × the accelerator's price (``pricing.assess`` adds it).

The cache, ``<state_dir>/prices-cache.json``, is written by ``guardian.prices.refresh``; each
region block replaces the embedded entries of the types it lists and adds the ones it adds::

    {
      "schema_version": 1,
      "providers": {"aws": {"us-east-1": {
        "source": "aws-pricing-api", "fetched_at": "2026-11-26T23:59:10Z",
        "types": {"g5.xlarge": {"vcpus": 4, "memory_gib": 16, "gpus": 1,
                                "gpu_model": null, "usd_per_hour": 1.006}},
        "accelerators": {}
      }}}
    }

A price from the cache says so: ``price_source`` is ``aws-pricing-api 2026-11-26`` for it and
``catalog 2025-06-30`` for one from the embedded file. A cache that cannot be read is one warning
and the embedded catalog alone; it is never deleted here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import structlog

from guardian.prices.assessment import PriceCatalog, TypePrice
from guardian.prices.gpu_models import load_gpu_models

__all__ = [
    "CACHE_FILENAME",
    "PROVIDERS",
    "SCHEMA_VERSION",
    "CatalogError",
    "PriceCache",
    "RegionPrices",
    "cache_path",
    "embedded_as_of",
    "load_catalog",
    "load_embedded",
    "merge",
    "read_cache",
    "regions",
    "source_date",
    "write_cache",
]

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1
PROVIDERS: tuple[str, ...] = ("aws", "gcp")
CACHE_FILENAME = "prices-cache.json"


class CatalogError(ValueError):
    """A catalog or cache document does not follow the schema; the message says where."""


@dataclass(frozen=True)
class RegionPrices:
    """Every price one source gave for one provider's region at one moment."""

    provider: str
    region: str
    source: str  # e.g. "aws-pricing-api"
    fetched_at: datetime  # aware UTC
    types: Mapping[str, TypePrice]
    accelerators: Mapping[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``aws-pricing-api 2026-11-26``: what ``price_source`` shows for these prices."""
        return f"{self.source} {self.fetched_at.date().isoformat()}"


@dataclass(frozen=True)
class PriceCache:
    """The refreshed prices on disk, keyed by (provider, region)."""

    regions: Mapping[tuple[str, str], RegionPrices] = field(default_factory=dict)


def cache_path(state_dir: Path) -> Path:
    return state_dir / CACHE_FILENAME


# ---------------------------------------------------------------- validation helpers


def _positive(value: Any, where: str) -> float:
    # bool is an int subclass; "true" as a price is corruption, not 1.0.
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise CatalogError(f"{where}: expected a positive number, got {value!r}")
    return float(value)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise CatalogError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _shape(name: str, raw: Any, where: str, price: float | None) -> TypePrice:
    data = _mapping(raw, where)
    gpus = data.get("gpus", 0)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise CatalogError(f"{where}.gpus: expected a whole number >= 0, got {gpus!r}")
    model = data.get("gpu_model")
    if model is not None and not isinstance(model, str):
        raise CatalogError(f"{where}.gpu_model: expected a string or null")
    gpu_mem = data.get("gpu_memory_gib")
    return TypePrice(
        instance_type=name,
        vcpus=_positive(data.get("vcpus"), f"{where}.vcpus"),
        memory_gib=_positive(data.get("memory_gib"), f"{where}.memory_gib"),
        gpus=gpus,
        gpu_model=model,
        hourly_usd=price,
        gpu_memory_gib=None if gpu_mem is None else _positive(gpu_mem, f"{where}.gpu_memory_gib"),
    )


# ---------------------------------------------------------------- embedded catalog


@dataclass(frozen=True)
class _Embedded:
    provider: str
    label: str  # "catalog 2025-06-30"
    as_of: date
    types: dict[str, dict[str, TypePrice]]
    accelerators: dict[str, dict[str, float]]


def _parse_embedded(doc: Any, provider: str) -> _Embedded:
    where = f"prices-{provider}.json"
    data = _mapping(doc, where)
    if data.get("schema_version") != SCHEMA_VERSION:
        raise CatalogError(f"{where}: schema_version must be {SCHEMA_VERSION}")
    if data.get("provider") != provider or data.get("currency") != "USD":
        raise CatalogError(f"{where}: provider must be {provider!r} and currency 'USD'")
    if not isinstance(data.get("source"), str) or not data["source"]:
        raise CatalogError(f"{where}: source is required")
    try:
        as_of = date.fromisoformat(str(data.get("as_of")))
    except ValueError as exc:
        raise CatalogError(f"{where}: as_of must be an ISO date (YYYY-MM-DD)") from exc
    shapes = _mapping(data.get("shapes"), f"{where}.shapes")
    types: dict[str, dict[str, TypePrice]] = {}
    for region, prices in _mapping(data.get("prices"), f"{where}.prices").items():
        region_types: dict[str, TypePrice] = {}
        for name, price in _mapping(prices, f"{where}.prices.{region}").items():
            if name not in shapes:
                raise CatalogError(f"{where}.prices.{region}.{name}: no entry in shapes")
            usd = _positive(price, f"{where}.prices.{region}.{name}")
            region_types[name] = _shape(name, shapes[name], f"{where}.shapes.{name}", usd)
        types[region] = region_types
    accelerators: dict[str, dict[str, float]] = {}
    for region, prices in _mapping(data.get("accelerators", {}), f"{where}.accelerators").items():
        accelerators[region] = {
            name: _positive(usd, f"{where}.accelerators.{region}.{name}")
            for name, usd in _mapping(prices, f"{where}.accelerators.{region}").items()
        }
    return _Embedded(provider, f"catalog {as_of.isoformat()}", as_of, types, accelerators)


@lru_cache(maxsize=1)
def _embedded() -> tuple[_Embedded, ...]:
    # Package data never changes while the process runs: parse it once.
    return tuple(
        _parse_embedded(json.loads(_data_text(f"prices-{provider}.json")), provider)
        for provider in PROVIDERS
    )


def _data_text(name: str) -> str:
    return resources.files("guardian.prices").joinpath("data", name).read_text(encoding="utf-8")


def embedded_as_of() -> dict[str, date]:
    """provider → the day the embedded list prices were valid."""
    return {item.provider: item.as_of for item in _embedded()}


def load_embedded() -> PriceCatalog:
    """The catalog shipped with the package, without any refreshed prices."""
    return merge(PriceCache())


# ---------------------------------------------------------------- the cache


def _parse_region_block(provider: str, region: str, raw: Any) -> RegionPrices:
    where = f"{provider}.{region}"
    data = _mapping(raw, where)
    source = data.get("source")
    if not isinstance(source, str) or not source:
        raise CatalogError(f"{where}.source is required")
    try:
        fetched_at = datetime.fromisoformat(str(data.get("fetched_at")))
    except ValueError as exc:
        raise CatalogError(f"{where}.fetched_at: not an ISO time") from exc
    if fetched_at.tzinfo is None:
        raise CatalogError(f"{where}.fetched_at: needs a time zone")
    types = {}
    for name, entry in _mapping(data.get("types"), f"{where}.types").items():
        entry_map = _mapping(entry, f"{where}.types.{name}")
        usd = _positive(entry_map.get("usd_per_hour"), f"{where}.types.{name}.usd_per_hour")
        types[name] = _shape(name, entry_map, f"{where}.types.{name}", usd)
    accelerators = {
        name: _positive(usd, f"{where}.accelerators.{name}")
        for name, usd in _mapping(data.get("accelerators", {}), f"{where}.accelerators").items()
    }
    return RegionPrices(provider, region, source, fetched_at.astimezone(UTC), types, accelerators)


def read_cache(path: Path) -> PriceCache:
    """The cache at ``path``; empty when there is none. Raises OSError or CatalogError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return PriceCache()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(f"not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    data = _mapping(doc, "cache")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise CatalogError(f"schema_version must be {SCHEMA_VERSION}")
    blocks: dict[tuple[str, str], RegionPrices] = {}
    for provider, by_region in _mapping(data.get("providers"), "providers").items():
        for region, raw in _mapping(by_region, f"providers.{provider}").items():
            blocks[(provider, region)] = _parse_region_block(provider, region, raw)
    return PriceCache(blocks)


def _cache_document(cache: PriceCache) -> dict[str, Any]:
    providers: dict[str, dict[str, Any]] = {}
    for (provider, region), block in sorted(cache.regions.items()):
        providers.setdefault(provider, {})[region] = {
            "source": block.source,
            "fetched_at": block.fetched_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "types": {
                name: {
                    "vcpus": entry.vcpus,
                    "memory_gib": entry.memory_gib,
                    "gpus": entry.gpus,
                    "gpu_model": entry.gpu_model,
                    "gpu_memory_gib": entry.gpu_memory_gib,
                    "usd_per_hour": entry.hourly_usd,
                }
                for name, entry in sorted(block.types.items())
            },
            "accelerators": dict(sorted(block.accelerators.items())),
        }
    return {"schema_version": SCHEMA_VERSION, "providers": providers}


def write_cache(path: Path, cache: PriceCache) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_cache_document(cache), indent=1, sort_keys=False) + "\n"
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes it 0600; the daemon may run as another user
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- merging and loading


def merge(cache: PriceCache) -> PriceCatalog:
    """The embedded catalog with each cached (provider, region, type) put over it."""
    types: dict[str, dict[str, dict[str, TypePrice]]] = {}
    accelerators: dict[str, dict[str, dict[str, float]]] = {}
    type_sources: dict[str, dict[str, dict[str, str]]] = {}
    source: dict[str, str] = {}
    shapes: dict[str, dict[str, TypePrice]] = {}
    for item in _embedded():
        source[item.provider] = item.label
        types[item.provider] = {region: dict(by_type) for region, by_type in item.types.items()}
        accelerators[item.provider] = {r: dict(a) for r, a in item.accelerators.items()}
        shapes[item.provider] = {n: e for by in item.types.values() for n, e in by.items()}
    for (provider, region), block in cache.regions.items():
        region_types = types.setdefault(provider, {}).setdefault(region, {})
        region_sources = type_sources.setdefault(provider, {}).setdefault(region, {})
        known = shapes.get(provider, {})
        for name, cached in block.types.items():
            entry = cached
            # The Pricing API names no GPU model; keep the embedded one for a known type.
            if cached.gpus and cached.gpu_model is None and name in known:
                entry = replace(
                    cached,
                    gpu_model=known[name].gpu_model,
                    gpu_memory_gib=cached.gpu_memory_gib or known[name].gpu_memory_gib,
                )
            region_types[name] = entry
            region_sources[name] = block.label
        if block.accelerators:
            accelerators.setdefault(provider, {}).setdefault(region, {}).update(block.accelerators)
    return PriceCatalog(types, accelerators, source, type_sources, load_gpu_models())


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


@lru_cache(maxsize=8)
def _load(path: Path | None, signature: tuple[int, int, int] | None) -> PriceCatalog:
    # Keyed by the file's identity: a refresh (atomic rename) changes inode and mtime, so a
    # long-running daemon sees new prices on its next load without re-parsing every cycle.
    if path is None or signature is None:
        return load_embedded()
    try:
        cache = read_cache(path)
    except (OSError, CatalogError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        log.warning(
            "price_cache_ignored",
            path=str(path),
            error=reason,
            detail="using the embedded price catalog; `guardian prices refresh` rewrites it",
        )
        return load_embedded()
    return merge(cache)


def load_catalog(state_dir: Path | None) -> PriceCatalog:
    """The embedded catalog, overridden by ``<state_dir>/prices-cache.json`` where present."""
    if state_dir is None:
        return _load(None, None)
    path = cache_path(state_dir)
    try:
        signature = _signature(path)
    except OSError as exc:  # e.g. the state dir is not readable by this user
        log.warning(
            "price_cache_ignored",
            path=str(path),
            error=exc.strerror or str(exc),
            detail="using the embedded price catalog",
        )
        return _load(None, None)
    return _load(path, signature)


def regions(catalog: PriceCatalog, provider: str) -> list[str]:
    """Every region with at least one price for ``provider``, sorted."""
    found = set(catalog.types.get(provider, {})) | set(catalog.accelerators.get(provider, {}))
    return sorted(found)


def source_date(source: str | None) -> date | None:
    """The date at the end of a source label (``catalog 2025-06-30``), if it has one."""
    if not source:
        return None
    try:
        return date.fromisoformat(source.rsplit(" ", 1)[-1])
    except ValueError:
        return None
