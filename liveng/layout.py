"""The liveng disk layout: the contract between the host builder and the device tool.

Standard library only: this module is installed inside every image.

The disk uses an MBR partition table because the Raspberry Pi boot ROM reads nothing else:

    p1  FAT32 (0x0c, bootable)  boot loaders and boot state
    p2  ISO9660 "system"        live/vmlinuz, live/initrd.img, live/filesystem.squashfs, liveng/SHA256SUMS
    p3  extended (0x0f)
    p5  ISO9660 kernel slot A   the kernel and initrd that boot by default
    p6  ISO9660 kernel slot B   the other slot of an A/B kernel update
    p7  ext4 persistence        persistence.conf "/ union": only the delta

Every image has an id of 8 hex digits. It is the MBR disk identifier (so the partitions are
``<id>-01`` … ``<id>-07`` in /dev/disk/by-partuuid), the FAT volume serial of p1 (which GRUB
searches for) and part of the persistence label, so that an image boots its own system and
persistence partitions even when another liveng disk is attached.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

SECTOR = 512
MiB = 1024 * 1024
# Partitions start on MiB boundaries; a logical partition's EBR sits in the MiB before it.
ALIGN = MiB

# 2: p7 may hold updated systems and a delta per system (SYSTEMS_DIR, DELTAS_DIR); every initramfs of
# the image switches deltas with the system it boots, so only such an image takes system updates.
LAYOUT_VERSION = 2
UPDATABLE_LAYOUT = 2
# An MBR entry holds 32-bit sector numbers: nothing of liveng's may end past 2 TiB. On a bigger disk
# the rest stays unused (sfdisk would silently wrap a larger size).
MBR_MAX_SECTORS = 2**32


class Role(Enum):
    BOOT = "boot"
    SYSTEM = "system"
    EXTENDED = "extended"
    SLOT_A = "slot-a"
    SLOT_B = "slot-b"
    PERSISTENCE = "persistence"


@dataclass(frozen=True)
class Partition:
    number: int
    role: Role
    mbr_type: int
    fstype: str | None
    bootable: bool = False

    @property
    def logical(self) -> bool:
        return self.number >= 5


PARTITIONS: tuple[Partition, ...] = (
    Partition(1, Role.BOOT, 0x0C, "vfat", bootable=True),
    Partition(2, Role.SYSTEM, 0x83, "iso9660"),
    Partition(3, Role.EXTENDED, 0x0F, None),
    Partition(5, Role.SLOT_A, 0x83, "iso9660"),
    Partition(6, Role.SLOT_B, 0x83, "iso9660"),
    Partition(7, Role.PERSISTENCE, 0x83, "ext4"),
)

SLOTS: dict[str, Role] = {"a": Role.SLOT_A, "b": Role.SLOT_B}

# Boot entries, in GRUB menu order (GRUB's fallback list takes entry numbers only); each name is
# also the value of liveng.boot= on the kernel command line.
ENTRY_SLOT = {"a": "slot-a", "b": "slot-b"}
ENTRY_FACTORY = "factory"
ENTRIES = (ENTRY_SLOT["a"], ENTRY_SLOT["b"], ENTRY_FACTORY)
# After the numbered entries and never in the boot order: boots the factory kernel with
# KERNEL_ARG_RESET once GRUB has asked for confirmation.
ENTRY_FACTORY_RESET = "factory-reset"

# Boot state in p1's grubenv. ENV_ORDER lists menu entry numbers, preferred first; GRUB boots the
# first and counts down ENV_TRIES on every attempt; at 0 it drops that entry and moves on.
# `liveng kernel mark-good` (run once the system is up) resets the count and records ENV_GOOD.
ENV_ORDER = "liveng_order"
ENV_TRIES = "liveng_tries"
ENV_GOOD = "liveng_good"
TRIES = 3


def order_to_env(order: tuple[str, ...] | list[str]) -> str:
    return " ".join(str(ENTRIES.index(e)) for e in order)


def order_from_env(value: str) -> tuple[str, ...]:
    """Entry names from the numbers GRUB keeps; numbers GRUB would not know are left out."""
    return tuple(ENTRIES[int(w)] for w in value.split() if w.isdigit() and int(w) < len(ENTRIES))


INITIAL_ORDER = order_to_env([ENTRY_SLOT["a"], ENTRY_FACTORY])


def partition(role: Role) -> Partition:
    for p in PARTITIONS:
        if p.role is role:
            return p
    raise KeyError(role)


# Labels. ISO9660 volume ids allow A-Z 0-9 _ ; FAT labels 11 characters; ext4 labels 16 bytes.
BOOT_LABEL = "LIVENG"
SYSTEM_VOLID = "LIVENG_SYSTEM"
SLOT_VOLID = {"a": "LIVENG_SLOT_A", "b": "LIVENG_SLOT_B"}
PERSISTENCE_LABEL_PREFIX = "liveng-"

# Paths inside the partitions.
LIVE_DIR = "live"
KERNEL_PATH = "live/vmlinuz"
INITRD_PATH = "live/initrd.img"
SQUASHFS_PATH = "live/filesystem.squashfs"
MANIFEST_PATH = "liveng/SHA256SUMS"
IMAGE_INFO_PATH = "liveng/image.json"  # on p1 and p2
SLOT_INFO_PATH = "liveng/slot.json"
GRUB_DIR = "boot/grub"
GRUB_CFG_PATH = "boot/grub/grub.cfg"
# The boot state, in a directory of its own at p1's root: nothing it rewrites shares a FAT or
# directory sector with what GRUB and the firmware read (liveng/host/fatlayout.py).
BOOT_STATE_DIR = "liveng-state"
GRUBENV_PATH = "liveng-state/grubenv"
# The boot state's second copy (same 1024-byte format). Every writer, GRUB and the device alike,
# writes GRUBENV_PATH first and this second, so a torn write damages at most one of them; readers
# take the primary when it is valid, else this one (liveng/grubenv.py choose()).
GRUBENV_BACKUP_PATH = "liveng-state/grubenv.bak"
# Where images built before 2026-12-07 keep them (beside grub.cfg), and their menus read them: the
# device keeps using these on such a card (device/bootenv.py paths()).
LEGACY_GRUBENV_PATHS = ("boot/grub/grubenv", "boot/grub/grubenv.bak")


def grubenv_paths(menu: bytes) -> tuple[str, str]:
    """The (primary, backup) boot state files the card's grub.cfg ``menu`` reads (b"": unreadable, so
    GRUB has no menu either: this build's paths)."""
    if f"/{LEGACY_GRUBENV_PATHS[0]}".encode() in menu:
        return LEGACY_GRUBENV_PATHS
    return GRUBENV_PATH, GRUBENV_BACKUP_PATH
