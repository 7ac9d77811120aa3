"""Torn writes: after the power cut, one sector of the card partly overwritten, as a card that lost
power while programming it would leave it. Under QEMU the sector being written at the cut is not
known, so the sector is one an operation writes: a copy of the boot state (grubenv, grubenv.bak),
the FAT sector that maps it, the EBR in front of p7, or the last commit block of p7's
journal. The sector keeps its new content up to a random byte, then old content (the golden's, before
the round), random bytes, or an erased card's 0xff."""

from __future__ import annotations

import os
import random
import re
import subprocess
from pathlib import Path
from typing import Any

from liveng import layout
from liveng.host.disk import read_table

SECTOR = layout.SECTOR
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
JBD2_MAGIC = 0xC03B3998
JBD2_COMMIT = 2


def _fat_geometry(disk: Path, p1: int) -> tuple[int, int, int, int, int]:
    """(bytes per sector, sectors per cluster, reserved sectors, FAT count, sectors per FAT) of p1."""
    with open(disk, "rb") as f:
        f.seek(p1)
        bpb = f.read(SECTOR)
    return (int.from_bytes(bpb[11:13], "little"), bpb[13], int.from_bytes(bpb[14:16], "little"), bpb[16],
            int.from_bytes(bpb[36:40], "little"))


def _first_cluster(disk: Path, p1: int, path: str) -> int | None:
    out = subprocess.run(["mshowfat", "-i", f"{disk}@@{p1}", f"::/{path}"], capture_output=True, text=True,
                         env=MTOOLS_ENV).stdout
    m = re.search(r"<(\d+)", out)
    return int(m.group(1)) if m else None


def grubenv_sector(disk: Path, rng: random.Random) -> tuple[int, str]:
    p1 = read_table(disk).entry(1).start
    bps, spc, reserved, fats, fat_size = _fat_geometry(disk, p1)
    name = rng.choice((layout.GRUBENV_PATH, layout.GRUBENV_BACKUP_PATH))
    cluster = _first_cluster(disk, p1, name)
    if cluster is None:
        raise RuntimeError(f"{name} is not on p1")
    data_start = p1 + (reserved + fats * fat_size) * bps
    first = data_start + (cluster - 2) * spc * bps
    sector = rng.randrange(2)  # the env block is 1024 bytes: two sectors
    return first + sector * SECTOR, f"{name} sector {sector} (cluster {cluster})"


def fat_sector(disk: Path, rng: random.Random) -> tuple[int, str]:
    """The sector of the first or second FAT that maps grubenv (rewritten by each atomic replace)."""
    p1 = read_table(disk).entry(1).start
    bps, _, reserved, fats, fat_size = _fat_geometry(disk, p1)
    name = rng.choice((layout.GRUBENV_PATH, layout.GRUBENV_BACKUP_PATH, layout.SETTINGS_PATH))
    cluster = _first_cluster(disk, p1, name) or 2
    copy = rng.randrange(fats)
    offset = p1 + (reserved + copy * fat_size) * bps + cluster * 4
    return offset - offset % SECTOR, f"FAT {copy + 1} sector mapping {name} (cluster {cluster})"


def ebr_sector(disk: Path, rng: random.Random) -> tuple[int, str]:
    """The EBR in front of p7, the one a resize writes (sfdisk -N 7 writes that sector alone).

    Not the MBR, the resize's other write: the firmware reads it before anything on the disk runs,
    so no system on an MBR disk can come back from a torn one, and `liveng flash` grows the table on
    the host so that the device never writes it (a card written by another tool writes it once, at
    its first boot: README, Resize). The issue's faults name the EBRs."""
    table = read_table(disk)
    ext = table.entry(3).start
    chain = [0, ext]
    with open(disk, "rb") as f:
        here = ext
        for _ in range(8):
            f.seek(here + 446 + 16)
            link = f.read(16)
            rel = int.from_bytes(link[8:12], "little")
            if link[4] == 0 or rel == 0:
                break
            here = ext + rel * SECTOR
            chain.append(here)
    rng.choice((0, 1))  # drawn as when the MBR was a choice, so that earlier seeds replay the same
    return chain[-1], f"the EBR at {chain[-1]}"


def _journal_blocks(disk: Path, p7: int) -> tuple[int, list[int]]:
    """p7's block size and the disk block of each journal block, in journal order."""
    spec = f"{disk}?offset={p7}"
    header = subprocess.run(["dumpe2fs", "-h", spec], capture_output=True, text=True, check=True).stdout
    block = int(re.search(r"Block size:\s+(\d+)", header).group(1))  # type: ignore[union-attr]
    # -c: without the bitmaps, which a cut can leave with checksums the journal has yet to fix.
    stat = subprocess.run(["debugfs", "-c", "-R", "stat <8>", spec], capture_output=True, text=True,
                          check=True).stdout
    blocks: list[int] = []
    for lo, hi, start in re.findall(r"\((\d+)-(\d+)\):(\d+)", stat):
        blocks.extend(range(int(start), int(start) + int(hi) - int(lo) + 1))
    return block, blocks


def journal_sector(disk: Path, rng: random.Random) -> tuple[int, str]:
    """A sector of the newest commit block in p7's journal (the last thing a transaction writes)."""
    return newest_commit(disk, read_table(disk).entry(7).start)


def newest_commit(disk: Path, p7: int) -> tuple[int, str]:
    """The first sector of the newest commit block of the ext4 at byte ``p7`` of ``disk``."""
    block, blocks = _journal_blocks(disk, p7)
    best: tuple[int, int] | None = None  # (sequence, journal block)
    with open(disk, "rb") as f:
        for i, b in enumerate(blocks[1:], start=1):
            f.seek(p7 + b * block)
            head = f.read(12)
            if int.from_bytes(head[0:4], "big") == JBD2_MAGIC and int.from_bytes(head[4:8], "big") == JBD2_COMMIT:
                seq = int.from_bytes(head[8:12], "big")
                if best is None or seq > best[0]:
                    best = (seq, i)
    if not blocks:
        raise RuntimeError(f"{disk}: no journal extents in debugfs's answer")
    if best is None:
        return p7 + blocks[0] * block, "the journal superblock (no commit block in the journal)"
    # Its first sector: the header and the checksum that decide whether the transaction is replayed.
    return p7 + blocks[best[1]] * block, f"the commit block of transaction {best[0]} (journal block {best[1]})"


FINDERS = {"grubenv": grubenv_sector, "fat": fat_sector, "ebr": ebr_sector, "journal": journal_sector}


def tear(disk: Path, before: Path, rng: random.Random, regions: tuple[str, ...]) -> dict[str, Any]:
    """Tear one sector of ``disk`` in one of ``regions``; ``before``: the disk as it was before the round."""
    region = rng.choice(regions)
    offset, what = FINDERS[region](disk, rng)
    style = rng.choice(("old", "random", "erased"))
    keep = rng.randrange(1, SECTOR)  # bytes of the new content that made it
    with open(disk, "r+b") as f:
        f.seek(offset)
        new = f.read(SECTOR)
        if style == "old":
            with open(before, "rb") as b:
                b.seek(offset)
                tail = b.read(SECTOR).ljust(SECTOR, b"\0")[keep:]
        else:
            tail = rng.randbytes(SECTOR - keep) if style == "random" else b"\xff" * (SECTOR - keep)
        torn = new[:keep] + tail
        f.seek(offset)
        f.write(torn)
    return {"region": region, "what": what, "offset": offset, "style": style, "kept_bytes": keep,
            "changed": torn != new}
