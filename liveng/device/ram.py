"""Boot modes and the RAM delta: which mode runs, the default mode, persistent paths, commit.

In the RAM modes the overlay's upper directory is live-boot's tmpfs (layout.RAM_UPPER), which the
initramfs (live-bottom/liveng-ram) filled with p7:rw at boot: it is the whole delta, not only what
changed since the boot. A commit therefore stages a copy of it (or of the given paths in it, on
top of the delta on p7) exactly as a snapshot restore stages an archive: into STAGED_DIR, synced,
then the request; the initramfs switches it in under its journal at the next boot, so a power cut
leaves the old delta or the new one. The switch waits for the next boot because in ram-paths mode
p7:rw is in use (the persistent paths are overlays on it); doing the same in both RAM modes keeps
one tested path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from liveng import bootargs, layout
from liveng.device import bootstate, delta, snapshot, system
from liveng.device.bootstate import DeviceError
from liveng.requests import Request


def running_mode() -> str:
    mode = system.cmdline_args().get(layout.KERNEL_ARG_MODE, layout.MODE_PERSISTENT)
    return mode if mode in layout.MODES else layout.MODE_PERSISTENT


def set_default_mode(mode: str) -> None:
    if mode not in layout.MODES:
        raise DeviceError(f"unknown mode {mode!r}: choose one of {', '.join(layout.MODES)}")
    bootstate.update_state(mode=mode)


def read_paths(root: Path) -> list[str]:
    """The device's own persistent paths (p7:PATHS_PATH), without the recipe's (on the command line)."""
    try:
        text = (root / layout.PATHS_PATH).read_text()
    except FileNotFoundError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip()]


def recipe_paths() -> list[str]:
    value = system.cmdline_args().get(layout.KERNEL_ARG_PATHS, "")
    return [p for p in value.split(",") if p]


def change_paths(root: Path, add: list[str], remove: list[str]) -> list[str]:
    paths = read_paths(root)
    for p in add:
        try:
            bootargs.check_persistent_path(p)
        except layout.LayoutError as exc:
            raise DeviceError(str(exc)) from None
        if p not in paths:
            paths.append(p)
    for p in remove:
        if p not in paths:
            raise DeviceError(f"{p} is not one of this device's persistent paths ({', '.join(paths) or 'none'}); "
                              "the recipe's are changed by a new image")
        paths.remove(p)
    (root / layout.DELTA_STATE_DIR).mkdir(mode=0o700, exist_ok=True)
    bootstate.write_atomic(root / layout.PATHS_PATH, "".join(f"{p}\n" for p in paths).encode())
    return paths


def mounted_paths(mounts: list[system.Mount] | None = None) -> list[str]:
    """The persistent paths of this boot: overlays whose upper directory is in p7:rw (ram-paths mode)."""
    prefix = f"{layout.RAM_PERSISTENCE_MOUNT}/{layout.DELTA_DIR}/"
    out = []
    for m in mounts if mounts is not None else system.mounts():
        if m.fstype == "overlay" and m.mountpoint != "/":
            _, upper = system.overlay_layers(m)
            if upper and upper.startswith(prefix):
                out.append("/" + upper[len(prefix):].strip("/"))
    return out


def _check_commit_path(path: str, kept: list[str]) -> str:
    norm = os.path.normpath(path)
    if not norm.startswith("/"):
        raise DeviceError(f"{path}: give absolute paths to commit")
    for k in kept:
        if norm == k or norm.startswith(k + "/"):
            raise DeviceError(f"{norm} is in the persistent path {k}, which is on the card already")
    return norm


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["./" + "/".join(parts[:i]) for i in range(1, len(parts))]


def stage_paths(staged: Path, base: Path, upper: Path, paths: list[str], kept: list[str]) -> None:
    """``base`` (the delta on p7) with each of ``paths`` replaced by what ``upper`` (the RAM delta) has there."""
    if base.is_dir():
        snapshot.copy_tree(base, staged, exclude=tuple(kept))
    for path in paths:
        rel = path.strip("/")
        target = staged / rel
        for parent in _parents(rel):
            p = staged / parent
            if (p.exists() or p.is_symlink()) and not p.is_dir():
                raise DeviceError(f"{parent[1:]} was deleted or replaced in the committed delta: commit "
                                  f"{parent[1:]} itself, or everything (liveng commit without paths)")
        delta.remove_tree(target)
        if os.path.lexists(upper / rel):
            missing = [p for p in _parents(rel) if not (staged / p).is_dir()]
            snapshot.copy_tree(upper, staged, (f"./{rel}",), parents=tuple(missing))


def commit(root: Path, paths: list[str], upper: Path = Path(layout.RAM_UPPER),
           adjust_order: Callable[[Path], str] | None = None) -> Request:
    """Stage the RAM delta (or ``paths`` of it) to replace p7's delta at the next boot."""
    mode = running_mode()
    if mode == layout.MODE_PERSISTENT:
        raise DeviceError("this system runs in persistent mode: every change is on the card already; "
                          "commit is for the RAM modes")
    if not upper.is_dir():
        raise DeviceError(f"{upper} (the RAM delta) does not exist: was this system booted by liveng in a RAM mode?")
    kept = mounted_paths() if mode == layout.MODE_RAM_PATHS else []
    targets = [_check_commit_path(p, kept) for p in paths]
    full = not targets or "/" in targets
    pending = delta.read_pending(root)
    if not full and pending is not None and pending.action == layout.ACTION_COMMIT:
        raise DeviceError("a commit is already staged for the next boot: commit everything (liveng commit "
                          "without paths), which includes it, or reboot first")
    request = Request(action=layout.ACTION_COMMIT, snapshot="" if full else ",".join(targets),
                            created=delta.now(), keep=",".join(kept))
    base = root / layout.DELTA_DIR

    def fill(staged: Path) -> None:
        if full:
            snapshot.copy_tree(upper, staged, exclude=tuple(kept))
        else:
            stage_paths(staged, base, upper, targets, kept)

    try:
        return delta.stage(root, request, fill, adjust_order)
    except OSError as exc:
        raise DeviceError(f"cannot stage the commit: {exc}; the delta on the card is unchanged") from None
