"""Snapshots of the delta: GNU tar | zstd archives that keep what overlayfs needs.

A delta is not a plain tree: a deleted system file is a whiteout (a 0/0 character device), a
directory replaced whole is opaque and a renamed one carries a redirect (trusted.overlay.*
xattrs). GNU tar keeps those, plus owners, modes, ACLs, other xattrs, hard links and sparse
files, with the options below. A snapshot of the running system is crash-consistent: what a
power cut at that moment would have left (the delta is synced first).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from liveng import layout
from liveng.device import bootstate, delta, runner
from liveng.device.bootstate import DeviceError
from liveng.durable import fsync_dir
from liveng.requests import Request

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# --format=posix: pax headers carry the xattrs, ACLs and sparse maps. --numeric-owner: the ids
# in the delta are the system's, whatever /etc/passwd says when the archive is read.
TAR_COMMON = ["--format=posix", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner"]
TAR_CREATE = [*TAR_COMMON, "--sparse", "--one-file-system"]
TAR_EXTRACT = [*TAR_COMMON, "--same-owner", "--same-permissions"]
ZSTD_LEVEL = 3  # zstd's default: fast enough to keep up with the card, about 3x smaller than the delta


@dataclass(frozen=True)
class Snapshot:
    name: str
    path: Path
    size: int
    created: str
    delta_bytes: int | None


def check_name(name: str) -> str:
    name = name.removesuffix(layout.SNAPSHOT_SUFFIX)
    if not NAME_RE.fullmatch(name):
        raise DeviceError(f"snapshot name {name!r}: use 1-64 letters, digits, '.', '_' or '-', not starting "
                          "with '.' or '-'")
    return name


def default_name() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def copy_tree(src: Path, dest: Path, members: tuple[str, ...] = (".",), exclude: tuple[str, ...] = (),
              parents: tuple[str, ...] = ()) -> None:
    """Copy a delta (or ``members`` of it) from ``src`` into ``dest`` with GNU tar and the snapshots'
    options, so that whiteouts, opaque directories, xattrs, owners and hard links survive.

    ``exclude``: paths (from ``src``'s root, e.g. "/home") left out; ``parents``: directories copied
    without their content (only their own metadata) before ``members``.
    """
    create = ["tar", "-C", str(src), *TAR_CREATE, "--anchored", *(f"--exclude=.{p}" for p in exclude), "-cf", "-"]
    if parents:
        create += ["--no-recursion", *parents, "--recursion"]
    create += members
    rc_out, err_out, rc_in, err_in = runner.pipeline(create, ["tar", "-C", str(dest), *TAR_EXTRACT, "-xf", "-"], None,
                                               subprocess.DEVNULL)
    # GNU tar exits 1 when a file changed while it was read: expected on a running system.
    if rc_out not in (0, 1):
        raise DeviceError(f"reading {src} failed ({rc_out}): {err_out}")
    if rc_in != 0:
        raise DeviceError(f"writing {dest} failed ({rc_in}): {err_in}")

@dataclass(frozen=True)
class Archived:
    tar_bytes: int | None  # the size of the tar stream: about the delta's apparent size
    warnings: list[str]


class _Writeback(threading.Thread):
    """Pushes the archive to the disk while zstd still writes it, so that the final fsync has
    little left to do and the archive does not fill the page cache (Linux starts writeback of
    dirty pages on POSIX_FADV_DONTNEED)."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            with contextlib.suppress(OSError):
                os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)


def archive(src: Path, out: IO[bytes], threads: int = 0) -> Archived:
    """Write ``src``'s tree to ``out`` as tar.zst; returns tar's warnings (files changed while read)."""
    writeback = _Writeback(out.fileno())
    writeback.start()
    try:
        rc_tar, err_tar, rc_zstd, err_zstd = runner.pipeline(
            ["tar", "-C", str(src), *TAR_CREATE, "--totals", "-cf", "-", "."],
            ["zstd", "-q", f"-{ZSTD_LEVEL}", f"-T{threads}", "-c"], None, out)
    finally:
        writeback.done.set()
        writeback.join()
    if rc_zstd != 0:
        raise DeviceError(f"zstd failed ({rc_zstd}): {err_zstd or 'no message'}")
    # GNU tar exits 1 when a file changed while it was read: expected on a running system.
    if rc_tar not in (0, 1):
        raise DeviceError(f"tar of {src} failed ({rc_tar}): {err_tar}")
    total = None
    warnings = []
    for line in err_tar.splitlines():
        if line.startswith("Total bytes written: "):
            with contextlib.suppress(ValueError):
                total = int(line.split(":", 1)[1].split()[0])
        elif line:
            warnings.append(line)
    return Archived(tar_bytes=total, warnings=warnings)


def extract(archive_path: Path, dest: Path) -> None:
    with open(archive_path, "rb") as src:
        rc_zstd, err_zstd, rc_tar, err_tar = runner.pipeline(
            ["zstd", "-q", "-d", "-c"], ["tar", "-C", str(dest), *TAR_EXTRACT, "-xf", "-"], src,
            subprocess.DEVNULL)
    if rc_zstd != 0:
        raise DeviceError(f"{archive_path} cannot be decompressed ({err_zstd or rc_zstd}): the archive is damaged "
                          "or not a liveng snapshot")
    if rc_tar != 0:
        raise DeviceError(f"extracting {archive_path} failed ({rc_tar}): {err_tar}; nothing was changed")


