"""The agent's local-disk probe against fake /sys/block + /proc/mounts trees: which devices are
instance store or local SSD, what is mounted on them (directly, through md RAID or LVM), and how
much is in use beyond an empty filesystem."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardian.agent.local_disks import LocalDisks
from tests.fakes.local_disks import EBS_MODEL, FakeBlockTree, Usage

GIB = 1024.0


@pytest.fixture
def tree(tmp_path: Path) -> FakeBlockTree:
    tree = FakeBlockTree(tmp_path / "machine")
    tree.disk("nvme0n1", model=EBS_MODEL, partitions=1)  # the EBS root volume
    tree.mount("/dev/nvme0n1p1", "/", "xfs", Usage(100 * GIB, 30 * GIB, used_inodes=90_000))
    return tree


def test_an_unmounted_instance_store_device_counts_as_unused(tree: FakeBlockTree) -> None:
    tree.disk("nvme1n1")  # a g5.xlarge's 250 GB, as the AMI leaves it: not formatted, not mounted
    assert tree.probe().read() == LocalDisks(("nvme1n1",), (), 0.0)


def test_no_local_disk_is_none_not_zero(tree: FakeBlockTree) -> None:
    assert tree.probe().read() is None  # the EBS root is not instance store


def test_md_raid0_over_two_nvme_instance_stores(tree: FakeBlockTree) -> None:
    tree.disk("nvme1n1")
    tree.disk("nvme2n1")
    tree.disk("nvme3n1")  # a third one, left unmounted
    tree.raid("md127", ["nvme1n1", "nvme2n1"])
    (tree.root / "dev" / "md").mkdir()
    (tree.root / "dev" / "md" / "scratch").symlink_to("../md127")
    # A fresh XFS: 7 GiB of its own metadata already "used", 3 inodes (root, rt bitmap, summary).
    scratch = Usage(3800 * GIB, 7 * GIB, used_inodes=3)
    tree.mount("/dev/md/scratch", "/scratch", "xfs", scratch)
    tree.mount("/dev/md/scratch", "/home/me/scratch", "xfs", scratch)  # a bind mount
    probe = tree.probe()

    empty = probe.read()
    assert empty == LocalDisks(("nvme1n1", "nvme2n1", "nvme3n1"), ("/scratch",), 0.0)
    # A dataset lands: 40 GiB beyond the empty filesystem the probe saw.
    tree.usage["/scratch"] = tree.usage["/home/me/scratch"] = Usage(
        3800 * GIB, 47 * GIB, used_inodes=412
    )
    filled = probe.read()
    assert filled is not None
    assert filled.used_mib == pytest.approx(40 * GIB)
    # A probe that never saw it empty cannot tell metadata from data: all 47 GiB count.
    fresh_probe = tree.probe().read()
    assert fresh_probe is not None
    assert fresh_probe.used_mib == pytest.approx(47 * GIB)


def test_an_empty_directory_on_ext4_is_not_data_but_is_not_empty_either(
    tree: FakeBlockTree,
) -> None:
    tree.disk("nvme1n1")
    tree.mount("/dev/nvme1n1", "/mnt/cache", "ext4", Usage(250 * GIB, 0.06 * GIB, used_inodes=11))
    probe = tree.probe()
    assert (probe.read() or LocalDisks((), (), None)).used_mib == 0.0  # lost+found only
    tree.usage["/mnt/cache"] = Usage(250 * GIB, 0.06 * GIB, used_inodes=12)  # mkdir cache
    reading = probe.read()
    assert reading is not None
    assert reading.used_mib == pytest.approx(0.0, abs=0.01)  # beyond the empty state seen


def test_lvm_over_a_partition_of_an_instance_store_disk(tree: FakeBlockTree) -> None:
    tree.disk("nvme1n1", partitions=1)
    tree.lvm("dm-0", "vg0-scratch", ["nvme1n1p1"])
    tree.lvm("dm-1", "vg1-ebs", ["nvme0n1p1"])  # LVM on EBS: not local
    tree.mount("/dev/mapper/vg1-ebs", "/data", "ext4", Usage(500 * GIB, 300 * GIB, 1000, 500))
    tree.mount("/dev/mapper/vg0-scratch", "/scratch", "ext4", Usage(250 * GIB, 2 * GIB, 1000, 40))
    reading = tree.probe().read()
    assert reading is not None
    assert reading.mounts == ("/scratch",)
    assert reading.used_mib == pytest.approx(2 * GIB)


def test_gcp_local_nvme_ssd_is_found_by_its_by_id_link(tree: FakeBlockTree) -> None:
    tree.gcp_local_ssd("nvme0n2", 0)
    tree.gcp_local_ssd("nvme0n3", 1)
    tree.disk("nvme0n4", model="nvme_card-pd")  # a persistent disk on the same controller
    tree.mount("/dev/nvme0n2", "/mnt/disks/ssd0", "ext4", Usage(375 * GIB, 12 * GIB, 10_000, 90))
    reading = tree.probe().read()
    assert reading is not None
    assert reading.devices == ("nvme0n2", "nvme0n3")
    assert reading.used_mib == pytest.approx(12 * GIB)


def test_a_mount_that_cannot_be_measured_makes_the_reading_unknown(tree: FakeBlockTree) -> None:
    tree.disk("nvme1n1")
    tree.mount("/dev/nvme1n1", "/mnt/private space", "ext4", Usage(250 * GIB, 1 * GIB))
    del tree.usage["/mnt/private space"]  # statvfs refused (the octal-escaped space is read)
    reading = tree.probe().read()
    assert reading is not None
    assert reading.mounts == ("/mnt/private space",)
    assert reading.used_mib is None
