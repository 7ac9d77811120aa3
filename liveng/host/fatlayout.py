"""p1's FAT32, laid out so that the few files the device rewrites cannot take GRUB's files with them.

The device rewrites grubenv, its backup and the settings files on p1 (replace by rename, each
time new clusters). Linux writes FAT and directory sectors one at a time, and a card that loses
power while programming one can leave it torn. When such a sector also mapped grub.cfg, GRUB
found no menu (campaign seed 764004789: FAT 1's sector 70 mapped grub.cfg, grubenv and the
settings file alike). So p1 is made in three steps:

1. the unchanging files (firmware, GRUB, the menu, image.json) with mtools, which allocates in
   order, then a spacer file that takes every cluster left in their last 4 KiB of FAT: those FAT
   sectors are never written again (4 KiB rather than one sector: a card's page);
2. the root directory's last cluster filled to its end with empty hidden entries, so the names the
   device makes (temporary files, renames, notes) go to clusters of their own; a directory's
   mtime lives in its parent's entry, so the boot state has a directory of its own at the root
   (the root has no entry) and nothing under boot/ changes;
3. the root entries the device rewrites (layout.P1_RUNTIME): the boot state and the settings file.

Sector 0 is still written: Linux sets and clears its "dirty" flag at each writable mount. Setting it
at build time would stop that, but makes Windows offer to repair the card the owner edits.

``check`` reads the result back and refuses an image where any of it does not hold.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from liveng.host.errors import BuildError
from liveng.host.runner import run

MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}
FAT_PAGE = 4096  # bytes of FAT the unchanging files' clusters end on
ENTRY = 32  # bytes per directory entry
_LFN_CHARS = 13  # characters per long-name entry
_MAX_LFN_ENTRIES = 19  # a spacer's name stays within FAT's 255 characters
# Hidden files that keep the boot files' sectors apart from the rewritten ones.
SPACER_FILE = "SPACER.BIN"  # a short name alone: one directory slot
SPACER_NAME = "liveng-spacer"
_FREE = (0x00, 0xE5)
_ATTR_LFN, _ATTR_DIR, _ATTR_VOLUME = 0x0F, 0x10, 0x08
_END = 0x0FFFFFF8


@dataclass(frozen=True)
class Geometry:
    sector: int
    cluster_sectors: int
    reserved: int
    fats: int
    fat_sectors: int
    root_cluster: int

    @property
    def cluster(self) -> int:
        return self.sector * self.cluster_sectors

    @property
    def entries_per_page(self) -> int:
        return FAT_PAGE // 4

    def fat_offset(self, copy: int) -> int:
        return (self.reserved + copy * self.fat_sectors) * self.sector

    def cluster_offset(self, n: int) -> int:
        return (self.reserved + self.fats * self.fat_sectors) * self.sector + (n - 2) * self.cluster


@dataclass(frozen=True)
class Entry:
    path: str  # inside the file system, no leading slash
    attr: int
    first: int  # first cluster (0: none)
    dir_cluster: int  # the directory cluster holding the entry


class Volume:
    """A FAT32 file system image (or the one at ``offset`` in a disk image), read whole: p1 is a few
    hundred MiB at most."""

    def __init__(self, image: Path, offset: int = 0, size: int = -1) -> None:
        with open(image, "rb") as f:
            f.seek(offset)
            self.data = f.read(size)
        d = self.data
        if d[82:87] != b"FAT32":
            raise BuildError(f"{image}: not a FAT32 file system")
        sector, spc, reserved, fats = struct.unpack_from("<HBHB", d, 11)
        self.g = Geometry(sector, spc, reserved, fats, struct.unpack_from("<I", d, 36)[0],
                          struct.unpack_from("<I", d, 44)[0])
        self.fats = [self._fat(c) for c in range(fats)]

    def _fat(self, copy: int) -> tuple[int, ...]:
        start = self.g.fat_offset(copy)
        raw = self.data[start:start + self.g.fat_sectors * self.g.sector]
        return tuple(v & 0x0FFFFFFF for v in struct.unpack(f"<{len(raw) // 4}I", raw))

    def chain(self, first: int) -> list[int]:
        fat, out, seen = self.fats[0], list[int](), set[int]()
        n = first
        while 2 <= n < _END and n < len(fat) and n not in seen:
            out.append(n)
            seen.add(n)
            n = fat[n]
        return out

    def slots(self, dir_cluster: int) -> bytes:
        off = self.g.cluster_offset(dir_cluster)
        return self.data[off:off + self.g.cluster]

    def entries(self, path: str = "", first: int | None = None) -> Iterator[Entry]:
        """Every entry below the directory ``path`` (the root by default), depth first."""
        parts: list[str] = []  # a long name's pieces, which may begin in the cluster before
        for cluster in self.chain(self.g.root_cluster if first is None else first):
            raw = self.slots(cluster)
            for i in range(0, len(raw), ENTRY):
                slot = raw[i:i + ENTRY]
                if slot[0] == 0:
                    return
                if slot[0] == 0xE5:
                    parts = []
                    continue
                attr = slot[11]
                if attr == _ATTR_LFN:
                    chars = slot[1:11] + slot[14:26] + slot[28:32]
                    parts.insert(0, chars.decode("utf-16-le", "replace").split("\0")[0])
                    continue
                name = "".join(parts) or _short_name(slot)
                parts = []
                if attr & _ATTR_VOLUME or name in (".", ".."):
                    continue
                child = f"{path}/{name}" if path else name
                start = struct.unpack_from("<H", slot, 20)[0] << 16 | struct.unpack_from("<H", slot, 26)[0]
                yield Entry(child, attr, start, cluster)
                if attr & _ATTR_DIR:
                    yield from self.entries(child, start)

    def find(self, path: str) -> Entry | None:
        """The entry at ``path`` (no leading slash), matched as FAT matches names: ignoring case."""
        want = path.lower()
        return next((e for e in self.entries() if e.path.lower() == want), None)


def _short_name(slot: bytes) -> str:
    base, ext = slot[0:8].decode("ascii", "replace").rstrip(), slot[8:11].decode("ascii", "replace").rstrip()
    if slot[12] & 0x08:
        base = base.lower()
    if slot[12] & 0x10:
        ext = ext.lower()
    return f"{base}.{ext}" if ext else base


def _copy(out: Path, sources: list[Path], target: str, hidden: bool = False) -> None:
    # mcopy -s copies directories recursively; -Q stops at the first error instead of asking.
    run(["mcopy", "-Q", "-s", "-i", out, *sources, target], env=MTOOLS_ENV)
    if hidden:
        run(["mattrib", "-i", out, "+h", target], env=MTOOLS_ENV)


def populate(out: Path, static: Path, runtime: Path) -> None:
    """Fill the fresh FAT32 ``out`` with the trees ``static`` and ``runtime`` (see the module's docstring);
    ``runtime`` holds the entries of p1's root the device rewrites (layout.P1_RUNTIME)."""
    if entries := sorted(static.iterdir()):
        _copy(out, entries, "::/")
    _pad(out)
    _close_root(out)
    if entries := sorted(runtime.iterdir()):
        _copy(out, entries, "::/")


def _pad(out: Path) -> None:
    vol = Volume(out)
    used = max((n for n, v in enumerate(vol.fats[0]) if n >= 2 and v), default=1)
    per_page = vol.g.entries_per_page
    free = -(used + 1) % per_page  # clusters left in the page of the last one used
    if not free:
        return
    # The spacer's entry takes one slot of the root's last cluster; a full one makes mtools add a
    # cluster to the root first, one fewer for the spacer.
    root_last = vol.chain(vol.g.root_cluster)[-1]
    room = _free_at_end(vol.slots(root_last))
    size = (free - (0 if room else 1)) * vol.g.cluster
    spacer = out.with_name(f".{out.name}.spacer")
    try:
        spacer.write_bytes(b"\0" * size)
        _copy(out, [spacer], f"::/{SPACER_FILE}", hidden=True)
    finally:
        spacer.unlink(missing_ok=True)


def _free_at_end(raw: bytes) -> int:
    """Free slots after the last used one of a directory cluster."""
    used = [i for i in range(0, len(raw), ENTRY) if raw[i] not in _FREE]
    return (len(raw) - (used[-1] + ENTRY if used else 0)) // ENTRY


def _close_root(out: Path) -> None:
    """Fill the root's last cluster with empty hidden files, so that no new name lands in it."""
    vol = Volume(out)
    left = _free_at_end(vol.slots(vol.chain(vol.g.root_cluster)[-1]))
    empty = out.with_name(f".{out.name}.empty")
    empty.write_bytes(b"")
    try:
        number = 0
        while left:
            take = min(left, _MAX_LFN_ENTRIES + 1)
            number += 1
            # One slot: a short name alone; k slots: a long name of k - 1 entries and its short one.
            name = f"SPACER{number:02d}" if take == 1 else \
                (f"{SPACER_NAME}-{number}-" * 20)[:_LFN_CHARS * (take - 1)]
            _copy(out, [empty], f"::/{name}", hidden=True)
            left -= take
    finally:
        empty.unlink(missing_ok=True)


def _is_spacer(name: str) -> bool:
    n = name.lower()
    return n == SPACER_FILE.lower() or n.startswith(SPACER_NAME) or (n.startswith("spacer") and n[6:].isdigit())


@dataclass(frozen=True)
class Fence:
    boundary: int  # the first cluster the device may write; all below hold unchanging files
    unchanging: tuple[tuple[int, int], ...]  # (offset, length): p1's bytes the device never writes


def check(image: Path, runtime: tuple[str, ...], offset: int = 0, size: int = -1) -> Fence:
    """Verify p1's layout (module docstring) given the root's entries the device rewrites; the byte
    ranges of p1 the device never writes. ``offset``, ``size``: p1 within a disk image."""
    vol = Volume(image, offset, size)
    problems: list[str] = []
    if any(f != vol.fats[0] for f in vol.fats[1:]):
        problems.append("the FAT copies differ")
    entries = list(vol.entries())
    # Rewritten: the entries named so, and on a card in use whatever the device, the owner or Imager
    # added to the root, which lands after the spacers; and all below them.
    top = {r.lower() for r in runtime}
    spacers = [i for i, e in enumerate(entries) if "/" not in e.path and _is_spacer(e.path)]
    for e in entries[spacers[-1] + 1:] if spacers else []:
        top.add(e.path.lower().split("/")[0])
    is_runtime = [e.path.lower().split("/")[0] in top for e in entries]
    static_clusters = [c for e, rt in zip(entries, is_runtime, strict=True) if not rt for c in vol.chain(e.first)]
    static_clusters += vol.chain(vol.g.root_cluster)[:1]
    per_page = vol.g.entries_per_page
    boundary = -(-(max(static_clusters) + 1) // per_page) * per_page
    if any(not v for v in vol.fats[0][2:boundary]):
        problems.append(f"a cluster below {boundary} is free: a new file could be put among the boot files")
    for e, rt in zip(entries, is_runtime, strict=True):
        if rt and (e.dir_cluster < boundary or any(c < boundary for c in vol.chain(e.first))):
            problems.append(f"{e.path} (rewritten by the device) lies among the boot files' clusters")
    # Only the root gets new names on the device (the rewritten entries are the root's).
    for c in vol.chain(vol.g.root_cluster):
        raw = vol.slots(c)
        if c < boundary and any(raw[i] in _FREE for i in range(0, len(raw), ENTRY)):
            problems.append(f"the root's directory cluster {c} has free slots: a new name could land among "
                            "unchanging ones")
    if problems:
        raise BuildError("p1 does not keep the files the device rewrites apart from the boot files (a liveng "
                         "bug: please report it): " + "; ".join(problems))
    g = vol.g
    ranges = [(g.fat_offset(c), boundary * 4) for c in range(g.fats)]
    ranges.append((g.cluster_offset(2), (boundary - 2) * g.cluster))
    return Fence(boundary, tuple(ranges))