EFI_BOOT_DIR = "EFI/BOOT"
# Settings the owner edits on p1 after flashing (liveng/settings.py), applied at boot by
# liveng-settings.service; a file that cannot be applied gets the reason written beside it.
SETTINGS_PATH = "liveng-settings.toml"
SETTINGS_ERROR_PATH = "liveng-settings-error.txt"
# The entries of p1's root the device rewrites; the build keeps them apart from the rest.
P1_RUNTIME = (BOOT_STATE_DIR, SETTINGS_PATH)
# On p7 in DELTA_STATE_DIR (outside the delta, which a reset discards): what applying the file again
# after a reset needs and p1 no longer holds (the Wi-Fi key derived from the removed passphrase).
SETTINGS_KEPT_NAME = "settings-kept.json"
# In the image: "no" when the recipe turned the settings file on p1 off ([settings] from_boot_partition).
SETTINGS_POLICY_PATH = "etc/liveng/settings-from-boot-partition"
# arm64: the kernel's device trees beside it (in each slot and on p2), as dtbs/<vendor>/<board>.dtb,
# so that a kernel update also updates the device tree. Only the boards liveng boots by itself
# (the Raspberry Pi family); other arm64 machines bring their own device tree or ACPI.
DTB_DIR = "dtbs"
DTB_GLOBS = ("broadcom/bcm27*-rpi-*.dtb", "broadcom/bcm2837-rpi-*.dtb")
PERSISTENCE_CONF = "persistence.conf"
PERSISTENCE_CONF_CONTENT = "/ union\n"

