"""`liveng flash` to a disk: once the image is written and read back, the extended partition p3 and
the persistence partition p7 grow to the disk's end in the partition table, from the host.

The MBR is the one sector of a liveng disk that nothing on the disk can put right: the firmware
reads it before anything of liveng runs. On the device, the first boot's resize writes it (p3's
size, resize.py step 1), and a power cut that tears it then leaves a card that boots no more. Here
a cut means only flashing again, and the first boot is left with p7's ext4 to grow (journaled,
online). Cards written by other tools (Raspberry Pi Imager, dd) still grow at their first boot.
"""

from __future__ import annotations

import os
from pathlib import Path

from liveng import layout
from liveng.device import resize
from liveng.device.runner import DeviceError
from liveng.host.disk import read_table
from liveng.host.errors import CommandError, FlashError
from liveng.host.flashio import human
from liveng.host.runner import output, run

SECTOR = layout.SECTOR
EXTENDED = layout.partition(layout.Role.EXTENDED).number
PERSISTENCE = layout.partition(layout.Role.PERSISTENCE).number


def geometry(target: Path) -> resize.Geometry:
    """p3, p7 and the other primary partitions of the liveng disk ``target``, in sectors."""
    with open(target, "rb") as f:
        sectors = f.seek(0, os.SEEK_END) // SECTOR
    table = read_table(target)
    ext, p7 = table.entry(EXTENDED), table.entry(PERSISTENCE)
    return resize.Geometry(disk=sectors, extended_start=ext.start // SECTOR, extended_size=ext.size // SECTOR,
                           persistence_start=p7.start // SECTOR, persistence_size=p7.size // SECTOR,
                           others=tuple((e.number, e.start // SECTOR, e.size // SECTOR) for e in table.entries
                                        if e.number < 5 and e.number != EXTENDED))


def _set_size(target: Path, number: int, size: int) -> None:
    # -N: only this partition's entry is written (the MBR for p3, the EBR in front of p7 for p7).
    run(["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "never", "--wipe-partitions", "never",
         "-N", str(number), str(target)], input_bytes=f",{size}\n".encode())


def grow(target: Path) -> str | None:
    """Grow p3 and p7 of the liveng image just written to the block device ``target`` as far as
    the disk allows (up to 2 TiB, up to a partition someone put after p3); returns what it did,
    None when the disk has no more room than the image."""
    logical = int(output(["blockdev", "--getss", str(target)]).strip())
    if logical != SECTOR:
        return (f"the partition table stays as built: {target} has {logical}-byte sectors, the image's table "
                f"counts {SECTOR}-byte ones")
    try:
        g = geometry(target)
        p = resize.plan(g)
    except DeviceError as exc:
        raise FlashError(f"{target}: {exc}") from None
    if not p.needed:
        return None
    try:
        if p.extended_size is not None:
            _set_size(target, EXTENDED, p.extended_size)
        if p.persistence_size is not None:
            _set_size(target, PERSISTENCE, p.persistence_size)
    except CommandError as exc:
        raise FlashError(f"{target}: growing the partition table failed ({exc.stderr.strip()}); the image was "
                         "written whole: its first boot grows the persistence partition itself") from None
    os.sync()
    after = geometry(target)
    want = p.end - g.persistence_start
    if after.persistence_size != want or after.extended_start + after.extended_size != p.end:
        raise FlashError(f"{target}: the partition table read back does not show the persistence partition "
                         f"grown to {want} sectors (found {after.persistence_size}): flash the image again")
    done = (f"persistence partition grown to {human(want * SECTOR)} in the partition table "
            "(its ext4 grows at the first boot)")
    return "; ".join((done, *p.notes))
