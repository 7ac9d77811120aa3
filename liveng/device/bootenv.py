"""The one owner of p1's boot state files (layout.GRUBENV_PATH and its backup) on the device.

Cards built before the boot state had a directory of its own keep it beside grub.cfg, where their
menu reads it (layout.LEGACY_GRUBENV_PATHS): ``paths`` asks the card's menu.

Every change goes through ``update`` under ``locked()``: the lock serialises the device's writers
(liveng-boot-ok, kernel install from an apt hook, mode set, ...), and ``write`` puts the primary
first, then the backup, each whole (temporary file, fsync, rename). GRUB writes in the same order
(grub.cfg), so at any moment at least one copy is valid; ``read`` takes the one that counts
(grubenv.choose) and says on stderr what is damaged. ``update`` rewrites both, which repairs a
damaged copy from the good one, or from the defaults when both are gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from liveng import grubenv, layout
from liveng.durable import fsync_dir

LOCK_PATH = Path("/run/liveng/boot-state.lock")
_held = threading.local()  # how deep this thread is in locked(): flock is per open file, not per process


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Hold the boot-state lock (re-entrant: kernel install holds it around its own updates)."""
    depth = getattr(_held, "depth", 0)
    if depth:
        _held.depth = depth + 1
        try:
            yield
        finally:
            _held.depth = depth
        return
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _held.depth = 1
        try:
            yield
        finally:
            _held.depth = 0
    finally:
        os.close(fd)  # closing drops the flock


def write_atomic(path: Path, data: bytes, mode: int | None = None, owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` whole: a power cut leaves the old content or the new, never a part.

    The temporary name is new for every call (two writers never share it) and is created with
    O_EXCL|O_NOFOLLOW; a symlink at ``path`` itself is refused, not followed. ``mode`` and
    ``owner`` are set before the rename (not on FAT, which has neither: leave them None).
    """
    if path.is_symlink():
        raise OSError(f"{path} is a symbolic link: refusing to replace it")
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o644 if mode is None else 0o600)
            break
        except FileExistsError:
            continue
    try:
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
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def _load(path: Path) -> bytes | str | None:
    """The copy's bytes; None when it is missing; why, when it cannot be read (a worn card, or a FAT
    whose chain for the file a power cut left half-written: the kernel answers EIO)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


def paths(boot: Path) -> tuple[str, str]:
    """p1's (primary, backup) boot state files: where this card's menu reads them."""
    try:
        menu = (boot / layout.GRUB_CFG_PATH).read_bytes()
    except OSError:
        menu = b""
    return layout.grubenv_paths(menu)


def read(boot: Path) -> grubenv.Choice:
    """The boot state on the mounted p1 ``boot``: never raises for a bad env, warns instead."""
    primary, backup = paths(boot)
    choice = grubenv.choose(_load(boot / primary), _load(boot / backup))
    for copy, why in choice.damaged.items():
        name = primary if copy == "primary" else backup
        print(f"liveng: warning: {name} on the boot partition is damaged ({why}); using the "
              f"{'built-in defaults' if choice.source == 'defaults' else choice.source}; it is repaired "
              "at the next change of the boot state", file=sys.stderr)
    return choice


def write(boot: Path, env: dict[str, str]) -> None:
    """Replace both copies: the primary first, then the backup (the order GRUB writes them in)."""
    primary, backup = paths(boot)
    data = grubenv.copies(env)
    (boot / primary).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(boot / primary, data[0])
    os.sync()
    write_atomic(boot / backup, data[1])
    os.sync()


def update(boot: Path, changes: dict[str, str]) -> dict[str, str]:
    """Read, change, write both copies (which repairs a damaged one); the caller holds locked()."""
    choice = read(boot)
    env = {**choice.env, **changes}
    if choice.damaged:
        print(f"liveng: repairing the boot state's {' and '.join(sorted(choice.damaged))} copy from the "
              f"{choice.source}", file=sys.stderr)
    if changes or choice.damaged or env != choice.env:
        write(boot, env)
    return env
