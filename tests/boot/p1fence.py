"""After a VM has used a disk: p1's bytes that hold the boot files are as built (liveng/host/fatlayout.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from liveng import layout
from liveng.host import fatlayout
from liveng.host.disk import read_table


def _p1(disk: Path, out: Path) -> int:
    entry = read_table(disk).entry(layout.partition(layout.Role.BOOT).number)
    with open(disk, "rb") as src, open(out, "wb") as dst:
        src.seek(entry.start)
        dst.write(src.read(entry.size))
    return entry.start


def assert_boot_files_untouched(built: Path, used: Path) -> None:
    """Every FAT, directory and data sector of p1 that maps or holds an unchanging file is byte for
    byte as in ``built``, and ``used``'s p1 is still laid out as the build checks it."""
    with tempfile.TemporaryDirectory(dir=used.parent) as tmp:
        start = _p1(built, Path(tmp) / "built")
        fence = fatlayout.check(Path(tmp) / "built", layout.P1_RUNTIME)
        assert _p1(used, Path(tmp) / "used") == start
        assert fatlayout.check(Path(tmp) / "used", layout.P1_RUNTIME) == fence
    with open(built, "rb") as a, open(used, "rb") as b:
        for offset, size in fence.unchanging:
            a.seek(start + offset)
            b.seek(start + offset)
            assert a.read(size) == b.read(size), f"p1 bytes {offset}-{offset + size} changed: a boot file's sector"
