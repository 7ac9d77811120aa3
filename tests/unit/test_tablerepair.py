"""tablerepair on real partition tables (sfdisk on image files): p7's EBR torn as a card that loses
power in the middle of that sector leaves it (signature gone, or old and new bytes mixed), put
right from p6 and p3; an intact table, and one a resize cut between its two writes, left alone."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from liveng import layout
from liveng.device import tablerepair
from liveng.device.runner import DeviceError
from liveng.host import disk
from liveng.host.runner import output, run

MIB = layout.MiB
S = layout.SECTOR


def image(tmp_path: Path, grown: bool = False) -> tuple[Path, int]:
    """A liveng layout on a 64 MiB file (p7 4 MiB, or grown to the end); returns it and the byte offset
    of p7's EBR."""
    extents, _ = layout.plan(4 * MIB, 8 * MIB, 4 * MIB, 4 * MIB)
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(64 * MIB)
    disk.write_table(path, "12ab34cd", extents)
    p7 = next(e for e in extents if e.number == 7)
    run(["mkfs.ext4", "-q", "-F", "-E", f"offset={p7.start}", str(path), f"{p7.size // 1024}k"])
    p6 = next(e for e in extents if e.number == 6)
    ebr = p6.end  # the EBR sits at the start of the MiB before p7
    with open(path, "rb") as f:
        f.seek(ebr + 510)
        assert f.read(2) == b"\x55\xaa"
    if grown:
        for number, new_end in ((3, 64 * MIB), (7, 64 * MIB)):
            start = next(e for e in extents if e.number == number).start
            tablerepair._sfdisk(["-N", str(number), str(path)], f",{(new_end - start) // S}\n")
    return path, ebr


def entries(path: Path) -> dict[int, tablerepair.Entry]:
    return tablerepair.read_entries(path)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("grown", [False, True])
def test_an_intact_table_is_not_written(tmp_path: Path, grown: bool) -> None:
    path, _ = image(tmp_path, grown)
    before = digest(path)
    assert tablerepair.repair(path) is None
    assert digest(path) == before


def test_a_resize_cut_between_its_two_writes_is_left_to_the_resize(tmp_path: Path) -> None:
    path, _ = image(tmp_path)
    p3 = entries(path)[3]
    tablerepair._sfdisk(["-N", "3", str(path)], f",{64 * MIB // S - p3.start}\n")  # p3 grown, p7 not yet
    before = digest(path)
    assert tablerepair.repair(path) is None
    assert digest(path) == before


@pytest.mark.parametrize("style", ["random", "erased", "mixed-size"])
@pytest.mark.parametrize("grown", [False, True])
def test_a_torn_p7_ebr_is_put_right(tmp_path: Path, style: str, grown: bool) -> None:
    path, ebr = image(tmp_path, grown)
    good = entries(path)
    rng = random.Random(f"{style}{grown}")
    with open(path, "r+b") as f:
        if style == "mixed-size":  # the signature and start as they were, the size's high bytes garbage
            f.seek(ebr + 446 + 14)
            f.write(bytes([0xF3, 0x7A]))
        else:
            keep = rng.randrange(1, 446)  # the entry and the signature lost
            f.seek(ebr + keep)
            f.write(rng.randbytes(S - keep) if style == "random" else b"\xff" * (S - keep))
    assert entries(path).get(7) != good[7]
    what = tablerepair.repair(path)
    assert what is not None and what.startswith("p7's entry in the partition table was "), what
    assert entries(path) == good
    with open(path, "rb") as f:
        f.seek(ebr + 510)
        assert f.read(2) == b"\x55\xaa"
    assert tablerepair.repair(path) is None


def test_not_a_liveng_layout(tmp_path: Path) -> None:
    path = tmp_path / "other.img"
    with open(path, "wb") as f:
        f.truncate(16 * MIB)
    run(["sfdisk", "--no-reread", "--no-tell-kernel", str(path)], input_bytes=b"label: dos\n,8MiB,83\n")
    with pytest.raises(DeviceError, match="not a liveng layout"):
        tablerepair.repair(path)


def test_someones_own_partition_after_p7_is_left_alone(tmp_path: Path) -> None:
    """p7 made smaller and a p8 added in the room: not a liveng layout any more, so neither the
    repair nor the resize (which would grow p7 over it) writes the table."""
    path, _ = image(tmp_path, grown=True)
    p7 = entries(path)[7]
    tablerepair._sfdisk(["-N", "7", str(path)], f",{4 * MIB // S}\n")
    tablerepair._sfdisk(["--append", str(path)], f"{p7.start + 6 * MIB // S},{8 * MIB // S},83\n")
    assert 8 in entries(path)
    before = digest(path)
    with pytest.raises(DeviceError, match="partition 8 lies after p7 in p3: liveng does not manage"):
        tablerepair.repair(path)
    assert digest(path) == before


def test_a_torn_mbr_that_makes_p3_end_before_p7_leaves_p7_alone(tmp_path: Path) -> None:
    """One sector tears at a time: when it is the MBR (p3's size old and new bytes mixed, smaller),
    p7's own entry is intact and must not be cut to p3's end, below its filesystem."""
    path, _ = image(tmp_path, grown=True)
    p3 = entries(path)[3]
    with open(path, "r+b") as f:  # p3's size field (MBR entry 3, bytes 12-15): its high bytes from before
        f.seek(446 + 2 * 16 + 12)
        f.write((4 * MIB // S).to_bytes(4, "little"))
    assert entries(path)[3].size < p3.size
    before = digest(path)
    assert tablerepair.repair(path) is None
    assert digest(path) == before


def test_p7_smaller_than_its_filesystem_is_put_right(tmp_path: Path) -> None:
    path, ebr = image(tmp_path, grown=True)
    good = entries(path)
    with open(path, "r+b") as f:  # p7's size field in its EBR, mixed down to 1 MiB (the ext4 spans 4)
        f.seek(ebr + 446 + 12)
        f.write((MIB // S).to_bytes(4, "little"))
    assert entries(path)[7].size == MIB // S
    assert tablerepair.repair(path) is not None
    assert entries(path) == good


@pytest.mark.parametrize("options", [["-b", "4096"], ["-b", "1024", "-O", "^64bit"], ["-b", "4096", "-O", "64bit"]])
def test_ext4_size_read_from_the_superblock_agrees_with_dumpe2fs(tmp_path: Path, options: list[str]) -> None:
    # On a file of its own, so dumpe2fs needs no FILE?offset=N (which trixie's no longer opens).
    fs = tmp_path / "fs.img"
    with open(fs, "wb") as f:
        f.truncate(24 * MIB)
    run(["mkfs.ext4", "-q", "-F", *options, str(fs), "20M"])
    fields = dict(line.split(":", 1) for line in output(["dumpe2fs", "-h", fs]).splitlines() if ":" in line)
    expected = int(fields["Block count"]) * int(fields["Block size"]) // S
    assert expected == 20 * MIB // S
    placed = tmp_path / "disk.img"  # the same filesystem 3 MiB into a disk, as p7 sits
    with open(placed, "wb") as f:
        f.write(b"\0" * 3 * MIB + fs.read_bytes())
    assert tablerepair.ext4_sectors(placed, 3 * MIB // S) == expected
    assert tablerepair.ext4_sectors(placed, 0) is None  # no superblock there (an encrypted p7 reads so)