def _snapshot_dir(root: Path) -> Path:
    return root / layout.SNAPSHOT_DIR


def _read_meta(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.with_name(path.name.removesuffix(layout.SNAPSHOT_SUFFIX) + ".json").read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def list_snapshots(root: Path) -> list[Snapshot]:
    """Snapshots on p7, oldest first (an archive counts only once it has its final name)."""
    out = []
    d = _snapshot_dir(root)
    for path in d.glob(f"*{layout.SNAPSHOT_SUFFIX}") if d.is_dir() else ():
        if path.name.startswith("."):
            continue
        meta = _read_meta(path)
        st = path.stat()
        created = str(meta.get("created") or datetime.fromtimestamp(st.st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        delta_bytes = meta.get("delta_bytes")
        out.append(Snapshot(name=path.name.removesuffix(layout.SNAPSHOT_SUFFIX), path=path, size=st.st_size,
                            created=created, delta_bytes=delta_bytes if isinstance(delta_bytes, int) else None))
    return sorted(out, key=lambda s: (s.created, s.name))


def _write_file(dest: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``dest`` under a temporary name, fsync, then rename: it exists whole or not at all."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create(root: Path, name: str, to: Path | None = None) -> tuple[Path, list[str]]:
    """Snapshot the delta of p7 at ``root``; returns the archive's path and tar's warnings."""
    name = check_name(name)
    src = root / layout.DELTA_DIR
    if not src.is_dir():
        raise DeviceError(f"there is no delta to snapshot ({src} does not exist)")
    if to is None:
        _snapshot_dir(root).mkdir(parents=True, exist_ok=True)
        dest = _snapshot_dir(root) / f"{name}{layout.SNAPSHOT_SUFFIX}"
    elif to.is_dir():
        dest = to / f"{name}{layout.SNAPSHOT_SUFFIX}"
    else:
        dest = to
        if not dest.parent.is_dir():
            raise DeviceError(f"{dest.parent} does not exist: give an existing directory or file path with --to")
    if dest.exists():
        raise DeviceError(f"{dest} already exists: delete it or choose another name")
    sync_filesystem(src)  # what is in the page cache goes to the delta first: crash-consistent
    result: list[Archived] = []

    def write(f: IO[bytes]) -> None:
        result.append(archive(src, f))

    try:
        _write_file(dest, write)
    except OSError as exc:
        raise DeviceError(f"cannot write {dest}: {exc.strerror}; free space (delete old snapshots) or use "
                          "--to PATH on another disk") from None
    except DeviceError as exc:
        if "No space left" in str(exc):
            raise DeviceError(f"not enough space for {dest}: delete old snapshots (liveng snapshot delete NAME) "
                              "or write it elsewhere with --to PATH") from None
        raise
    if to is None:
        meta = {"name": name, "created": delta.now(), "kernel": os.uname().release,
                "delta_bytes": result[0].tar_bytes}
        bootstate.write_atomic(dest.with_name(f"{name}.json"), (json.dumps(meta, indent=1) + "\n").encode())
    return dest, result[0].warnings


def sync_filesystem(path: Path) -> None:
    """syncfs(2) of the filesystem holding ``path`` (only p7, not every disk); sync(2) if unavailable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            os.sync()
    except (OSError, AttributeError):
        os.sync()
    finally:
        os.close(fd)


def find(root: Path, name_or_path: str) -> Path:
    """A snapshot on p7 by name, or an archive anywhere by path."""
    if "/" in name_or_path:
        if "\n" in name_or_path:
            raise DeviceError("an archive path cannot contain a line break")
        path = Path(name_or_path)
        if not path.is_file():
            raise DeviceError(f"{path}: no such snapshot archive")
        return path.absolute()
    name = check_name(name_or_path)
    path = _snapshot_dir(root) / f"{name}{layout.SNAPSHOT_SUFFIX}"
    if not path.is_file():
        names = ", ".join(s.name for s in list_snapshots(root)) or "none"
        raise DeviceError(f"no snapshot named {name} (snapshots: {names}); 'liveng snapshot list' shows them")
    return path


def delete(root: Path, name: str) -> None:
    path = find(root, check_name(name))
    path.unlink()
    path.with_name(f"{path.name.removesuffix(layout.SNAPSHOT_SUFFIX)}.json").unlink(missing_ok=True)
    fsync_dir(path.parent)


def request_restore(root: Path, name_or_path: str,
                    adjust_order: Callable[[Path], str] | None = None) -> Request:
    path = find(root, name_or_path)
    label = path.name.removesuffix(layout.SNAPSHOT_SUFFIX) if path.parent == _snapshot_dir(root) else str(path)
    request = Request(action=layout.ACTION_RESTORE, snapshot=label, created=delta.now())
    try:
        return delta.stage(root, request, lambda staged: extract(path, staged), adjust_order)
    except OSError as exc:
        raise DeviceError(f"cannot prepare the restore: {exc}; nothing was changed") from None


def request_reset(root: Path, delete_snapshots: bool,
                  adjust_order: Callable[[Path], str] | None = None) -> Request:
    request = Request(action=layout.ACTION_RESET, delete_snapshots=delete_snapshots, created=delta.now())
    return delta.stage(root, request, lambda staged: None, adjust_order)
