"""liveng resize: the persistence partition (p7) grows to the end of the disk.

The image is made small; the card it is written to is usually bigger. Three steps, each safe to
cut at any moment and each skipped when already done, so running again finishes the job:

1. the extended partition p3 grows to the end of the disk (its entry in the MBR: one sector);
2. p7 grows to the end of p3 (its entry in the EBR in front of it: one sector), and the kernel is
   told the new size (BLKPG, via partx);
3. the ext4 on p7 grows, online (ext4's own journaled resize).

liveng-resize.service runs it at every boot (a no-op once done); `liveng resize` by hand.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from liveng import layout
from liveng.device import bootstate, system, tablerepair
from liveng.device.runner import DeviceError, run

ALIGN_SECTORS = layout.ALIGN // layout.SECTOR
# Less than this to gain is not worth a partition-table write.
MIN_GAIN_SECTORS = ALIGN_SECTORS


@dataclass(frozen=True)
class Geometry:
    """In 512-byte sectors, as in the partition table."""

    disk: int
    extended_start: int
    extended_size: int
    persistence_start: int
    persistence_size: int
    # Primary partitions other than p3, as (number, start, size): one after p3 (a p4 someone added)
    # is where p3 must stop growing.
    others: tuple[tuple[int, int, int], ...] = ()


@dataclass(frozen=True)
class Plan:
    end: int  # where p3 and p7 should end (exclusive), aligned down to ALIGN
    extended_size: int | None  # new size, or None when nothing to do
    persistence_size: int | None
    notes: tuple[str, ...] = ()  # why p7 grows less than the disk allows (2 TiB, a partition after p3)

    @property
    def needed(self) -> bool:
        return self.extended_size is not None or self.persistence_size is not None


def plan(g: Geometry) -> Plan:
    end = g.disk // ALIGN_SECTORS * ALIGN_SECTORS
    notes = []
    if end > layout.MBR_MAX_SECTORS:
        end = layout.MBR_MAX_SECTORS // ALIGN_SECTORS * ALIGN_SECTORS
        notes.append(f"the disk is larger than 2 TiB: an MBR partition table cannot address more, the "
                     f"{(g.disk - end) * layout.SECTOR // 2**30} GiB beyond stay unused")
    if g.extended_start + g.extended_size > g.disk or g.persistence_start + g.persistence_size > g.disk:
        raise DeviceError(f"the partition table reaches past the end of the disk ({g.disk} sectors): the image "
                          "was written to a smaller disk than it was made for")
    if not g.extended_start < g.persistence_start < g.extended_start + g.extended_size:
        raise DeviceError("p7 does not lie inside the extended partition p3: not a liveng layout")
    ext_end = g.extended_start + g.extended_size
    after = sorted((start, number) for number, start, _ in g.others if start >= ext_end)
    if after and after[0][0] < end:
        end = max(after[0][0] // ALIGN_SECTORS * ALIGN_SECTORS, ext_end)
        notes.append(f"partition {after[0][1]} lies after the extended partition p3 (from sector {after[0][0]}): "
                     "the persistence partition grows only up to it; remove that partition to use the rest")
    p7_end = g.persistence_start + g.persistence_size
    new_ext = end - g.extended_start if end - ext_end >= MIN_GAIN_SECTORS else None
    target_ext_end = end if new_ext is not None else ext_end
    new_p7 = target_ext_end - g.persistence_start if target_ext_end - p7_end >= MIN_GAIN_SECTORS else None
    return Plan(end=end, extended_size=new_ext, persistence_size=new_p7, notes=tuple(notes))


def _sys_block(dev: Path) -> Path:
    return Path("/sys/class/block") / dev.resolve().name


def disk_of(part: Path) -> Path:
    """/dev/vda for /dev/vda7 (the partition's parent in sysfs)."""
    return Path("/dev") / _sys_block(part).resolve().parent.name


def read_geometry(disk: Path) -> Geometry:
    if int((Path("/sys/block") / disk.name / "queue/logical_block_size").read_text()) != layout.SECTOR:
        raise DeviceError(f"{disk} does not have 512-byte sectors: liveng resize cannot handle it")
    parts = {n: (e.start, e.size) for n, e in tablerepair.read_entries(disk).items()}
    ext, p7 = layout.partition(layout.Role.EXTENDED).number, layout.partition(layout.Role.PERSISTENCE).number
    if ext not in parts or p7 not in parts:
        raise DeviceError(f"{disk} has no partitions {ext} and {p7}: not a liveng layout")
    return Geometry(disk=int((Path("/sys/block") / disk.name / "size").read_text()),
                    extended_start=parts[ext][0], extended_size=parts[ext][1],
                    persistence_start=parts[p7][0], persistence_size=parts[p7][1],
                    others=tuple((n, st, size) for n, (st, size) in sorted(parts.items()) if n < 5 and n != ext))


def _set_size(disk: Path, number: int, size: int) -> None:
    # -N: only this partition's entry changes (one sector: the MBR for p3, p7's EBR for p7).
    # --no-reread: the disk is in use; the kernel is told below, for p7 only.
    run(["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "never", "--wipe-partitions", "never",
         "-N", str(number), str(disk)], f",{size}\n")
    os.sync()


def superblock(part: Path) -> dict[str, str]:
    """The ext4 superblock of ``part``, as dumpe2fs -h names its fields."""
    fields = {}
    for line in run(["dumpe2fs", "-h", str(part)]).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def fs_size(part: Path) -> int:
    """Bytes the ext4 on ``part`` spans."""
    fields = superblock(part)
    return int(fields["Block count"]) * int(fields["Block size"])


def _has_backup(group: int, features: list[str]) -> bool:
    """Whether block group ``group`` holds a copy of the superblock (sparse_super: 0, 1 and the
    powers of 3, 5 and 7; sparse_super2, whose two groups the superblock names: assumed yes)."""
    if "sparse_super" not in features or "sparse_super2" in features or group <= 1:
        return True
    for base in (3, 5, 7):
        n = base
        while n < group:
            n *= base
        if n == group:
            return True
    return False


def attainable(fields: dict[str, str], device_bytes: int) -> int:
    """Bytes resize2fs makes of this ext4 on a device of ``device_bytes``: all of it, but for a last
    block group too small to hold its own metadata and 50 blocks, which resize2fs leaves out
    (e2fsprogs' adjust_fs_info); without this, a p7 ending such a remnant after its last full group
    would be "grown" again at every boot."""
    block = int(fields["Block size"])
    per_group = int(fields["Blocks per group"])
    first = int(fields["First block"])
    blocks = device_bytes // block
    groups = -(-(blocks - first) // per_group)
    remnant = (blocks - first) % per_group
    overhead = 2 + int(fields["Inode blocks per group"])
    if _has_backup(groups - 1, fields.get("Filesystem features", "").split()):
        desc_size = int(fields.get("Group descriptor size", "32"))
        overhead += 1 + -(-groups * desc_size // block) + int(fields.get("Reserved GDT blocks", "0"))
    if groups > 1 and remnant and remnant < overhead + 50:
        blocks -= remnant
    return blocks * block


class RebootNeeded(Exception):
    """p7's entry was put right, and this boot runs without p7: the next boot mounts it."""


def _in_use(link: Path) -> bool:
    if not link.exists():
        return False
    devices = {link.resolve()}
    with contextlib.suppress(DeviceError):  # encrypted and locked: only p7 itself
        devices.add(bootstate.persistence_filesystem().resolve())
    return any(m.device.startswith("/dev/") and Path(m.device).resolve() in devices for m in system.mounts())


def resize(say: Callable[[str], None] = print) -> bool:
    """Grow p3, p7 and its ext4 as far as the disk allows; returns whether anything changed. First
    p7's entry is checked (tablerepair): when it had to be written again while this boot runs
    without p7, RebootNeeded."""
    link = bootstate.device_path(layout.Role.PERSISTENCE)
    system_part = bootstate.device_path(layout.Role.SYSTEM)
    if system_part.exists():  # p2 is a primary partition: its entry is in the MBR, which a resize of p7 leaves
        repaired = tablerepair.repair(disk_of(system_part.resolve(strict=True)))
        if repaired:
            say(f"{repaired} (a power cut during a resize tears such a sector): written again")
            if not _in_use(link):
                raise RebootNeeded("this boot runs without the persistence partition; the next boot mounts it")
    if not link.exists():
        raise DeviceError(f"{link} (the persistence partition) is missing")
    # The kernel's names from here on: rewriting the partition table makes udev take the
    # by-partuuid links away for a moment (seen on a raspi3b: ENOENT from /sys/class/block/<id>-07).
    part = link.resolve(strict=True)
    mapping = bootstate.persistence_filesystem()  # p7 itself, or /dev/mapper/NAME (cryptsetup wants the name)
    fs = mapping.resolve(strict=True)
    disk = disk_of(part)
    g = read_geometry(disk)
    p = plan(g)
    changed = False
    if p.needed:
        say(f"growing the persistence partition to {p.end * layout.SECTOR // layout.MiB} MiB of {disk}")
        for note in p.notes:  # once: the next boot has nothing to grow and says nothing
            say(note)
    if p.extended_size is not None:
        _set_size(disk, layout.partition(layout.Role.EXTENDED).number, p.extended_size)
        changed = True
    number = layout.partition(layout.Role.PERSISTENCE).number
    if p.persistence_size is not None:
        _set_size(disk, number, p.persistence_size)
        changed = True
    size = read_geometry(disk).persistence_size
    kernel_size = int((_sys_block(part) / "size").read_text())
    if kernel_size != size:
        # partx --update reads p7's new entry and tells the kernel with BLKPG (resizepart is not in
        # trixie's util-linux).
        run(["partx", "--update", "--nr", str(number), str(disk)])
        changed = True
    if fs != part:
        changed |= _grow_mapping(part, mapping, say)
    fs_bytes = int((_sys_block(fs) / "size").read_text()) * layout.SECTOR
    fields = superblock(fs)
    if int(fields["Block count"]) * int(fields["Block size"]) + layout.ALIGN <= attainable(fields, fs_bytes):
        mounted = any(m.device.startswith("/dev/") and Path(m.device).resolve() == fs.resolve()
                      for m in system.mounts())
        if not mounted:
            run(["e2fsck", "-f", "-p", str(fs)])
        say(f"growing the ext4 on {fs} {'online' if mounted else 'offline'}")
        run(["resize2fs", str(fs)])
        changed = True
    if changed:
        say(f"persistence partition: {fs_size(fs) // layout.MiB} MiB")
    return changed


def _grow_mapping(part: Path, mapping: Path, say: Callable[[str], None]) -> bool:
    """Encrypted p7: the opened LUKS mapping grows to the partition (dm-crypt's table, online)."""
    part_sectors = int((_sys_block(part) / "size").read_text())
    map_sectors = int((_sys_block(mapping) / "size").read_text())
    offset = 0
    for line in run(["cryptsetup", "status", mapping.name]).splitlines():
        key, _, value = line.strip().partition(":")
        if key == "offset":
            offset = int(value.split()[0])
    if part_sectors - offset - map_sectors < MIN_GAIN_SECTORS:
        return False
    say(f"growing the encrypted mapping {mapping}")
    try:
        run(["cryptsetup", "resize", mapping.name])
    except DeviceError as exc:
        raise DeviceError(f"{exc}: the mapping was opened with its key in the kernel keyring (by live-boot, "
                          f"not liveng); run 'cryptsetup resize {mapping.name}' with the passphrase, then "
                          "liveng resize") from None
    return True
