"""liveng install DISK: this system onto another disk, which then boots on its own (BIOS and UEFI).

p1 (boot loaders, menu), p2 (the system) and the kernel slot that runs now are copied raw to the
same places (so a slot keeps its name, volume id and slot.json); the other slot stays empty; p7
is a fresh ext4 filling the disk, empty or with a copy of the current delta; an encrypted p7
gets a copy of this one's LUKS header (same passphrase, key file and volume key).

The installed disk keeps this image's id. The id is baked into GRUB (the UEFI config stubs on p1 and the BIOS
core.img search p1 by it; core.img is compressed and the device has no grub-mkimage to make a new
one), so a new id cannot be given consistently on the device. The copy is therefore meant to
replace the disk it came from (install from a stick, then remove the stick): two disks with one
id in one machine are ambiguous, so the running system forgets the new partitions again as soon as
udev has read them (they appear at the next boot), and a third disk that already carries the id
is refused.

Order of writes, so that a failure at any point leaves a disk that is plainly not bootable rather
than half a system: the old partition table and boot code are wiped first; then the partitions'
contents are written by offset (through loop devices where a filesystem is needed); then GRUB's
core.img in the gap before p1, the partition table, and the MBR boot code last, each synced.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from liveng import durable, layout
from liveng.device import bootenv, bootstate, delta, kernel, resize, snapshot, system, update
from liveng.device.bootstate import DeviceError
from liveng.device.runner import run

CHUNK = 4 * layout.MiB
MIN_PERSISTENCE = 256 * layout.MiB
INSTALL_MAPPING = "liveng-install"
BOOT_CODE = 440  # bytes of the MBR before the disk identifier and the partition table


@dataclass(frozen=True)
class Source:
    disk: Path
    image_id: str
    extents: dict[int, tuple[int, int]]  # partition number -> (start, size) in bytes
    slot: str  # the kernel slot copied (to the same slot of the new disk)


def whole_disk(path: Path) -> Path:
    """``path`` as a whole-disk block device, or a DeviceError saying why not."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DeviceError(f"{path} does not exist: name a disk, e.g. /dev/sdb (lsblk lists them)") from None
    if not stat.S_ISBLK(mode):
        raise DeviceError(f"{path} is not a block device: name a disk, e.g. /dev/sdb")
    real = path.resolve()
    if (Path("/sys/class/block") / real.name / "partition").exists():
        raise DeviceError(f"{path} is a partition: name the whole disk (liveng install writes its own partitions)")
    return real


def plan(extents: dict[int, tuple[int, int]], disk_bytes: int, need: int = MIN_PERSISTENCE) -> list[layout.Extent]:
    """The new disk's table: p1-p6 where they are on this disk, p3 and p7 up to the end of the disk (at
    most 2 TiB: what an MBR addresses)."""
    end = min(disk_bytes, layout.MBR_MAX_SECTORS * layout.SECTOR) // layout.ALIGN * layout.ALIGN
    p7_start = extents[layout.partition(layout.Role.PERSISTENCE).number][0]
    if end - p7_start < need:
        raise DeviceError(f"the disk has {disk_bytes // layout.MiB} MiB; this system needs at least "
                          f"{(p7_start + need) // layout.MiB} MiB ({need // layout.MiB} MiB of them for persistence)")
    out = []
    for part in layout.PARTITIONS:
        start, size = extents[part.number]
        if part.role is layout.Role.EXTENDED or part.role is layout.Role.PERSISTENCE:
            size = end - start
        if start % layout.SECTOR or size % layout.SECTOR or (start + size) // layout.SECTOR > layout.MBR_MAX_SECTORS:
            raise DeviceError(f"partition {part.number} ({start} + {size} bytes) does not fit an MBR partition "
                              "table: nothing was written")
        out.append(layout.Extent(part.number, part.role, start, size))
    return out


def _partitions(disk: Path) -> list[str]:
    return sorted(p.name for p in (Path("/sys/block") / disk.name).glob(f"{disk.name}*"))


def _delete_partitions(disk: Path, tries: int = 5) -> None:
    """Drop the kernel's partitions of ``disk``. udev may still be probing one (it rereads a disk a
    writer closed), which makes the kernel refuse for a moment: try again. No `udevadm settle` in
    here: while the caller holds the disk's lock udev keeps its events queued, and settle would wait
    for them until it timed out."""
    for attempt in range(tries):
        if not _partitions(disk):
            return
        try:
            run(["partx", "--delete", str(disk)])
            return
        except DeviceError:
            if attempt == tries - 1:
                raise
            time.sleep(1)


