"""Facts about the running liveng system, read from /proc and the kernel command line."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from liveng import bundle, layout


@dataclass(frozen=True)
class Mount:
    device: str
    mountpoint: str
    fstype: str
    options: tuple[str, ...]


def _unescape(field: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as octal.
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mounts(proc: Path = Path("/proc/mounts")) -> list[Mount]:
    result = []
    for line in proc.read_text().splitlines():
        dev, mnt, fstype, opts = line.split()[:4]
        result.append(Mount(_unescape(dev), _unescape(mnt), fstype, tuple(opts.split(","))))
    return result


def cmdline_args(proc: Path = Path("/proc/cmdline")) -> dict[str, str]:
    args: dict[str, str] = {}
    for word in proc.read_text().split():
        key, _, value = word.partition("=")
        args[key] = value
    return args


@dataclass(frozen=True)
class Status:
    image_id: str | None
    boot_entry: str | None
    kernel: str
    root_fstype: str | None
    lower: tuple[str, ...]
    upper: str | None
    persistence_device: str | None


def overlay_layers(root: Mount) -> tuple[tuple[str, ...], str | None]:
    lower: tuple[str, ...] = ()
    upper = None
    for opt in root.options:
        if opt.startswith("lowerdir="):
            lower = tuple(opt[len("lowerdir="):].split(":"))
        elif opt.startswith("upperdir="):
            upper = opt[len("upperdir="):]
    return lower, upper


def status() -> Status:
    args = cmdline_args()
    all_mounts = mounts()
    root = next((m for m in reversed(all_mounts) if m.mountpoint == "/"), None)
    lower: tuple[str, ...] = ()
    upper = None
    if root is not None and root.fstype == "overlay":
        lower, upper = overlay_layers(root)
    persistence = None
    if upper:
        for m in all_mounts:
            inside = upper.startswith(m.mountpoint.rstrip("/") + "/")
            if inside and m.mountpoint.startswith(layout.LIVE_PERSISTENCE_MOUNT):
                persistence = m.device
    return Status(
        image_id=args.get(layout.KERNEL_ARG_ID),
        boot_entry=args.get(layout.KERNEL_ARG_BOOT),
        kernel=os.uname().release,
        root_fstype=root.fstype if root else None,
        lower=lower,
        upper=upper,
        persistence_device=persistence,
    )


def booted_system(path: Path = Path(layout.BOOTED_SYSTEM_PATH)) -> str:
    """The system this boot runs: "factory" (p2) or an updated system's name, as the initramfs
    (live-premount/liveng-system) recorded it; an image made before system updates has no record."""
    try:
        name = path.read_text().strip()
    except OSError:
        return layout.SYSTEM_FACTORY
    if name == layout.SYSTEM_FACTORY or bundle.SYSTEM_NAME_RE.fullmatch(name):
        return name
    return layout.SYSTEM_FACTORY
