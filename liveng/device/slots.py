"""Kernel slots: small ISO9660 partitions holding one kernel and its initrd (and DTBs on arm64).

A slot is written whole, synced, read back and checked before anything points at it.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from liveng import layout, manifest
from liveng.device.bootstate import DeviceError, device_path, mounted
from liveng.device.runner import run

BLKFLSBUF = 0x1261  # linux/fs.h: drop the buffer cache of a block device
CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class SlotInfo:
    name: str  # "a" or "b"
    kernel: str | None
    written: str | None
    files: dict[str, str]  # path in the slot -> sha256
    system: str = layout.SYSTEM_FACTORY  # the system this kernel belongs to (layout.SLOT_SYSTEM_PATH)

    @property
    def entry(self) -> str:
        return layout.ENTRY_SLOT[self.name]


def read_slot(name: str) -> SlotInfo:
    """What a slot holds, or an empty SlotInfo when it holds nothing readable."""
    dev = device_path(layout.SLOTS[name])
    try:
        fstype = run(["blkid", "-p", "-s", "TYPE", "-o", "value", str(dev)]).strip()
    except DeviceError:
        fstype = ""
    if fstype != "iso9660":
        return SlotInfo(name, None, None, {})
    try:
        with mounted(layout.SLOTS[name], "iso9660") as root:
            info = json.loads((root / layout.SLOT_INFO_PATH).read_text())
            bound = root / layout.SLOT_SYSTEM_PATH
            owner = bound.read_text().strip() if bound.is_file() else layout.SYSTEM_FACTORY
            return SlotInfo(name, info.get("kernel"), info.get("written"), dict(info.get("files", {})), owner)
    except (DeviceError, OSError, ValueError, AttributeError, TypeError):  # missing, or not slot.json's shape
        return SlotInfo(name, None, None, {})


def slot_size(dev: Path) -> int:
    real = dev.resolve()
    sectors = int(Path(f"/sys/class/block/{real.name}/size").read_text())
    return sectors * 512


def build_iso(name: str, kernel: str, files: dict[str, Path], hashes: dict[str, str], workdir: Path,
              system: str = layout.SYSTEM_FACTORY) -> Path:
    """Make the slot's ISO in ``workdir`` (RAM), the kernel files grafted in without copies, bound to
    ``system`` (the initramfs boots that system with this kernel).

    ``files`` maps paths in the slot to their sources, ``hashes`` those paths to the sources' sha256
    (the caller has them already: each pass over a 50 MiB initrd costs seconds on a slow board).
    """
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    info = workdir / "slot.json"
    info.write_text(manifest.slot_info(name, kernel, now, hashes))
    bound = workdir / "system"
    bound.write_text(system + "\n")
    sums = workdir / "SHA256SUMS"
    sums.write_text(manifest.manifest_text({**hashes, layout.SLOT_INFO_PATH: manifest.sha256_file(info),
                                          layout.SLOT_SYSTEM_PATH: manifest.sha256_file(bound)}))
    iso = workdir / "slot.iso"
    grafts = [f"{rel}={src}" for rel, src in files.items()]
    grafts += [f"{layout.SLOT_INFO_PATH}={info}", f"{layout.SLOT_SYSTEM_PATH}={bound}",
               f"{layout.MANIFEST_PATH}={sums}"]
    run(["xorriso", "-as", "mkisofs", "-quiet", "-iso-level", "3", "-R", "-V", layout.SLOT_VOLID[name],
         "-o", str(iso), "-graft-points", *grafts])
    return iso


def write_and_verify(iso: Path, dev: Path) -> None:
    size = iso.stat().st_size
    capacity = slot_size(dev)
    if size > capacity:
        raise DeviceError(f"the kernel and initrd need {size // 2**20 + 1} MiB but the slot {dev} has "
                          f"{capacity // 2**20} MiB: make the initrd smaller (MODULES=dep in "
                          "/etc/initramfs-tools/initramfs.conf) or rebuild the image with a bigger sizes.slot")
    fd = os.open(dev, os.O_WRONLY)
    try:
        with open(iso, "rb") as src:
            pos = 0
            while chunk := src.read(CHUNK):
                os.pwrite(fd, chunk, pos)
                pos += len(chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    # Read back from the device itself, not from the page cache that the write just filled, and
    # compare with the ISO (in RAM): a byte comparison, no checksum pass over the whole slot.
    fd = os.open(dev, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, BLKFLSBUF)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        with open(iso, "rb") as src:
            pos = 0
            while expected := src.read(CHUNK):
                if os.pread(fd, len(expected), pos) != expected:
                    raise DeviceError(f"the slot {dev} does not read back what was written (differs from byte "
                                      f"{pos} on): the card may be failing; the boot order was not changed")
                pos += len(expected)
    finally:
        os.close(fd)


def write_slot(name: str, kernel: str, files: dict[str, Path], hashes: dict[str, str],
               system: str = layout.SYSTEM_FACTORY) -> None:
    """Write ``files`` (path in the slot -> source, with their sha256 in ``hashes``) as slot ``name``,
    the kernel of ``system``."""
    dev = device_path(layout.SLOTS[name])
    # The ISO is made in RAM: writing it to the persistence first would only wear the card.
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="liveng-slot-", dir=base) as tmp:
        iso = build_iso(name, kernel, files, hashes, Path(tmp), system)
        write_and_verify(iso, dev)