def busy(disk: Path, mounts: list[system.Mount]) -> str | None:
    """Why ``disk`` is in use (mounted, swap, held by dm/md), or None."""
    names = {disk.name, *_partitions(disk)}
    for m in mounts:
        if m.device.startswith("/dev/") and Path(m.device).resolve().name in names:
            return f"{m.device} is mounted on {m.mountpoint}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/swaps").read_text().splitlines()[1:]:
            if Path(line.split()[0]).resolve().name in names:
                return f"{line.split()[0]} is in use as swap"
    for name in names:
        holders = Path("/sys/class/block") / name / "holders"
        if holders.is_dir() and any(holders.iterdir()):
            return f"/dev/{name} is in use by {', '.join(h.name for h in holders.iterdir())}"
    return None


def _disk_bytes(disk: Path) -> int:
    base = Path("/sys/block") / disk.name
    if int((base / "queue/logical_block_size").read_text()) != layout.SECTOR:
        raise DeviceError(f"{disk} does not have 512-byte sectors: liveng's MBR layout cannot use it")
    return int((base / "size").read_text()) * layout.SECTOR


def source() -> Source:
    ident = bootstate.image_id()
    system_part = bootstate.device_path(layout.Role.SYSTEM)
    if not system_part.exists():
        raise DeviceError(f"{system_part} (this system's partition) is missing")
    disk = resize.disk_of(system_part)
    # From sysfs: where each partition starts (an extended partition's size there is its one EBR
    # sector, but plan() gives p3 a new size anyway).
    extents = {}
    for name in _partitions(disk):
        sys_dir = Path("/sys/block") / disk.name / name
        extents[int((sys_dir / "partition").read_text())] = (int((sys_dir / "start").read_text()) * layout.SECTOR,
                                                             int((sys_dir / "size").read_text()) * layout.SECTOR)
    missing = [p.number for p in layout.PARTITIONS if p.number not in extents]
    if missing:
        raise DeviceError(f"{disk} lacks partitions {missing}: not a liveng layout")
    booted = kernel.slot_of(kernel.booted_entry())
    if booted is None:  # the factory kernel runs: take the slot the boot order prefers
        order = bootstate.read_state().order
        booted = next((s for s in (kernel.slot_of(e) for e in order) if s), "a")
    return Source(disk=disk, image_id=ident, extents=extents, slot=booted)


def new_env(slot: str, mode: str) -> dict[str, str]:
    """The installed copy's boot state: its copied slot, then the factory kernel, in this system's mode."""
    return layout.fresh_env(layout.order_to_env([layout.ENTRY_SLOT[slot], layout.ENTRY_FACTORY]), mode)


def other_disks_with_id(ident: str, allowed: set[str]) -> list[str]:
    found = set()
    for link in Path("/dev/disk/by-partuuid").glob(f"{ident}-*"):
        disk = resize.disk_of(link).name
        if disk not in allowed:
            found.add(f"/dev/{disk}")
    return sorted(found)


def _copy(src: Path, dst_fd: int, offset: int, size: int) -> None:
    """``size`` bytes from the start of ``src`` to ``offset`` of the target (zeros too: the disk is not blank)."""
    with open(src, "rb") as f:
        done = 0
        while done < size:
            chunk = f.read(min(CHUNK, size - done))
            if not chunk:
                raise DeviceError(f"{src}: short read at {done} of {size} bytes")
            os.pwrite(dst_fd, chunk, offset + done)
            done += len(chunk)


def _zero(fd: int, offset: int, size: int) -> None:
    zeros = bytes(min(CHUNK, size))
    done = 0
    while done < size:
        n = min(len(zeros), size - done)
        os.pwrite(fd, zeros[:n], offset + done)
        done += n


@contextlib.contextmanager
def _loop(disk: Path, start: int, size: int) -> Iterator[Path]:
    """A loop device over one region of the disk: the new partitions stay unknown to this system."""
    dev = Path(run(["losetup", "--find", "--show", "--offset", str(start), "--sizelimit", str(size),
                    str(disk)]).strip())
    try:
        yield dev
    finally:
        run(["losetup", "--detach", str(dev)])


@contextlib.contextmanager
def _mount(dev: Path, fstype: str) -> Iterator[Path]:
    Path("/run/liveng").mkdir(parents=True, exist_ok=True)
    where = Path(run(["mktemp", "-d", "/run/liveng/install.XXXXXX"]).strip())
    try:
        run(["mount", "-t", fstype, str(dev), str(where)])
        try:
            yield where
        finally:
            os.sync()
            run(["umount", str(where)])
    finally:
        with contextlib.suppress(OSError):
            where.rmdir()