# On p7, next to persistence.conf. live-boot (with "/ union") mounts the overlay with
# upperdir=rw, workdir=work. liveng's own data lives in DELTA_STATE_DIR, outside the overlay.
DELTA_DIR = "rw"
DELTA_WORK_DIR = "work"
DELTA_STATE_DIR = "liveng"
# On p7 in DELTA_STATE_DIR: empty files kept for their inodes. overlayfs makes its work directory
# and a test whiteout at every mount, so on an ext4 with no free inode the delta cannot be mounted
# and the boot fails (root's reserved blocks cover a full disk, nothing covers inodes). The
# initramfs (live-premount/liveng-room) deletes them when fewer than RESERVE_RELEASE_BELOW inodes
# are free and makes them again at a boot with RESERVE_REFILL_FROM free; with fewer than
# INODES_NEEDED even then, persistent mode boots as ram mode does (the delta copied into RAM, p7
# read-only) and says so in INITRAMFS_NOTICE_PATH.
RESERVE_DIR = "liveng/reserve"
RESERVE_FILES = 64
RESERVE_RELEASE_BELOW = 16
RESERVE_REFILL_FROM = 1024
INODES_NEEDED = 8
# What liveng's initramfs scripts did at this boot that the owner should know (one line each;
# liveng status shows them as warnings); moved into the system with /run.
INITRAMFS_NOTICE_PATH = "/run/liveng-initramfs-notices"
# e2fsck's output when live-premount/liveng-p7 had it repair p7 at this boot.
P7_FSCK_LOG_PATH = "/run/liveng-p7-fsck.log"
# There when live-premount/liveng-p7 found p7 shut down uncleanly (a power cut): what apt wrote without
# fsync is checked at this boot (liveng-apt-recover.service, device/aptrecover.py).
P7_UNCLEAN_PATH = "/run/liveng-p7-unclean"
ROOM_RAM_PATH = "/run/liveng-room-ram"  # there: live-bottom/liveng-ram brings the delta into RAM


def make_reserve(p7_root: Path) -> None:
    """The inode reserve on a new p7 (the image build, liveng install)."""
    state = p7_root / DELTA_STATE_DIR
    state.mkdir(mode=0o700, exist_ok=True)
    (p7_root / RESERVE_DIR).mkdir(mode=0o700, exist_ok=True)
    for i in range(RESERVE_FILES):
        (p7_root / RESERVE_DIR / str(i)).touch(mode=0o600)
SNAPSHOT_DIR = "liveng/snapshots"  # NAME.tar.zst (GNU tar | zstd) and NAME.json beside it
SNAPSHOT_SUFFIX = ".tar.zst"
# A restore or reset is staged by the running system and switched in by the initramfs at the
# next boot (liveng/device/data/initramfs/live-premount/liveng-delta), before the overlay exists:
#   STAGED_DIR   the complete new delta, made and synced before PENDING_PATH is written; a
#                request staged while another is pending goes to the other of STAGED_DIRS and
#                names it (requests.py "staged"), so the earlier one stays whole until it replaces it
#   PENDING_PATH the request (liveng/requests.py: key=value lines)
#   SWITCH_PATH  the journal: the request renamed (nothing written, so it works on a full p7); once
#                the old delta is set aside the switch is rolled forward at every boot until done
#   OLD_DELTA_DIR the delta being replaced, deleted last
#   RESET_DELTA_DIR a factory reset confirmed at the boot menu renames the delta here first (no new
#                inode or block, so it works on a full p7); while it exists every boot finishes the reset
STAGED_DIR = "liveng/rw.new"
STAGED_DIRS = (STAGED_DIR, "liveng/rw.next")
OLD_DELTA_DIR = "liveng/rw.old"
RESET_DELTA_DIR = "liveng/rw.reset"
PENDING_PATH = "liveng/pending"
SWITCH_PATH = "liveng/switch"
ACTION_RESTORE = "restore"
ACTION_RESET = "reset"
# liveng commit (RAM modes): the RAM delta, staged like a restore and switched in at the next boot.
ACTION_COMMIT = "commit"

