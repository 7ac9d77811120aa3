"""What a partition's manifest (layout.MANIFEST_PATH) and a kernel slot's record (layout.SLOT_INFO_PATH)
hold, and the device trees a slot carries: written by the host's build and the device's kernel
install, read by verify."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from liveng.layout import DTB_DIR, DTB_GLOBS, MiB


def sha256_file(path: Path) -> str:
    """The digest MANIFEST_PATH and SLOT_INFO_PATH record for a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def kernel_dtbs(root: Path, kernel: str) -> dict[str, Path]:
    """Path in a slot -> file, for the device trees the installed kernel package ships for liveng's boards."""
    base = root / "usr/lib" / f"linux-image-{kernel}"
    found = {f"{DTB_DIR}/{p.relative_to(base).as_posix()}": p for g in DTB_GLOBS for p in base.glob(g)}
    return dict(sorted(found.items()))


def manifest_text(hashes: dict[str, str]) -> str:
    """MANIFEST_PATH's format: sha256sum's, paths relative to the partition's root."""
    return "".join(f"{digest}  {rel}\n" for rel, digest in sorted(hashes.items()))


def slot_info(slot: str, kernel: str, written: str, hashes: dict[str, str]) -> str:
    """SLOT_INFO_PATH's content: what a kernel slot holds."""
    return json.dumps({"slot": slot, "kernel": kernel, "written": written, "files": hashes}, indent=1) + "\n"