def _volume_key(image_id: str) -> bytes | None:
    """Encrypted p7: the volume key of the mapping opened at boot (None when p7 is plain ext4).

    The new disk gets a copy of this p7's LUKS header, so the same passphrase and key file open
    it; its ext4 is made through that key. liveng-luks opens p7 with --disable-keyring, so the key
    is in the dm table (root can read it there anyway) and no passphrase is asked here.
    """
    part = bootstate.device_path(layout.Role.PERSISTENCE, image_id)
    if not bootstate.is_luks(part):
        return None
    mapping = bootstate.persistence_filesystem()
    return key_from_table(run(["dmsetup", "table", "--showkeys", mapping.name]), mapping)


def key_from_table(table: str, mapping: Path) -> bytes:
    """The key of a dm-crypt table line: <start> <length> crypt <cipher> <key> <iv offset> <device> ..."""
    fields = table.split()
    if len(fields) < 5 or fields[2] != "crypt":
        raise DeviceError(f"{mapping} is not a dm-crypt mapping: {table.strip()!r}")
    if fields[4].startswith(":"):
        raise DeviceError(f"the volume key of {mapping} is in the kernel keyring (it was opened by live-boot, not "
                          "liveng): reboot, unlock it at liveng's prompt, and install again")
    try:
        return bytes.fromhex(fields[4])
    except ValueError:
        raise DeviceError(f"{mapping}: unexpected key field in its dm table") from None


@contextlib.contextmanager
def _encrypted(dev: Path, image_id: str, key: bytes | None) -> Iterator[Path]:
    """``dev`` itself, or (encrypted) ``dev`` with a copy of this p7's LUKS header, opened with ``key``."""
    if key is None:
        yield dev
        return
    Path("/run/liveng").mkdir(parents=True, exist_ok=True)
    header = Path("/run/liveng/install-header")
    header.unlink(missing_ok=True)
    part = bootstate.device_path(layout.Role.PERSISTENCE, image_id)
    run(["cryptsetup", "luksHeaderBackup", str(part), "--header-backup-file", str(header)])
    try:
        fd = os.open(dev, os.O_WRONLY)
        try:
            os.pwrite(fd, header.read_bytes(), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        header.unlink(missing_ok=True)
    keyfile = Path("/run/liveng/install-volume-key")  # /run is RAM
    fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key)
        os.close(fd)
        run(["cryptsetup", "open", "--type", "luks2", "--disable-keyring", "--volume-key-file", str(keyfile),
             str(dev), INSTALL_MAPPING])
    finally:
        keyfile.unlink(missing_ok=True)
    try:
        yield Path("/dev/mapper") / INSTALL_MAPPING
    finally:
        os.sync()
        run(["cryptsetup", "close", INSTALL_MAPPING])