# Whole-system updates (liveng/bundle.py, liveng/device/update.py). A system is "factory" (p2) or an
# updated system on p7 in SYSTEMS_DIR/<name>/ (bundle.SYSTEM_NAME_RE): SYSTEM_ISO_NAME, the ISO9660
# image that p2 of its build holds, read through a loop device, with its signed metadata beside it.
# Each kernel slot is bound to one system (SLOT_SYSTEM_PATH in the slot, one line; absent: factory),
# and each system has its own delta: the booted system's is DELTA_DIR, the others wait in
# DELTAS_DIR/<name>. Which system owns DELTA_DIR says the empty marker file DELTA_OWNER_PREFIX<name>
# (none: factory). The initramfs (live-premount/liveng-system) swaps deltas with renames only:
#   rw -> DELTAS_DIR/<owner>, marker renamed to the booted system, DELTAS_DIR/<booted> -> rw
# and whenever rw is missing it first moves DELTAS_DIR/<marker's system> back, so every step of a
# swap cut by a power failure is finished or undone at the next boot.
SYSTEM_FACTORY = "factory"
SYSTEMS_DIR = "liveng/systems"
SYSTEM_ISO_NAME = "system.iso"
SYSTEM_META_NAME = "bundle.json"
SYSTEM_SIG_NAME = "bundle.json.sig"
DELTAS_DIR = "liveng/deltas"
DELTA_OWNER_PREFIX = "liveng/owner."
SLOT_SYSTEM_PATH = "liveng/system"
# Downloads in progress (resumable), on p7 outside the delta.
UPDATE_INCOMING_DIR = "liveng/incoming"
# Where the initramfs tells the running system which system it booted (moved with /run).
BOOTED_SYSTEM_PATH = "/run/liveng-system"
# Boot modes. The default is in p1's grubenv (ENV_MODE, from the recipe, `liveng mode set`); extra
# menu entries after the numbered ones boot one time in another mode. The kernel is told the mode
# (KERNEL_ARG_MODE), the initramfs and the device tool act on it.
#   persistent  the delta is p7:rw, the overlay's upper directory (live-boot's persistence)
#   ram         live-boot's toram: the squashfs is copied into RAM, the upper directory is a tmpfs
#               that starts as a copy of p7:rw; the card is not touched after the initramfs
#   ram-paths   like ram, but the listed directories (KERNEL_ARG_PATHS, and PATHS_PATH on p7) are
#               overlays whose upper directories are p7:rw/<path>, as in persistent mode
MODE_PERSISTENT = "persistent"
MODE_RAM = "ram"
MODE_RAM_PATHS = "ram-paths"
MODES = (MODE_PERSISTENT, MODE_RAM, MODE_RAM_PATHS)
ENV_MODE = "liveng_mode"
# The boot order `liveng kernel mark-good` confirmed last. While it equals ENV_ORDER, GRUB counts no
# tries in the RAM modes, so that a RAM boot leaves the card unwritten (mark-good then has nothing to
# change); a new kernel changes the order and is counted as in persistent mode.
ENV_CONFIRMED = "liveng_confirmed"
PATHS_PATH = "liveng/persistent-paths"  # on p7: one absolute path a line, added to the recipe's
PATHS_WORK_DIR = "liveng/paths-work"  # on p7: the work directories of the persistent paths' overlays
# Where the initramfs leaves things in the RAM modes (moved into the system with /run).
RAM_UPPER = "/run/live/overlay/rw"  # live-boot's tmpfs upper directory
RAM_PERSISTENCE_MOUNT = "/run/live/liveng-persistence"  # p7, mounted in ram-paths mode only
RAM_SQUASHFS = "filesystem.squashfs"  # what toram= copies (the kernel and initrd stay on the card)
PATH_RE = re.compile(r"^(/[A-Za-z0-9._@+-]+)+$")

# Where live-boot mounts things on the running system.
LIVE_MEDIUM_MOUNT = "/run/live/medium"
LIVE_PERSISTENCE_MOUNT = "/run/live/persistence"

ID_RE = re.compile(r"^[0-9a-f]{8}$")
KERNEL_ARG_ID = "liveng.id"
KERNEL_ARG_BOOT = "liveng.boot"  # which menu entry booted: slot-a, slot-b or factory
KERNEL_ARG_MODE = "liveng.mode"  # one of MODES
KERNEL_ARG_PATHS = "liveng.paths"  # ram-paths: the recipe's persistent paths, comma-separated
# The GRUB entry "Factory reset" asks for confirmation and then boots the factory kernel with
# liveng.reset=yes; the initramfs resets the delta before live-boot mounts it.
KERNEL_ARG_RESET = "liveng.reset"
# arm64: the device tree GRUB loaded from the entry's partition. Not "liveng.dtb=": the kernel's EFI
# stub takes any "dtb=" in the command line, even inside another word, as a file to load, and fails.
KERNEL_ARG_DTB = "liveng.devicetree"


