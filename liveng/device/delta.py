"""The delta on p7: where it is, and requests (restore, reset) that the initramfs applies at the next boot.

A request is staged whole by the running system: the new delta is made in STAGED_DIR and synced,
and only then is PENDING_PATH written (temporary name, fsync, rename). The initramfs script
live-premount/liveng-delta turns it into the journal SWITCH_PATH and switches with renames; it
rolls forward from any point a power cut leaves behind, so the next boot has the old delta or the
new one, never a mix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from liveng import layout
from liveng.device import bootstate, system
from liveng.device.bootstate import DeviceError

_KEY_RE = re.compile(r"^[a-z_]+$")


@dataclass(frozen=True)
class Request:
    action: str  # layout.ACTION_RESTORE or layout.ACTION_RESET
    snapshot: str = ""  # what a restore restores: a snapshot name or an archive path
    delete_snapshots: bool = False
    created: str = ""
    order: str = ""  # the boot order (grubenv numbers) before the request, put back by a cancel
    keep: str = ""  # a commit in ram-paths mode: the persistent paths (comma-separated), kept from the old delta

    def text(self) -> str:
        # key=value lines: the initramfs reads them with the shell's read, no JSON parser there.
        return (f"action={self.action}\nsnapshot={self.snapshot}\n"
                f"delete_snapshots={int(self.delete_snapshots)}\ncreated={self.created}\norder={self.order}\n"
                f"keep={self.keep}\n")

    def describe(self) -> str:
        if self.action == layout.ACTION_COMMIT:
            what = "commit of the RAM delta" + (f" ({self.snapshot})" if self.snapshot else "")
            return f"{what}, made {self.created or 'at an unknown time'}, switched in at the next boot"
        if self.action == layout.ACTION_RESTORE:
            what = f"restore of snapshot {self.snapshot}"
        else:
            what = "factory reset" + (" (snapshots deleted too)" if self.delete_snapshots else "")
        return f"{what}, requested {self.created or 'at an unknown time'}, applied at the next boot"


def parse_request(text: str) -> Request:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not _KEY_RE.fullmatch(key) or "\n" in value:
            raise DeviceError(f"{layout.PENDING_PATH}: malformed line {line!r}; cancel it with 'liveng cancel'")
        fields[key] = value
    action = fields.get("action", "")
    if action not in (layout.ACTION_RESTORE, layout.ACTION_RESET, layout.ACTION_COMMIT):
        raise DeviceError(f"{layout.PENDING_PATH}: unknown action {action!r}; cancel it with 'liveng cancel'")
    if action == layout.ACTION_RESTORE and not fields.get("snapshot"):
        raise DeviceError(f"{layout.PENDING_PATH}: a restore without a snapshot; cancel it with 'liveng cancel'")
    if fields.get("delete_snapshots", "0") not in ("0", "1"):
        raise DeviceError(f"{layout.PENDING_PATH}: delete_snapshots must be 0 or 1")
    return Request(action=action, snapshot=fields.get("snapshot", ""),
                   delete_snapshots=fields.get("delete_snapshots") == "1", created=fields.get("created", ""),
                   order=fields.get("order", ""), keep=fields.get("keep", ""))


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def remove_tree(path: Path) -> None:
    # rm knows every file type a delta holds (whiteouts are device nodes) and is what the initramfs uses.
    if path.exists() or path.is_symlink():
        bootstate.run(["rm", "-rf", "--one-file-system", str(path)])


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
    return (root / layout.SWITCH_PATH).exists()


def drop_pending(root: Path) -> Request | None:
    """Withdraw a pending request; its staged delta goes too."""
    try:
        request = read_pending(root)
    except DeviceError:
        request = Request(action="damaged request")  # withdrawn all the same
    with contextlib.suppress(FileNotFoundError):
        (root / layout.PENDING_PATH).unlink()
        bootstate.fsync_dir(root / layout.DELTA_STATE_DIR)
    remove_tree(root / layout.STAGED_DIR)
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
    # A request replaces any earlier one; the earlier one is withdrawn first, so that a power cut
    # here leaves no request rather than a request pointing at a half-made delta.
    drop_pending(root)
    staged = root / layout.STAGED_DIR
    staged.mkdir(mode=0o755)
    # The overlay's root directory takes its owner and mode from the upper directory.
    os.chmod(staged, 0o755)
    try:
        fill(staged)
        os.sync()
    except BaseException:
        remove_tree(staged)
        raise
    if adjust_order is not None:
        request = dataclasses.replace(request, order=adjust_order(staged))
    bootstate.write_atomic(root / layout.PENDING_PATH, request.text().encode())
    os.sync()
    return request


def used_bytes(path: Path) -> int | None:
    """Disk usage of a tree (du: it counts hard links once and sparse files by their blocks)."""
    if not path.is_dir():
        return None
    proc = subprocess.run(["du", "-s", "-x", "-B1", str(path)], capture_output=True, text=True, check=False)
    try:
        return int(proc.stdout.split()[0])
    except (IndexError, ValueError):
        return None


def filesystem_space(path: Path) -> tuple[int, int]:
    """(size, free) in bytes of the filesystem holding ``path``, as root may use it."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize, st.f_bfree * st.f_frsize

