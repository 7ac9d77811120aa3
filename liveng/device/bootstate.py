"""The boot state in p1's grubenv, and the device's partitions by this image's id."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from liveng import layout
from liveng.device import bootenv, system
from liveng.device.runner import DeviceError, run

__all__ = ["DeviceError", "run"]  # the device modules' shared names, from runner


def image_id() -> str:
    value = system.cmdline_args().get(layout.KERNEL_ARG_ID)
    if not value or not layout.ID_RE.fullmatch(value):
        raise DeviceError("this system was not booted by a liveng boot loader (no liveng.id= on the kernel "
                          "command line)")
    return value


def device_path(role: layout.Role, ident: str | None = None) -> Path:
    return Path(layout.partuuid_path(ident or image_id(), role))


LUKS_MAGIC = b"LUKS\xba\xbe"


def is_luks(part: Path) -> bool:
    with open(part, "rb") as f:
        return f.read(len(LUKS_MAGIC)) == LUKS_MAGIC


def opened_mapping(part: Path) -> Path | None:
    """/dev/mapper/NAME of the device-mapper device (the opened LUKS) that holds ``part``, if any."""
    holders = Path("/sys/class/block") / part.resolve().name / "holders"
    for holder in sorted(holders.iterdir()) if holders.is_dir() else ():
        name_file = Path("/sys/class/block") / holder.name / "dm/name"
        if name_file.exists():
            return Path("/dev/mapper") / name_file.read_text().strip()
    return None


def persistence_filesystem() -> Path:
    """The block device with p7's ext4: p7 itself or, encrypted, the LUKS mapping opened at boot."""
    part = device_path(layout.Role.PERSISTENCE)
    if not part.exists():
        raise DeviceError(f"{part} (the persistence partition) is missing")
    if not is_luks(part):
        return part
    mapping = opened_mapping(part)
    if mapping is None:
        raise DeviceError(f"the persistence partition {part.resolve()} is encrypted and locked: it is unlocked "
                          "at boot (passphrase or key file); this boot runs without it")
    return mapping


@contextlib.contextmanager
def mounted(role: layout.Role, fstype: str, writable: bool = False, dev: Path | None = None) -> Iterator[Path]:
    """Mount one of this image's partitions (or ``dev`` for it) on a private directory for the duration."""
    dev = dev or device_path(role)
    if not dev.exists():
        raise DeviceError(f"{dev} ({role.value} partition) is missing")
    Path("/run/liveng").mkdir(parents=True, exist_ok=True)
    where = Path(tempfile.mkdtemp(prefix=f"{role.value}.", dir="/run/liveng"))
    # noatime: reading a file would otherwise rewrite its directory entry, beside unchanging ones.
    opts = "rw,flush,noatime" if writable and fstype == "vfat" else ("rw" if writable else "ro")
    try:
        run(["mount", "-t", fstype, "-o", opts, str(dev), str(where)])
        try:
            yield where
        finally:
            if writable:
                os.sync()
            run(["umount", str(where)])
    finally:
        with contextlib.suppress(OSError):
            where.rmdir()


@dataclass(frozen=True)
class BootState:
    order: tuple[str, ...]
    tries: int | None
    good: str | None
    confirmed: str | None = None  # ENV_CONFIRMED: the order the last good boot confirmed
    mode: str = layout.MODE_PERSISTENT  # ENV_MODE: the boot mode GRUB uses by default
    damaged: tuple[str, ...] = ()  # copies of the env found damaged ("backup", "primary")

    @property
    def preferred(self) -> str:
        return self.order[0] if self.order else layout.ENTRY_SLOT["a"]


def _state(env: dict[str, str]) -> BootState:
    order = layout.order_from_env(env.get(layout.ENV_ORDER, layout.INITIAL_ORDER))
    tries_text = env.get(layout.ENV_TRIES, "")
    mode = env.get(layout.ENV_MODE, "")
    return BootState(order=order, tries=int(tries_text) if tries_text.isdigit() else None,
                     good=env.get(layout.ENV_GOOD) or None, confirmed=env.get(layout.ENV_CONFIRMED),
                     mode=mode if mode in layout.MODES else layout.MODE_PERSISTENT)


def write_atomic(path: Path, data: bytes, mode: int | None = None, owner: tuple[int, int] | None = None) -> None:
    bootenv.write_atomic(path, data, mode, owner)


def read_state() -> BootState:
    """The boot state (read-only: a RAM-mode boot must not write the card just to look). A damaged
    copy is reported on stderr and repaired by the next update_state (mark-good is one)."""
    with bootenv.locked(), mounted(layout.Role.BOOT, "vfat") as boot:
        choice = bootenv.read(boot)
    return dataclasses.replace(_state(choice.env), damaged=tuple(sorted(choice.damaged)))


def update_state(order: tuple[str, ...] | None = None, tries: int | None = None, good: str | None = None,
                 confirmed: str | None = None, mode: str | None = None) -> BootState:
    """Change some of the boot state; what is not given stays as it is."""
    changes: dict[str, str] = {}
    if order is not None:
        changes[layout.ENV_ORDER] = layout.order_to_env(order)
    if tries is not None:
        changes[layout.ENV_TRIES] = str(tries)
    if good is not None:
        changes[layout.ENV_GOOD] = good
    if confirmed is not None:
        changes[layout.ENV_CONFIRMED] = confirmed
    if mode is not None:
        changes[layout.ENV_MODE] = mode
    with bootenv.locked(), mounted(layout.Role.BOOT, "vfat", writable=True) as boot:
        return _state(bootenv.update(boot, changes))


def repair() -> BootState:
    """Rewrite both copies from the one that counts (or the defaults): update_state with no change."""
    return update_state()