# Where the image keeps the LUKS key file of an encrypted p7 (recipe: persistence.key_file): the
# initramfs hook puts it into every initramfs made on the device, live-premount/liveng-luks reads it.
KEY_FILE_PATH = "etc/liveng/persistence.key"
# GNU tar inside the initramfs (live-bottom/liveng-ram copies the committed delta with it).
INITRAMFS_TAR_PATH = "usr/lib/liveng/tar"


class LayoutError(ValueError):
    """An id, label or size that does not fit the layout contract."""


def new_image_id() -> str:
    # 0 is "no disk identifier" for some tools: avoid it.
    while True:
        value = secrets.token_hex(4)
        if value != "00000000":
            return value


def check_image_id(image_id: str) -> str:
    if not ID_RE.fullmatch(image_id):
        raise LayoutError(f"image id {image_id!r} is not 8 lowercase hex digits")
    return image_id


def fat_serial(image_id: str) -> str:
    """The FAT volume serial as blkid and GRUB print it: XXXX-XXXX."""
    check_image_id(image_id)
    return f"{image_id[:4]}-{image_id[4:]}".upper()


def persistence_label(image_id: str) -> str:
    return PERSISTENCE_LABEL_PREFIX + check_image_id(image_id)


PARTUUID_DIR = "/dev/disk/by-partuuid"


def partuuid_suffix(number: int) -> str:
    return f"-{number:02x}"


def partuuid(image_id: str, number: int) -> str:
    return f"{check_image_id(image_id)}{partuuid_suffix(number)}"


def partuuid_path(image_id: str, role: Role) -> str:
    return f"{PARTUUID_DIR}/{partuuid(image_id, partition(role).number)}"


@dataclass(frozen=True)
class Extent:
    """Where one partition lies on the disk, in bytes."""

    number: int
    role: Role
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size


def align_up(value: int, alignment: int = ALIGN) -> int:
    return -(-value // alignment) * alignment


def plan(boot: int, system: int, slot: int, persistence: int) -> tuple[list[Extent], int]:
    """Place the partitions; sizes in bytes. Returns the extents and the disk size.

    The extended partition starts one ALIGN before p5, so that every logical partition has
    its EBR in the aligned gap in front of it.
    """
    for name, value in (("boot", boot), ("system", system), ("slot", slot), ("persistence", persistence)):
        if value <= 0 or value % ALIGN:
            raise LayoutError(f"{name} size {value} is not a positive multiple of {ALIGN}")
    extents: list[Extent] = []
    pos = ALIGN
    extents.append(Extent(1, Role.BOOT, pos, boot))
    pos += boot
    extents.append(Extent(2, Role.SYSTEM, pos, system))
    pos += system
    ext_start = pos
    logical: list[Extent] = []
    for number, role, size in ((5, Role.SLOT_A, slot), (6, Role.SLOT_B, slot), (7, Role.PERSISTENCE, persistence)):
        pos += ALIGN
        logical.append(Extent(number, role, pos, size))
        pos += size
    extents.append(Extent(3, Role.EXTENDED, ext_start, pos - ext_start))
    extents.extend(logical)
    return extents, pos


def sfdisk_script(image_id: str, extents: list[Extent]) -> str:
    """The partition table as an sfdisk script (the host builder and `liveng install` write it)."""
    lines = ["label: dos", f"label-id: 0x{check_image_id(image_id)}", "unit: sectors", ""]
    for ext in extents:
        part = partition(ext.role)
        fields = [f"start={ext.start // SECTOR}", f"size={ext.size // SECTOR}", f"type={part.mbr_type:x}"]
        if part.bootable:
            fields.append("bootable")
        lines.append(", ".join(fields))
    return "\n".join(lines) + "\n"


def fresh_env(order: str, mode: str) -> dict[str, str]:
    """The boot state of a newly made disk (build, liveng install): ``order`` with fresh tries."""
    return {ENV_ORDER: order, ENV_TRIES: str(TRIES), ENV_MODE: mode}
