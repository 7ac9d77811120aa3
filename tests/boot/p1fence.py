"""After a VM has used a disk: p1's bytes that hold the boot files are as built (liveng/host/fatlayout.py).
Used by boot tests and, after every round, by the fault campaign (bench/faults/checks.py)."""

from __future__ import annotations

from pathlib import Path

from liveng import layout
from liveng.host import fatlayout
from liveng.host.disk import read_table
from liveng.host.errors import BuildError


def boot_sector_changes(built: Path, used: Path, layout_too: bool = True) -> list[str]:
    """What differs from ``built`` in ``used``'s FAT, directory and data sectors of p1 that map or hold an
    unchanging file (p1 found by ``built``'s table: a torn table must not hide it); with ``layout_too``,
    also why ``used``'s p1 no longer passes the build's layout check (a torn FAT sector of the
    rewritten files fails it rightly, so the campaign leaves that out)."""
    problems = []
    p1 = read_table(built).entry(layout.partition(layout.Role.BOOT).number)
    fence = fatlayout.check(built, layout.P1_RUNTIME, p1.start, p1.size)
    if layout_too:
        try:
            if fatlayout.check(used, layout.P1_RUNTIME, p1.start, p1.size) != fence:
                problems.append("p1's boot files now end elsewhere than as built")
        except BuildError as exc:
            problems.append(str(exc))
    with open(built, "rb") as a, open(used, "rb") as b:
        for offset, size in fence.unchanging:
            a.seek(p1.start + offset)
            b.seek(p1.start + offset)
            old, new = a.read(size), b.read(size)
            if old != new:
                first = next(i for i in range(size) if old[i] != new[i])
                problems.append(f"p1 byte {offset + first} changed: a sector of the boot files (FAT, directory or "
                                f"data below cluster {fence.boundary}) was written")
    return problems


def assert_boot_files_untouched(built: Path, used: Path) -> None:
    problems = boot_sector_changes(built, used)
    assert not problems, problems
