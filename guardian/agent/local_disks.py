"""Instance store / local SSD on this machine: which devices, what is mounted on them, and how
much is in use beyond empty filesystems — what a stop would wipe.

Read from sysfs and ``/proc/mounts`` only (no root, no device reads), under an injectable
``root`` so tests build a fake tree:

- **Devices.** AWS instance store: ``/sys/block/<dev>/device/model`` is "Amazon EC2 NVMe
  Instance Storage". GCP local SSD: ``/dev/disk/by-id/google-local-nvme-ssd-N`` (NVMe) or
  ``google-local-ssd-N`` (SCSI) links to the device.
- **Stacking.** A filesystem counts as local when its device is a local disk, a partition of
  one, or an md RAID / device-mapper (LVM, dm-crypt) device with a local disk somewhere below
  it (``/sys/block/<md|dm>/slaves``, followed down).
- **"Used beyond an empty filesystem".** A fresh filesystem already shows space as used — its
  journal and metadata: tens of MB on ext4, 0.1–2 % of the size on XFS, depending on its
  features — so ``df`` cannot say whether anything was written. Files can: a filesystem whose
  used inodes are no more than a fresh one of its type has (ext2/3/4: 11, XFS: 3) holds no file
  and no directory, so it counts 0. Otherwise its used bytes count, minus the used bytes seen
  when the agent last found that same filesystem empty (the fresh overhead, exactly), or minus
  nothing when it never saw it empty — which errs towards "in use", the safe side.
- A device that is not mounted counts 0: nothing on the machine can be using it, and a
  stopped instance comes back with empty local disks anyway. A mounted local filesystem that
  cannot be measured makes the whole reading unknown (``used_mib`` None), never 0.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

__all__ = ["AWS_INSTANCE_STORE_MODEL", "FRESH_INODES", "LocalDiskProbe", "LocalDisks"]

log = structlog.get_logger(__name__)

AWS_INSTANCE_STORE_MODEL = "Amazon EC2 NVMe Instance Storage"
_GCP_LOCAL_SSD = ("google-local-nvme-ssd-", "google-local-ssd-")
# Used inodes of a freshly made filesystem: ext* reserve inodes 1-10 and make lost+found (11);
# XFS has the root directory and the realtime bitmap and summary inodes.
FRESH_INODES = {"ext2": 11, "ext3": 11, "ext4": 11, "xfs": 3}
_MIB = 1024 * 1024
_MAX_LINKS = 16

StatVfs = Callable[[str], os.statvfs_result]


@dataclass(frozen=True)
class LocalDisks:
    """One reading: the local devices, the mount points on them, MiB in use (None = unknown)."""

    devices: tuple[str, ...]
    mounts: tuple[str, ...]
    used_mib: float | None


@dataclass(frozen=True)
class _Mount:
    device: str  # block device name: nvme1n1, nvme1n1p1, md127, dm-0
    point: str
    fstype: str


def _unescape(field: str) -> str:
    """``/proc/mounts`` writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


