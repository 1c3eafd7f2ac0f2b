"""A fake machine's block devices for the local-disk probe: ``/sys/block``, ``/proc/mounts``,
``/dev`` links, and what ``statvfs`` says of each mount point.

Built as real files and symlinks under a temporary root, laid out as the kernel lays them out
(``slaves/`` entries are links, a partition is a directory with a ``partition`` file), so the
real ``guardian.agent.local_disks.LocalDiskProbe`` reads it exactly as it reads a machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from guardian.agent.local_disks import AWS_INSTANCE_STORE_MODEL, LocalDiskProbe

__all__ = ["EBS_MODEL", "FakeBlockTree", "Usage"]

EBS_MODEL = "Amazon Elastic Block Store"


@dataclass
class Usage:
    """One filesystem as statvfs reports it (4 KiB blocks)."""

    size_mib: float
    used_mib: float
    files: int = 1_000_000
    used_inodes: int = 11

    def statvfs(self) -> os.statvfs_result:
        block = 4096
        blocks = int(self.size_mib * 1024 * 1024 // block)
        free = blocks - int(self.used_mib * 1024 * 1024 // block)
        inodes_free = self.files - self.used_inodes
        return os.statvfs_result(
            (block, block, blocks, free, free, self.files, inodes_free, inodes_free, 0, 255)
        )


@dataclass
class FakeBlockTree:
    root: Path
    usage: dict[str, Usage] = field(default_factory=dict)  # mount point → statvfs answer
    mounts: list[tuple[str, str, str]] = field(default_factory=list)  # (source, point, fstype)

    def __post_init__(self) -> None:
        (self.root / "sys" / "block").mkdir(parents=True, exist_ok=True)
        (self.root / "dev" / "disk" / "by-id").mkdir(parents=True, exist_ok=True)
        (self.root / "proc").mkdir(parents=True, exist_ok=True)
        self._write_mounts()

    def _block(self, name: str) -> Path:
        return self.root / "sys" / "block" / name

    def disk(self, name: str, model: str = AWS_INSTANCE_STORE_MODEL, partitions: int = 0) -> None:
        device = self._block(name) / "device"
        device.mkdir(parents=True, exist_ok=True)
        (device / "model").write_text(f"{model:<40}\n")  # the kernel pads the model field
        for number in range(1, partitions + 1):
            part = self._block(name) / f"{name}p{number}"
            part.mkdir()
            (part / "partition").write_text(f"{number}\n")

    def raid(self, name: str, members: list[str]) -> None:
        """An md array (or, named ``dm-N``, a device-mapper device) over ``members``."""
        slaves = self._block(name) / "slaves"
        slaves.mkdir(parents=True, exist_ok=True)
        for member in members:
            (slaves / member).symlink_to(f"../../{member}")

    def lvm(self, dm: str, mapper_name: str, members: list[str]) -> None:
        self.raid(dm, members)
        (self._block(dm) / "dm").mkdir()
        (self._block(dm) / "dm" / "name").write_text(f"{mapper_name}\n")

    def gcp_local_ssd(self, name: str, number: int) -> None:
        """A GCP local NVMe SSD: a plain NVMe disk named by its /dev/disk/by-id link."""
        self.disk(name, model="nvme_card")
        link = self.root / "dev" / "disk" / "by-id" / f"google-local-nvme-ssd-{number}"
        link.symlink_to(f"../../{name}")

    def mount(self, source: str, point: str, fstype: str, usage: Usage) -> None:
        self.mounts.append((source, point, fstype))
        self.usage[point] = usage
        self._write_mounts()

    def _write_mounts(self) -> None:
        lines = [f"{s.replace(' ', chr(92) + '040')} {p.replace(' ', chr(92) + '040')} {t} rw 0 0"
                 for s, p, t in [("proc", "/proc", "proc"), *self.mounts]]  # fmt: skip
        (self.root / "proc" / "mounts").write_text("\n".join(lines) + "\n")

    def statvfs(self, point: str) -> os.statvfs_result:
        if point not in self.usage:
            raise PermissionError(13, "Permission denied", point)
        return self.usage[point].statvfs()

    def probe(self) -> LocalDiskProbe:
        return LocalDiskProbe(self.root, statvfs=self.statvfs)
