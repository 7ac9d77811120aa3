"""p7's entry in the partition table, checked and put right before anything else of a resize.

A resize writes two sectors once in a card's life: the MBR (p3's size), then the EBR in front of p7
(p7's size). A power cut that tears the EBR leaves an entry the kernel ignores (its signature gone)
or one with a wrong size, and the boot goes on without the delta. p7's place is known: it starts
one ALIGN after p6 ends (layout.plan) and ends where p3 ends (the build and the resize give both the
same end). An entry that starts there, fits the disk and holds p7's ext4 is left as it is (one
sector tears at a time: when it was the MBR's, p7 may end after a p3 now too small, which the resize
grows again); any other is written again from p6 and p3, with sfdisk, for p7 alone, never smaller
than the ext4; p7's data is not touched. A torn MBR beyond p3's size is beyond this: the firmware
reads the MBR before anything of liveng runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from liveng import layout, sfdisk
from liveng.device.runner import DeviceError, run

ALIGN_SECTORS = layout.ALIGN // layout.SECTOR
EXTENDED = layout.partition(layout.Role.EXTENDED).number
PERSISTENCE = layout.partition(layout.Role.PERSISTENCE).number
BEFORE = layout.partition(layout.Role.SLOT_B).number  # the logical partition in front of p7


@dataclass(frozen=True)
class Entry:
    """In 512-byte sectors, as in the table."""

    start: int
    size: int


def read_entries(disk: Path) -> dict[int, Entry]:
    """Every partition sfdisk reads on ``disk`` (a block device or an image file), by number."""
    try:
        table, _warnings = sfdisk.partition_table(run(["sfdisk", "-J", str(disk)]))
    except ValueError as exc:
        raise DeviceError(f"{disk}: cannot read its partition table: {exc}") from None
    entries = {}
    for p in table.get("partitions", []):
        digits = str(p["node"])[len(str(p["node"]).rstrip("0123456789")):]
        entries[int(digits)] = Entry(int(p["start"]), int(p["size"]))
    return entries


def expected(entries: dict[int, Entry]) -> Entry:
    """Where p7 must be, from p6 and p3 (neither of which a resize writes in the same sector as p7)."""
    if EXTENDED not in entries or BEFORE not in entries:
        raise DeviceError(f"the partition table has no p{EXTENDED} and p{BEFORE}: not a liveng layout")
    start = entries[BEFORE].start + entries[BEFORE].size + ALIGN_SECTORS
    end = entries[EXTENDED].start + entries[EXTENDED].size
    return Entry(start, max(0, end - start))  # 0: p3 ends before (its entry, in the MBR, torn)


def repair(disk: Path) -> str | None:
    """Write p7's entry again when it is missing, starts elsewhere, ends after the disk or before
    its ext4 does, and drop entries a torn EBR made up after it; returns what was wrong (None:
    nothing was)."""
    entries = read_entries(disk)
    want = expected(entries)
    extra = sorted(n for n in entries if n > PERSISTENCE)
    # A logical partition inside p3 after p7's start is someone's own: neither this nor the resize
    # (which would grow p7 over it) may touch the table. Anything else there a torn EBR made up.
    own = [n for n in extra if want.start < entries[n].start and entries[n].start + entries[n].size <= want.start
           + want.size]
    if own:
        raise DeviceError(f"partition {own[0]} lies after p{PERSISTENCE} in p{EXTENDED}: liveng does not manage "
                          f"such a layout and leaves the partition table as it is (p{PERSISTENCE} cannot grow)")
    have = entries.get(PERSISTENCE)
    fs = ext4_sectors(disk, want.start)
    if have and not extra and _plausible(have, want, fs, _sectors(disk)):
        return None
    if want.size < max(fs or 0, ALIGN_SECTORS):
        raise DeviceError(f"p{PERSISTENCE}'s entry is damaged and p{EXTENDED} ends before p{PERSISTENCE}'s "
                          f"filesystem could ({want.size} sectors from sector {want.start}): the partition "
                          "table is left as it is")
    found = f"start {have.start}, {have.size} sectors" if have else "missing"
    mbr_type = layout.partition(layout.Role.PERSISTENCE).mbr_type
    for number in reversed(extra):
        _sfdisk(["--delete", str(disk), str(number)])
    _sfdisk(["-N", str(PERSISTENCE), str(disk)], f"{want.start},{want.size},{mbr_type:x}\n")
    if read_entries(disk).get(PERSISTENCE) != want:
        raise DeviceError(f"{disk}: p{PERSISTENCE}'s entry was rewritten but does not read back as "
                          f"start {want.start}, {want.size} sectors")
    return (f"p{PERSISTENCE}'s entry in the partition table was {found}, not start {want.start}, "
            f"{want.size} sectors" + (f", and partitions {extra} followed it" if extra else ""))


def _plausible(have: Entry, want: Entry, fs: int | None, disk_sectors: int) -> bool:
    """Whether p7's entry can be the one the build or a resize wrote: one sector tears at a time, so
    when p3's entry (in the MBR) is the torn one, p7 may end after p3 (the resize then grows p3)."""
    if have.start != want.start or have.start + have.size > disk_sectors:
        return False
    if fs is None:  # no ext4 at p7's start (encrypted): p3's end is all there is to go by
        return have.size <= want.size
    return have.size >= fs  # smaller than want: a resize cut between its two writes, which it finishes


# The ext4 superblock (1024 bytes into the filesystem) and the fields read here, as
# Documentation/filesystems/ext4/super.rst lays them out.
SUPERBLOCK_OFFSET = 1024
EXT4_MAGIC = 0xEF53
INCOMPAT_64BIT = 0x80


def ext4_sectors(disk: Path, start: int) -> int | None:
    """The sectors the ext4 at sector ``start`` of ``disk`` spans, from its superblock read through
    the whole disk (the kernel need not see p7); None without an ext4 there (an encrypted p7).

    Not dumpe2fs: trixie's e2fsprogs (1.47.2) no longer opens ``DISK?offset=N`` ("Unable to
    resolve"), which made every p7 look encrypted here (campaign seed 490259521)."""
    try:
        with open(disk, "rb") as f:
            f.seek(start * layout.SECTOR + SUPERBLOCK_OFFSET)
            sb = f.read(1024)
    except OSError as exc:
        raise DeviceError(f"{disk}: cannot read p{PERSISTENCE}'s superblock: {exc.strerror}") from None
    if len(sb) < 0x154 or int.from_bytes(sb[0x38:0x3A], "little") != EXT4_MAGIC:
        return None
    blocks = int.from_bytes(sb[0x04:0x08], "little")
    if int.from_bytes(sb[0x60:0x64], "little") & INCOMPAT_64BIT:
        blocks |= int.from_bytes(sb[0x150:0x154], "little") << 32
    log_block = int.from_bytes(sb[0x18:0x1C], "little")
    if log_block > 6:  # block sizes are 1 KiB to 64 KiB: anything else is not a superblock
        return None
    return blocks * (1024 << log_block) // layout.SECTOR


def _sectors(disk: Path) -> int:
    with open(disk, "rb") as f:
        return f.seek(0, 2) // layout.SECTOR


def _sfdisk(args: list[str], script: str | None = None) -> None:
    # The disk is in use: nothing is reread here; the caller reboots when p7 was not usable.
    run(["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "never", "--wipe-partitions", "never", *args],
        script)
