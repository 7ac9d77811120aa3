"""liveng.host.inspect.ext4_superblock: the ext4 inside a disk image at an offset, as `liveng inspect`,
the boot tests and the fault campaign read p7 from the host (debugfs: trixie's dumpe2fs no longer
opens FILE?offset=N)."""

from __future__ import annotations

import os
from pathlib import Path

from liveng.host.inspect import ext4_superblock
from liveng.host.runner import output, run

MIB = 2**20


def test_read_at_an_offset_as_dumpe2fs_reads_the_file_alone(tmp_path: Path) -> None:
    fs = tmp_path / "fs.img"
    with open(fs, "wb") as f:
        f.truncate(20 * MIB)
    run(["mkfs.ext4", "-q", "-F", "-L", "persist-test", str(fs)])
    alone = dict(line.split(":", 1) for line in output(["dumpe2fs", "-h", fs]).splitlines() if ":" in line)
    disk = tmp_path / "disk.img"  # 3 MiB of other data in front, as p7 sits in a card
    with open(disk, "wb") as f:
        f.write(os.urandom(3 * MIB) + fs.read_bytes())
    found = ext4_superblock(disk, 3 * MIB)
    assert found is not None
    for field in ("Block count", "Block size", "Free blocks", "Filesystem UUID", "Filesystem volume name"):
        assert found[field] == alone[field].strip(), field
    assert found["Filesystem volume name"] == "persist-test"


def test_none_where_no_ext4_opens(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(os.urandom(4 * MIB))  # an encrypted p7 reads so
    assert ext4_superblock(disk, MIB) is None
    assert ext4_superblock(tmp_path / "missing.img", 0) is None
