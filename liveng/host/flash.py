"""liveng flash IMAGE DEVICE: write an image to a card or disk, then read it back to check it.

The target is a whole disk (or a regular file). Before a byte is written it is refused when it is
a partition, write-protected, smaller than the image, in use (a partition mounted, swap, a holder
such as device mapper or md) or one of the disks the running system lives on (/, /boot, /usr,
/var, the liveng cache...); --force overrides the last two only. A fixed disk (not removable, not USB
or MMC) is written only after "yes" typed on a terminal, or with --yes. Disks are found through sysfs
and /proc, so the checks are testable on a directory that stands in for /sys and /proc.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from liveng import layout
from liveng.durable import fsync_dir
from liveng.host import cardgrow
from liveng.host.errors import FlashError, UsageError
from liveng.host.flashio import Progress, human, verify, write_image
from liveng.host.imagefile import open_image
from liveng.host.runner import run

# Where the running system lives: a disk backing any of these is refused without --force.
SYSTEM_PATHS = ("/", "/boot", "/boot/efi", "/usr", "/var", "/home", "/var/cache/liveng", "/run/live/medium",
                "/run/live/persistence")


@dataclass(frozen=True)
class Host:
    """The kernel's view of the machine; a test points these at a directory of its own."""

    sysfs: Path = Path("/sys")
    mountinfo: Path = Path("/proc/self/mountinfo")
    swaps: Path = Path("/proc/swaps")


@dataclass(frozen=True)
class Mountpoint:
    majmin: str
    mountpoint: str
    fstype: str
    source: str
    options: str


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mounts(host: Host) -> list[Mountpoint]:
    result = []
    for line in host.mountinfo.read_text().splitlines():
        pre, sep, post = line.partition(" - ")
        a, b = pre.split(), post.split()
        if not sep or len(a) < 5 or len(b) < 3:
            continue
        result.append(Mountpoint(a[2], _unescape(a[4]), b[0], _unescape(b[1]), b[2]))
    return result


@dataclass(frozen=True)
class Disk:
    name: str  # the kernel's name: sdb, mmcblk0, nvme0n1
    sysdir: Path  # its directory in sysfs
    size: int  # bytes
    model: str
    removable: bool
    readonly: bool

    @property
    def fixed(self) -> bool:
        """Built into the machine: not removable, not on USB or an SD/MMC slot, not a loop device."""
        real = str(self.sysdir.resolve())
        return not (self.removable or "/usb" in real or self.name.startswith("mmcblk")
                    or (self.sysdir / "loop").is_dir())

    def describe(self) -> str:
        # The word the --yes question goes by: a card in a built-in reader is removable to the user.
        kind = "fixed" if self.fixed else "removable"
        return f"{self.model or 'unknown model'}, {human(self.size)}, {kind}"


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def sysdir_of(majmin: str, host: Host) -> Path | None:
    link = host.sysfs / "dev/block" / majmin
    return link.resolve() if link.exists() else None


def disk_info(sysdir: Path) -> Disk:
    sectors = _read(sysdir / "size", "0")
    model = " ".join(w for w in (_read(sysdir / "device/vendor"), _read(sysdir / "device/model")) if w)
    if not model:
        model = _read(sysdir / "device/name")  # SD cards (mmcblk) name themselves here
    if not model and (sysdir / "loop").is_dir():
        model = f"loop device on {_read(sysdir / 'loop/backing_file')}"
    return Disk(name=sysdir.name, sysdir=sysdir, size=int(sectors) * layout.SECTOR if sectors.isdigit() else 0,
                model=model, removable=_read(sysdir / "removable") == "1", readonly=_read(sysdir / "ro") == "1")


def partitions(disk: Path) -> list[Path]:
    return sorted(p for p in disk.iterdir() if (p / "partition").exists()) if disk.is_dir() else []


