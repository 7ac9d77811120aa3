"""The boot state in p1's grubenv, and the device's partitions by this image's id."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from liveng import grubenv, layout
from liveng.device import system


class DeviceError(Exception):
    """A device command could not do its work; the message says why and what to do."""


def run(argv: list[str], input_text: str | None = None) -> str:
    try:
        proc = subprocess.run(argv, input=input_text, stdin=None if input_text is not None else subprocess.DEVNULL,
                              capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise DeviceError(f"{argv[0]} is not installed: this image lacks a package liveng needs") from None
    if proc.returncode != 0:
        raise DeviceError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


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
    opts = "rw,flush" if writable and fstype == "vfat" else ("rw" if writable else "ro")
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


def read_env(boot: Path) -> dict[str, str]:
    path = boot / layout.GRUBENV_PATH
    try:
        return grubenv.parse(path.read_bytes())
    except FileNotFoundError:
        return {}
    except grubenv.GrubEnvError as exc:
        raise DeviceError(f"{layout.GRUBENV_PATH} on the boot partition is damaged ({exc}); "
                          "GRUB falls back to slot A until it is rewritten") from None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int | None = None, owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` whole: a power cut leaves the old content or the new, never a part.

    ``mode`` and ``owner`` are set before the rename (not on FAT, which has neither: leave them None).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644 if mode is None else 0o600)
    try:
        os.write(fd, data)
        if owner is not None:
            os.fchown(fd, *owner)
        if mode is not None:
            os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_env(boot: Path, env: dict[str, str]) -> None:
    """Replace grubenv whole (GRUB reads either the old file or the new one)."""
    write_atomic(boot / layout.GRUBENV_PATH, grubenv.serialize(env))
    os.sync()


def read_state() -> BootState:
    with mounted(layout.Role.BOOT, "vfat") as boot:
        return _state(read_env(boot))


def update_state(order: tuple[str, ...] | None = None, tries: int | None = None, good: str | None = None,
                 confirmed: str | None = None, mode: str | None = None) -> BootState:
    """Change some of the boot state; what is not given stays as it is."""
    with mounted(layout.Role.BOOT, "vfat", writable=True) as boot:
        env = read_env(boot)
        if order is not None:
            env[layout.ENV_ORDER] = layout.order_to_env(order)
        if tries is not None:
            env[layout.ENV_TRIES] = str(tries)
        if good is not None:
            env[layout.ENV_GOOD] = good
        if confirmed is not None:
            env[layout.ENV_CONFIRMED] = confirmed
        if mode is not None:
            env[layout.ENV_MODE] = mode
        write_env(boot, env)
        return _state(env)