def install(target: Path, with_delta: bool, confirm: Callable[[str], bool], say: Callable[[str], None]) -> bool:
    disk = whole_disk(target)
    src = source()
    if disk == src.disk.resolve():
        raise DeviceError(f"{target} is the disk this system runs from")
    encrypted_key = _volume_key(src.image_id)
    why = busy(disk, system.mounts())
    if why:
        raise DeviceError(f"{target} is in use ({why}): unmount it first")
    others = other_disks_with_id(src.image_id, {src.disk.name, disk.name})
    if others:
        raise DeviceError(f"{', '.join(others)} already carries this system (id {src.image_id}); two copies "
                          "besides this one would be ambiguous at boot: remove it first")
    need = MIN_PERSISTENCE
    # A running updated system (an ISO file on p7, bound to the running slot) goes with its slot.
    running = system.booted_system()
    if with_delta or running != layout.SYSTEM_FACTORY:
        with delta.persistence_root(writable=False) as root:  # read only: a RAM mode leaves the card alone
            if with_delta:
                need += int((delta.used_bytes(root / layout.DELTA_DIR) or 0) * 1.2)
            if running != layout.SYSTEM_FACTORY:
                need += update.system_bytes(root, running)
    extents = plan(src.extents, _disk_bytes(disk), need)
    # sfdisk checks the new table before anything is wiped (it refuses what it would not write).
    run(["sfdisk", "--no-act", "--no-reread", "--no-tell-kernel", "--wipe", "never", "--wipe-partitions", "never",
         str(disk)], layout.sfdisk_script(src.image_id, extents))
    size_gib = _disk_bytes(disk) / 2**30
    if _disk_bytes(disk) > layout.MBR_MAX_SECTORS * layout.SECTOR:
        say(f"{target} is larger than 2 TiB: an MBR partition table addresses only the first 2 TiB; the rest "
            "stays unused")
    if not confirm(f"Erase everything on {target} ({size_gib:.1f} GiB) and install this system there? "
                   "Type yes to confirm:"):
        return False
    by_role = {e.role: e for e in extents}
    run(["udevadm", "settle"])  # probes of the checks above (sfdisk --no-act) are over
    fd = os.open(disk, os.O_RDWR)
    try:
        # udev leaves a disk alone while it is locked (BSD lock): no rescans while the copy is made.
        fcntl.flock(fd, fcntl.LOCK_EX)
        say(f"wiping the partition table of {target}")
        _zero(fd, 0, layout.ALIGN)
        os.fsync(fd)
        _delete_partitions(disk)  # the old partitions go, so that nothing mounts them meanwhile
        for role, name in ((layout.Role.BOOT, "the boot partition"), (layout.Role.SYSTEM, "the system"),
                           (layout.SLOTS[src.slot], f"kernel slot {src.slot.upper()}")):
            dest = by_role[role]
            say(f"copying {name} ({dest.size // layout.MiB} MiB)")
            _copy(bootstate.device_path(role, src.image_id), fd, dest.start, dest.size)
        # The other slot empty, and no stale filesystem signature where p7 and the EBRs go.
        other = next(r for name, r in layout.SLOTS.items() if name != src.slot)
        for role in (other, layout.Role.PERSISTENCE):
            _zero(fd, by_role[role].start - layout.ALIGN, 2 * layout.ALIGN)
        os.fsync(fd)
    finally:
        os.close(fd)
    p7 = by_role[layout.Role.PERSISTENCE]
    say(f"making the persistence partition ({p7.size // layout.MiB} MiB)"
        + (" with the current delta" if with_delta else ""))
    with _loop(disk, p7.start, p7.size) as dev, _encrypted(dev, src.image_id, encrypted_key) as fs_dev:
        run(["mkfs.ext4", "-q", "-F", "-L", layout.persistence_label(src.image_id), str(fs_dev)])
        run(["tune2fs", "-o", durable.PERSISTENCE_MOUNT_DEFAULTS, str(fs_dev)])
        with _mount(fs_dev, "ext4") as root:
            (root / layout.PERSISTENCE_CONF).write_text(layout.PERSISTENCE_CONF_CONTENT)
            layout.make_reserve(root)
            if running != layout.SYSTEM_FACTORY:
                say(f"copying system {running}")
                with delta.persistence_root(writable=False) as current:
                    update.copy_system(current, root, running)
                # rw (copied below, or made at the first boot) belongs to that system.
                (root / f"{layout.DELTA_OWNER_PREFIX}{running}").touch(mode=0o644)
            if with_delta:
                os.sync()  # what the copy reads is what a power cut now would leave
                (root / layout.DELTA_DIR).mkdir(mode=0o755)
                with delta.persistence_root() as current:
                    snapshot.copy_tree(current / layout.DELTA_DIR, root / layout.DELTA_DIR)
    p1 = by_role[layout.Role.BOOT]
    mode = bootstate.read_state().mode  # the copy keeps `liveng mode set`
    with _loop(disk, p1.start, p1.size) as dev, _mount(dev, "vfat") as boot:
        # A fresh boot state: the copied slot, then the factory kernel.
        bootenv.write(boot, new_env(src.slot, mode))
    say("writing the boot code and the partition table")
    with open(src.disk, "rb") as f:
        mbr = f.read(layout.ALIGN)
    fd = os.open(disk, os.O_RDWR)
    try:
        os.pwrite(fd, mbr[layout.SECTOR:p1.start], layout.SECTOR)  # GRUB's core.img, for BIOS
        os.fsync(fd)
        # --no-tell-kernel: this system must not see a second disk with its own partition ids.
        run(["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "never", "--wipe-partitions",
             "never", str(disk)], layout.sfdisk_script(src.image_id, extents))
        os.sync()
        os.pwrite(fd, mbr[:BOOT_CODE], 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    _forget_partitions(disk, src)
    return True


def _forget_partitions(disk: Path, src: Source) -> None:
    """Keep the copy's partitions (same ids as this system's) away from this running system.

    udev rereads a disk's partition table when a writer closes it; the copy's partitions would then
    claim /dev/disk/by-partuuid/<id>-NN. They are dropped again; the links return to this disk.
    """
    run(["udevadm", "settle"])
    _delete_partitions(disk)
    run(["udevadm", "settle"])
    for role in (layout.Role.SYSTEM, layout.Role.PERSISTENCE):
        link = bootstate.device_path(role, src.image_id)
        if not link.exists() or resize.disk_of(link) != src.disk:
            raise DeviceError(f"the copy is complete, but {link} no longer points at this system's disk "
                              f"{src.disk}: reboot before running other liveng commands")
