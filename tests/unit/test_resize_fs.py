"""resize.attainable: the size resize2fs really gives an ext4, checked against resize2fs itself on
files (a remnant block group too small for its metadata is left out, and then the resize service
must not grow the ext4 again at every boot)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from liveng import layout
from liveng.device import resize

MiB = layout.MiB


def _ext4(path: Path, mib: int, *options: str) -> dict[str, str]:
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", *options, str(path), f"{mib}M"], check=True)
    return resize.superblock(path)


# The new last group: 1, 2, 5 (superblock copies in 1 and 5), 6, 9 (a copy); 512 or 2048 inode blocks.
@pytest.mark.parametrize("mib", [128, 256, 640, 768, 1152])
@pytest.mark.parametrize("extra_blocks", [256, 560, 600, 640, 700, 2100, 3072])
def test_matches_resize2fs(tmp_path: Path, mib: int, extra_blocks: int) -> None:
    disk = tmp_path / "p7.img"
    before = _ext4(disk, mib, "-b", "4096")
    device_bytes = mib * MiB + extra_blocks * 4096
    with open(disk, "r+b") as f:
        f.truncate(device_bytes)
    subprocess.run(["e2fsck", "-f", "-p", str(disk)], check=True, capture_output=True)
    subprocess.run(["resize2fs", str(disk)], check=True, capture_output=True)
    assert resize.fs_size(disk) == resize.attainable(before, device_bytes)


def test_the_whole_device_when_there_is_room(tmp_path: Path) -> None:
    fields = _ext4(tmp_path / "p7.img", 200)  # as the build makes p7 (mke2fs picks the block size)
    assert resize.attainable(fields, 1000 * MiB) == 1000 * MiB
    assert resize.attainable(fields, 1000 * MiB + 5) == 1000 * MiB  # whole blocks only


def test_backup_groups() -> None:
    sparse = ["has_journal", "sparse_super"]
    assert [g for g in range(60) if resize._has_backup(g, sparse)] == [0, 1, 3, 5, 7, 9, 25, 27, 49]
    assert resize._has_backup(10, ["has_journal"]) and resize._has_backup(10, ["sparse_super", "sparse_super2"])
