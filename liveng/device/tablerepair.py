"""p7's entry in the partition table, checked and put right before anything else of a resize.

A resize writes two sectors once in a card's life: the MBR (p3's size), then the EBR in front of p7
(p7's size). A power cut that tears the EBR leaves an entry the kernel ignores (its signature gone)
or one with a wrong size, and the boot goes on without the delta. p7's place is known: it starts
one ALIGN after p6 ends (layout.plan) and ends where p3 ends (the build and the resize give both the
same end), so the entry is written again from those, with sfdisk, for p7 alone; p7's data is not
touched. A torn MBR is beyond this: the firmware reads it before anything of liveng runs.
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
    if end - start < ALIGN_SECTORS:
        raise DeviceError(f"p{EXTENDED} ends at sector {end}, before p{PERSISTENCE} could start ({start}): "
                          "the partition table is not a liveng layout")
    return Entry(start, end - start)


def repair(disk: Path) -> str | None:
    """Write p7's entry again when it is missing, starts elsewhere or ends after p3, and drop entries
    a torn EBR made up after it; returns what was wrong (None: nothing was)."""
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
    if have and have.start == want.start and have.size <= want.size and not extra:
        return None  # in place (smaller: a resize cut between its two writes, which it finishes itself)
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


def _sfdisk(args: list[str], script: str | None = None) -> None:
    # The disk is in use: nothing is reread here; the caller reboots when p7 was not usable.
    run(["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "never", "--wipe-partitions", "never", *args],
        script)