class LocalDiskProbe:
    """Reads the local disks of this machine; remembers each filesystem's empty-state usage."""

    def __init__(self, root: Path = Path("/"), statvfs: StatVfs = os.statvfs) -> None:
        self.root = root
        self.statvfs = statvfs
        self._block = root / "sys" / "block"
        self._empty_used: dict[tuple[str, str, int], int] = {}  # (device, fstype, size) → bytes

    # -- which devices ---------------------------------------------------------------------------
    def _read(self, path: Path) -> str | None:
        try:
            return path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return None

    def _disks(self) -> list[str]:
        try:
            return sorted(entry.name for entry in self._block.iterdir())
        except OSError:
            return []

    def local_devices(self) -> set[str]:
        """Names of the instance-store / local-SSD disks."""
        found = {
            name
            for name in self._disks()
            if self._read(self._block / name / "device" / "model") == AWS_INSTANCE_STORE_MODEL
        }
        by_id = self.root / "dev" / "disk" / "by-id"
        try:
            links = sorted(by_id.iterdir())
        except OSError:
            links = []
        for link in links:
            if link.name.startswith(_GCP_LOCAL_SSD) and "-part" not in link.name:
                target = self._resolve(link)
                if target is not None:
                    found.add(target.name)
        return found

    def _resolve(self, path: Path) -> Path | None:
        """Follow links inside ``root`` (an absolute target is taken relative to it); only the
        final name matters (the device node itself need not be visible, as in a container)."""
        for _ in range(_MAX_LINKS):
            try:
                target = os.readlink(path)
            except OSError:
                return path
            path = (
                self.root / target.lstrip("/")
                if os.path.isabs(target)
                else Path(os.path.normpath(path.parent / target))
            )
        return None

    def _parents(self) -> dict[str, str]:
        """partition name → its disk (``nvme1n1p1`` → ``nvme1n1``)."""
        parents: dict[str, str] = {}
        for disk in self._disks():
            try:
                children = list((self._block / disk).iterdir())
            except OSError:
                continue
            for child in children:
                if (child / "partition").exists():
                    parents[child.name] = disk
        return parents

    def _slaves(self, name: str) -> list[str]:
        try:
            return sorted(entry.name for entry in (self._block / name / "slaves").iterdir())
        except OSError:
            return []

    def _on_local(self, name: str, local: set[str], parents: dict[str, str]) -> bool:
        """Whether ``name`` is, or sits on (partition, md, device-mapper), a local disk."""
        seen: set[str] = set()
        todo = [name]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            if current in local:
                return True
            if current in parents:
                todo.append(parents[current])
            todo.extend(self._slaves(current))
        return False

    # -- what is mounted ---------------------------------------------------------------------------
    def _device_name(self, source: str, mapper: dict[str, str]) -> str | None:
        if not source.startswith("/dev/"):
            return None
        if source.startswith("/dev/mapper/"):
            return mapper.get(source.removeprefix("/dev/mapper/"))
        resolved = self._resolve(self.root / source.lstrip("/"))
        return resolved.name if resolved is not None else Path(source).name

    def _mounts(self) -> list[_Mount]:
        text = self._read(self.root / "proc" / "mounts") or ""
        mapper = {
            dm_name: name
            for name in self._disks()
            if name.startswith("dm-")
            and (dm_name := self._read(self._block / name / "dm" / "name"))
        }
        mounts = []
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 3:
                continue
            device = self._device_name(_unescape(fields[0]), mapper)
            if device is not None:
                mounts.append(_Mount(device, _unescape(fields[1]), fields[2]))
        return mounts

    # -- how much is in use --------------------------------------------------------------------
    def _used_bytes(self, mount: _Mount) -> int:
        """Bytes in use beyond the empty filesystem (see the module's docstring)."""
        stat = self.statvfs(mount.point)
        used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
        key = (mount.device, mount.fstype, stat.f_blocks * stat.f_frsize)
        fresh = FRESH_INODES.get(mount.fstype)
        if fresh is not None and stat.f_files > 0 and stat.f_files - stat.f_ffree <= fresh:
            self._empty_used[key] = used  # nothing in it: this is the filesystem's own overhead
            return 0
        return max(0, used - self._empty_used.get(key, 0))

    def read(self) -> LocalDisks | None:
        """This machine's local disks now; None when it has none (or none are recognised)."""
        local = self.local_devices()
        if not local:
            return None
        parents = self._parents()
        on_local = _dedupe(m for m in self._mounts() if self._on_local(m.device, local, parents))
        total = 0
        for mount in on_local:
            try:
                total += self._used_bytes(mount)
            except OSError as exc:
                log.warning("local_disk_unreadable", mount=mount.point, error=str(exc))
                return LocalDisks(tuple(sorted(local)), _points(on_local), None)
        return LocalDisks(tuple(sorted(local)), _points(on_local), total / _MIB)


def _dedupe(mounts: Iterable[_Mount]) -> list[_Mount]:
    """One mount per filesystem: bind mounts list the same device again."""
    seen: dict[str, _Mount] = {}
    for mount in mounts:
        seen.setdefault(mount.device, mount)
    return list(seen.values())


def _points(mounts: Iterable[_Mount]) -> tuple[str, ...]:
    return tuple(sorted(m.point for m in mounts))
