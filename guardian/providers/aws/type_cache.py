"""The instance-type catalog kept on disk for a day, so a second audit within the day asks EC2
about its instances, not about every instance type again.

``<state_dir>/aws-instance-types.json`` holds, per account and region, the names of the types
offered there and the GPU facts of the GPU ones. ``GpuTypeCatalog`` trusts an entry younger than
a day, and checks it with the one cheap call it makes anyway (DescribeInstanceTypeOfferings): a
type offered that the entry does not know is described and added, so a new GPU family is never
missed. A missing, unreadable or stale file only costs the full listing; a state directory that
cannot be written is said once and the catalog works from memory, as before.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

__all__ = ["CACHE_FILE", "CachedRegion", "TypeCacheFile"]

log = structlog.get_logger(__name__)

CACHE_FILE = "aws-instance-types.json"
_VERSION = 1


@dataclass(frozen=True)
class CachedRegion:
    """What one account saw offered in one region, and the GPU facts of its GPU types."""

    fetched_at: datetime
    offered: frozenset[str]
    gpu: Mapping[str, Mapping[str, Any]]  # type name → GpuType fields


class TypeCacheFile:
    """The JSON file of cached regions; thread-safe, written atomically."""

    def __init__(
        self,
        state_dir: Path,
        *,
        ttl: timedelta = timedelta(days=1),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.path = state_dir / CACHE_FILE
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._warned = False

    def load(self, account: str, region: str) -> CachedRegion | None:
        """The entry for ``account`` and ``region`` if it is younger than a day."""
        with self._lock:
            entry = self._read().get(f"{account}/{region}")
        if not isinstance(entry, dict):
            return None
        try:
            fetched = datetime.fromisoformat(entry["fetched_at"])
            cached = CachedRegion(fetched, frozenset(entry["offered"]), dict(entry["gpu"]))
        except (KeyError, TypeError, ValueError):
            return None  # an entry of another shape: listed again, then rewritten
        if not timedelta(0) <= self._clock() - cached.fetched_at <= self._ttl:
            return None
        return cached

    def save(
        self, account: str, region: str, offered: frozenset[str], gpu: Mapping[str, Any]
    ) -> None:
        """Record one region; other entries are kept, stale ones dropped."""
        entry = {
            "fetched_at": self._clock().isoformat(),
            "offered": sorted(offered),
            "gpu": dict(sorted(gpu.items())),
        }
        with self._lock:
            entries = {
                key: value
                for key, value in self._read().items()
                if key != f"{account}/{region}" and self._fresh(value)
            }
            entries[f"{account}/{region}"] = entry
            try:
                self._write({"version": _VERSION, "entries": entries})
            except OSError as exc:
                if not self._warned:  # once: the catalog works from memory all the same
                    log.warning("aws_type_cache_not_written", path=str(self.path), error=str(exc))
                self._warned = True

    def _fresh(self, entry: Any) -> bool:
        try:
            age = self._clock() - datetime.fromisoformat(entry["fetched_at"])
        except (KeyError, TypeError, ValueError):
            return False
        return timedelta(0) <= age <= self._ttl

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{CACHE_FILE}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, separators=(",", ":"))
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