def in_use(disk: Path, host: Host) -> list[str]:
    """Why the disk is busy: its or a partition's mounts, swap and holders (dm, md, LUKS)."""
    devices = {disk.name: _read(disk / "dev")}
    devices.update({p.name: _read(p / "dev") for p in partitions(disk)})
    by_majmin = {v: k for k, v in devices.items() if v}
    reasons = []
    for m in mounts(host):
        name = by_majmin.get(m.majmin)
        if name is None and m.source.startswith("/dev/"):
            name = _name_of(m.source, devices)
        if name is not None:
            reasons.append(f"{name} is mounted on {m.mountpoint}")
    if host.swaps.exists():
        for line in host.swaps.read_text().splitlines()[1:]:
            name = _name_of(line.split()[0], devices) if line.split() else None
            if name is not None:
                reasons.append(f"{name} is in use as swap")
    for name in devices:
        sysdir = disk if name == disk.name else disk / name
        holders = sorted(h.name for h in (sysdir / "holders").glob("*"))
        if holders:
            reasons.append(f"{name} is held by {', '.join(holders)} (device mapper, LVM, LUKS or RAID)")
    return reasons


def _name_of(path: str, devices: dict[str, str]) -> str | None:
    name = Path(os.path.realpath(path)).name if path.startswith("/") else path
    return name if name in devices else None


def disks_of(majmin: str, host: Host, depth: int = 0) -> set[str]:
    """The whole disks under a block device: through partitions and stacked devices (dm, md)."""
    sysdir = sysdir_of(majmin, host)
    if sysdir is None or depth > 8:
        return set()
    if (sysdir / "partition").exists():
        sysdir = sysdir.parent
    slaves = sorted((sysdir / "slaves").glob("*"))
    if not slaves:
        return {sysdir.name}
    found: set[str] = set()
    for slave in slaves:
        dev = _read(slave.resolve() / "dev")
        if dev:
            found |= disks_of(dev, host, depth + 1)
    return found


def _mount_of(path: str, all_mounts: list[Mountpoint]) -> Mountpoint | None:
    best = None
    for m in all_mounts:
        mp = m.mountpoint.rstrip("/") or "/"
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and (
                best is None or len(mp) >= len(best.mountpoint.rstrip("/") or "/")):
            best = m
    return best


def backing_majmins(path: str, host: Host, depth: int = 0) -> set[str]:
    """The block devices a path's filesystem is on (through overlayfs's layers when it is one)."""
    all_mounts = mounts(host)
    m = _mount_of(path, all_mounts)
    if m is None or depth > 4:
        return set()
    if not m.majmin.startswith("0:"):
        return {m.majmin}
    if m.source.startswith("/dev/"):
        with contextlib.suppress(OSError):
            rdev = os.stat(m.source).st_rdev
            return {f"{os.major(rdev)}:{os.minor(rdev)}"}
    found: set[str] = set()
    if m.fstype == "overlay":
        for opt in m.options.split(","):
            key, _, value = opt.partition("=")
            if key in ("lowerdir", "upperdir"):
                for layer in value.split(":"):
                    if layer.startswith("/"):
                        found |= backing_majmins(layer, host, depth + 1)
    return found


def system_disks(host: Host, paths: tuple[str, ...] = SYSTEM_PATHS) -> dict[str, str]:
    """Disk name -> the system path it holds."""
    found: dict[str, str] = {}
    for path in paths:
        # A path that is not a mount point of its own resolves to the one it is on: no harm.
        for majmin in backing_majmins(path, host):
            for disk in disks_of(majmin, host):
                found.setdefault(disk, path)
    return found


def check_block_target(target: Path, rdev: int, image_size: int, force: bool, host: Host) -> Disk:
    """Refuse a target that must not be written; return what it is."""
    majmin = f"{os.major(rdev)}:{os.minor(rdev)}"
    sysdir = sysdir_of(majmin, host)
    if sysdir is None:
        raise UsageError(f"{target}: the kernel does not list this block device ({majmin}) in sysfs")
    if (sysdir / "partition").exists():
        raise UsageError(f"{target} is a partition: give the whole disk, /dev/{sysdir.parent.name}")
    disk = disk_info(sysdir)
    if disk.readonly:
        raise UsageError(f"{target} ({disk.describe()}) is read-only: an SD card's lock switch?")
    if disk.size < image_size:
        raise UsageError(f"{target} ({disk.describe()}) is too small: the image needs {human(image_size)}")
    holding = system_disks(host)
    if disk.name in holding:
        message = (f"{target} ({disk.describe()}) holds the running system ({holding[disk.name]} is on it): "
                   "refused")
        if not force:
            raise UsageError(message + "; --force writes it anyway")
        print(f"liveng: WARNING: {message}, but --force", file=sys.stderr)
    busy = in_use(sysdir, host)
    if busy:
        message = f"{target} ({disk.describe()}) is in use: {'; '.join(busy)}"
        if not force:
            raise UsageError(message + ". Unmount it first (or --force)")
        print(f"liveng: WARNING: {message}, but --force", file=sys.stderr)
    return disk


