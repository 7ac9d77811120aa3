"""Torn writes: after the power cut, one sector of the card partly overwritten, as a card that lost
power while programming it would leave it. The sector is either the last one the guest was writing
("last": QEMU traces the guest's disk writes from the moment the operation starts, and the tear is
in the last request it was given, in flight at the cut or the last before it) or one of a structure
liveng keeps whole by its own means however a sector of it tears: a copy of the boot state
(grubenv, grubenv.bak), the FAT sector that maps it, or the EBR in front of p7. The sector keeps its
new content up to a random byte, then old content (the golden's, before the round), random bytes, or
an erased card's 0xff.

Why the last write and not, as at first, the newest commit block of p7's journal: that block may
have been written, flushed and its fsync returned long before the cut, with the application gone on
(seed 3033260409: an SQLite transaction and a log line acknowledged, then the commit block holding
the log line torn, so the log lost a line the database kept). No card can lose a sector whose flush
it has acknowledged, so no file system can be asked to survive that; a sector of the last write can
tear, and everything written before it stays, as after a cut during that write.
"""

from __future__ import annotations

import contextlib
import random
import re
import subprocess
from pathlib import Path
from typing import Any

from liveng import layout
from liveng.host.disk import read_table
from liveng.host.fatlayout import Volume
from liveng.host.inspect import ext4_superblock
from liveng.host.qmp import Qmp

SECTOR = layout.SECTOR
JBD2_MAGIC = 0xC03B3998
JBD2_COMMIT = 2


def _p1(disk: Path) -> tuple[int, Volume]:
    p1 = read_table(disk).entry(layout.partition(layout.Role.BOOT).number)
    return p1.start, Volume(disk, p1.start, p1.size)


def _first_cluster(vol: Volume, path: str) -> int | None:
    entry = vol.find(path)
    return entry.first if entry and entry.first else None


def grubenv_sector(disk: Path, rng: random.Random) -> tuple[int, str]:
    p1, vol = _p1(disk)
    name = rng.choice((layout.GRUBENV_PATH, layout.GRUBENV_BACKUP_PATH))
    cluster = _first_cluster(vol, name)
    if cluster is None:
        raise RuntimeError(f"{name} is not on p1")
    sector = rng.randrange(2)  # the env block is 1024 bytes: two sectors
    return p1 + vol.g.cluster_offset(cluster) + sector * SECTOR, f"{name} sector {sector} (cluster {cluster})"


def fat_sector(disk: Path, rng: random.Random) -> tuple[int, str]:
    """The sector of the first or second FAT that maps grubenv (rewritten by each atomic replace)."""
    p1, vol = _p1(disk)
    name = rng.choice((layout.GRUBENV_PATH, layout.GRUBENV_BACKUP_PATH, layout.SETTINGS_PATH))
    cluster = _first_cluster(vol, name) or 2
    copy = rng.randrange(vol.g.fats)
    offset = p1 + vol.g.fat_offset(copy) + cluster * 4
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
    superblock = ext4_superblock(disk, p7)
    if superblock is None:
        raise RuntimeError(f"{disk}: no ext4 at byte {p7}")
    block = int(superblock["Block size"])
    spec = f"{disk}?offset={p7}"
    # -c: without the bitmaps, which a cut can leave with checksums the journal has yet to fix.
    stat = subprocess.run(["debugfs", "-c", "-R", "stat <8>", spec], capture_output=True, text=True,
                          check=True).stdout
    blocks: list[int] = []
    for lo, hi, start in re.findall(r"\((\d+)-(\d+)\):(\d+)", stat):
        blocks.extend(range(int(start), int(start) + int(hi) - int(lo) + 1))
    return block, blocks


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


TRACED = ("virtio_blk_handle_write", "virtio_blk_rw_complete")
_WRITE = re.compile(r"virtio_blk_handle_write .*req (0x[0-9a-f]+) sector (\d+) nsectors (\d+)$")
_DONE = re.compile(r"virtio_blk_rw_complete .*req (0x[0-9a-f]+) ret")


def trace_writes(qmp: Path, trace: Path) -> None:
    """From now on QEMU logs each disk write the guest submits and completes to ``trace`` (its
    trace events, switched on through the VM's QMP socket; the log is line-buffered, so a kill
    leaves every whole line)."""
    trace.unlink(missing_ok=True)
    q = Qmp(qmp)
    try:
        q.execute("human-monitor-command", **{"command-line": f"logfile {trace}"})
        for event in TRACED:
            q.execute("trace-event-set-state", name=event, enable=True)
    finally:
        q.close()


def last_write(trace: Path) -> tuple[int, int, bool] | None:
    """(first sector, sectors, in flight) of the request to tear: the last submitted of those still
    in flight at the cut, else the last submitted; None when the guest wrote nothing."""
    submitted: dict[str, tuple[int, int]] = {}
    order: list[str] = []
    done: set[str] = set()
    with contextlib.suppress(FileNotFoundError), open(trace, errors="replace") as f:
        for line in f:
            if m := _WRITE.search(line.strip()):
                req = m.group(1)
                submitted[req] = (int(m.group(2)), int(m.group(3)))
                done.discard(req)  # QEMU reuses a request's memory
                order.append(req)
            elif m := _DONE.search(line):
                done.add(m.group(1))
    if not order:
        return None
    flying = [r for r in order if r not in done]
    req = flying[-1] if flying else order[-1]
    return (*submitted[req], bool(flying))


def last_sector(disk: Path, rng: random.Random, trace: Path) -> tuple[int, str] | None:
    found = last_write(trace)
    if found is None:
        return None
    first, count, flying = found
    k = rng.randrange(count)
    return (first + k) * SECTOR, (f"sector {k} of {count} of the last write ({'in flight' if flying else 'done'} "
                                  f"at the cut, from sector {first})")


FINDERS = {"grubenv": grubenv_sector, "fat": fat_sector, "ebr": ebr_sector}


def tear(disk: Path, before: Path, rng: random.Random, regions: tuple[str, ...], trace: Path) -> dict[str, Any]:
    """Tear one sector of ``disk`` in one of ``regions`` ("last": of the last write in ``trace``);
    ``before``: the disk as it was before the round."""
    region = rng.choice(regions)
    if region == "last":
        found = last_sector(disk, rng, trace)
        if found is None:
            return {"region": region, "what": "nothing: the guest wrote nothing after the operation began",
                    "changed": False}
        offset, what = found
    else:
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
