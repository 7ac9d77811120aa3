"""The delta on p7: where it is, and requests (restore, reset) that the initramfs applies at the next boot.

A request is staged whole by the running system: the new delta is made in STAGED_DIR (or, while
another request is pending, the other of STAGED_DIRS) and synced, and only then is PENDING_PATH
written (temporary name, fsync, rename). The initramfs script
live-premount/liveng-delta renames it to the journal SWITCH_PATH and switches with renames; it
rolls forward from any point a power cut leaves behind, so the next boot has the old delta or the
new one, never a mix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from liveng import layout, requests
from liveng.device import bootstate, runner, system
from liveng.device.bootstate import DeviceError
from liveng.durable import fsync_dir
from liveng.requests import Request


def parse_request(text: str) -> Request:
    """The shared format's parser (liveng/requests.py), with the device's error type."""
    try:
        return requests.parse_request(text)
    except requests.RequestError as exc:
        raise DeviceError(str(exc)) from None


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def remove_tree(path: Path) -> None:
    # rm knows every file type a delta holds (whiteouts are device nodes) and is what the initramfs uses.
    if path.exists() or path.is_symlink():
        runner.run(["rm", "-rf", "--one-file-system", str(path)])


@contextlib.contextmanager
def persistence_root(writable: bool = True) -> Iterator[Path]:
    """The root of p7 (its ext4: p7 itself or its LUKS mapping): where live-boot mounted it, else
    mounted here for the duration (read-only unless ``writable``: a report in RAM mode must not
    write the card)."""
    dev = bootstate.persistence_filesystem()
    real = dev.resolve()
    for m in system.mounts():
        if (m.device.startswith("/dev/") and Path(m.device).resolve() == real
                and ("rw" in m.options or not writable)
                and (Path(m.mountpoint) / layout.PERSISTENCE_CONF).exists()):
            yield Path(m.mountpoint)
            return
    with bootstate.mounted(layout.Role.PERSISTENCE, "ext4", writable=writable, dev=dev) as root:
        yield root


def read_pending(root: Path) -> Request | None:
    try:
        text = (root / layout.PENDING_PATH).read_text()
    except FileNotFoundError:
        return None
    return parse_request(text)


def switch_in_progress(root: Path) -> bool:
    # A boot-menu reset not finished (RESET_DELTA_DIR) is one too: its next boot finishes it first.
    return (root / layout.SWITCH_PATH).exists() or (root / layout.RESET_DELTA_DIR).exists()


def drop_pending(root: Path) -> Request | None:
    """Withdraw a pending request; its staged delta goes too."""
    try:
        request = read_pending(root)
    except DeviceError:
        request = Request(action="damaged request")  # withdrawn all the same
    with contextlib.suppress(FileNotFoundError):
        (root / layout.PENDING_PATH).unlink()
        fsync_dir(root / layout.DELTA_STATE_DIR)
    for name in layout.STAGED_DIRS:
        remove_tree(root / name)
    return request


def stage(root: Path, request: Request, fill: Callable[[Path], None],
          adjust_order: Callable[[Path], str] | None = None) -> Request:
    """Make the new delta in STAGED_DIR with ``fill``, sync it, then commit the request.

    ``adjust_order`` (given the staged delta, returns the previous boot order) runs just before the
    commit, so that the boot after the switch has a kernel whose modules the new delta has.
    """
    if switch_in_progress(root):
        raise DeviceError("a restore or reset is being switched in (the boot was interrupted): reboot first")
    (root / layout.DELTA_STATE_DIR).mkdir(mode=0o700, exist_ok=True)
    # A request replaces any earlier one, which stays whole until the new one is: the new delta is
    # made in the other staged directory, and the request's rename switches from one to the other
    # (the campaign's seed 1362263916: a second commit cut while it staged lost the first).
    try:
        earlier = read_pending(root)
    except DeviceError:
        earlier = None
    if earlier is None:
        drop_pending(root)  # none, or a damaged one: withdrawn, and any unfinished staging with it
    name = layout.STAGED_DIRS[1] if earlier and earlier.staged == layout.STAGED_DIRS[0] else layout.STAGED_DIRS[0]
    staged = root / name
    remove_tree(staged)  # an unfinished staging (a power cut), not the earlier request's
    staged.mkdir(mode=0o755)
    # The overlay's root directory takes its owner and mode from the upper directory.
    os.chmod(staged, 0o755)
    try:
        fill(staged)
        os.sync()
    except BaseException:
        remove_tree(staged)
        raise
    request = dataclasses.replace(request, staged=name)
    if adjust_order is not None:
        request = dataclasses.replace(request, order=adjust_order(staged))
    bootstate.write_atomic(root / layout.PENDING_PATH, request.text().encode())
    os.sync()
    if earlier is not None:
        remove_tree(root / earlier.staged)
    return request


def used_bytes(path: Path) -> int | None:
    """Disk usage of a tree (du: it counts hard links once and sparse files by their blocks)."""
    if not path.is_dir():
        return None
    try:
        return int(runner.run(["du", "-s", "-x", "-B1", str(path)]).split()[0])
    except (DeviceError, IndexError, ValueError):
        return None


def filesystem_space(path: Path) -> tuple[int, int]:
    """(size, free) in bytes of the filesystem holding ``path``, as root may use it."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize, st.f_bfree * st.f_frsize