def confirm_fixed(target: Path, disk: Disk, yes: bool, ask: Callable[[str], str] | None) -> None:
    """A fixed disk is written only when the user says so: --yes, or "yes" typed on a terminal."""
    if yes or not disk.fixed:
        return
    question = (f"{target} ({disk.describe()}) is a fixed disk, not a card or a USB stick: everything on it "
                "is erased. Type yes to write it: ")
    if ask is None:
        raise UsageError(f"{target} ({disk.describe()}) is a fixed disk, not a card or a USB stick: pass --yes to "
                         "write it anyway")
    if ask(question).strip() != "yes":
        raise UsageError(f"{target}: not confirmed; nothing was written")


def _terminal_ask() -> Callable[[str], str] | None:
    return input if sys.stdin.isatty() else None


def flash(image: Path, target: Path, force: bool = False, host: Host | None = None, yes: bool = False) -> str:
    """Write and verify; returns a one-line summary."""
    host = host or Host()
    if not image.is_file():
        raise UsageError(f"{image}: no such image file")
    from liveng.host import shipped  # it uses this module's checks

    if compression := shipped.compression_of(image):
        return shipped.flash_compressed(image, compression, target, force, host, yes)
    info = open_image(image)  # refuses anything that is not a liveng image
    size = image.stat().st_size
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISBLK(st.st_mode):
        disk = check_block_target(target, st.st_rdev, size, force, host)
        confirm_fixed(target, disk, yes or force, _terminal_ask())
        print(f"liveng: writing {image} (id {info.table.image_id}, {human(size)}) to {target}: {disk.describe()}",
              file=sys.stderr)
        flags = os.O_WRONLY | os.O_CLOEXEC | (0 if force else os.O_EXCL)
        try:
            fd = os.open(target, flags)
        except OSError as exc:
            hint = {errno.EBUSY: "something holds it (mounted, or open by another program)",
                    errno.EACCES: "run liveng flash as root"}.get(exc.errno or 0, "")
            raise FlashError(f"{target}: cannot open it for writing: {exc.strerror}" + (f": {hint}" if hint else "")) \
                from None
        try:
            write_image(image, fd, size, sparse=False, progress=Progress("written ", size))
        except OSError as exc:
            raise FlashError(f"{target}: writing failed: {exc.strerror}; the disk does not hold a usable image") \
                from None
        finally:
            os.close(fd)
        verify(image, target, size, Progress("verified", size))
        return finish_block(target, size)
    return _flash_file(image, target, size, st)


def finish_block(target: Path, size: int) -> str:
    """After the image is on the disk and read back: its partition table grown to the disk
    (cardgrow), the kernel told; the one-line summary."""
    grown = cardgrow.grow(target)
    # Let the kernel see the new partitions (a failure here changes nothing on the disk).
    run(["blockdev", "--rereadpt", target], check=False)
    return f"{target}: {human(size)} written and verified" + (f"; {grown}" if grown else "")


def check_file_target(image: Path, target: Path, st: os.stat_result | None) -> None:
    if str(target.absolute()).startswith("/dev/"):
        raise UsageError(f"{target}: no such block device (see lsblk)")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{target}: neither a block device nor a regular file")
    if st is not None and os.path.samefile(image, target):
        raise UsageError(f"{target} is the image itself")
    if not target.parent.is_dir():
        raise UsageError(f"{target.parent}: no such directory")


def _flash_file(image: Path, target: Path, size: int, st: os.stat_result | None) -> str:
    check_file_target(image, target, st)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        print(f"liveng: writing {image} ({human(size)}) to the file {target}", file=sys.stderr)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            write_image(image, fd, size, sparse=True, progress=Progress("written ", size))
        except OSError as exc:
            raise FlashError(f"{tmp}: writing failed: {exc.strerror}") from None
        finally:
            os.close(fd)
        verify(image, tmp, size, Progress("verified", size))
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return f"{target}: {human(size)} written and verified"
