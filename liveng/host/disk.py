"""The MBR disk: partition table with sfdisk on a plain file, partitions placed by offset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from liveng import layout, sfdisk
from liveng.host.errors import CommandError, ImageError
from liveng.host.runner import output, run


def sfdisk_script(image_id: str, extents: list[layout.Extent]) -> str:
    return layout.sfdisk_script(image_id, extents)


def write_table(image: Path, image_id: str, extents: list[layout.Extent]) -> None:
    script = sfdisk_script(image_id, extents)
    run(["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "never", image], input_bytes=script.encode())


@dataclass(frozen=True)
class TableEntry:
    number: int
    start: int  # bytes
    size: int  # bytes
    mbr_type: int
    bootable: bool


@dataclass(frozen=True)
class Table:
    image_id: str
    entries: tuple[TableEntry, ...]

    def entry(self, number: int) -> TableEntry:
        for e in self.entries:
            if e.number == number:
                return e
        raise ImageError(f"partition {number} is missing")


def read_table(image: Path) -> Table:
    """Read an MBR with ``sfdisk -J`` (works on files and block devices)."""
    try:
        data, _warnings = sfdisk.partition_table(output(["sfdisk", "-J", image]))
    except CommandError as exc:
        raise ImageError(f"{image}: no partition table ({exc.stderr.strip()}): not a liveng image") from None
    except ValueError as exc:
        raise ImageError(f"{image}: cannot read a partition table: {exc}") from None
    if data.get("label") != "dos":
        raise ImageError(f"{image}: not an MBR disk (found {data.get('label')!r}), so not a liveng image")
    entries = []
    for p in data.get("partitions", []):
        # sfdisk names partitions of a file "IMAGE1"; of /dev/mmcblk0 "mmcblk0p1": take trailing digits.
        digits = ""
        for ch in reversed(p["node"]):
            if not ch.isdigit():
                break
            digits = ch + digits
        number = int(digits)
        entries.append(TableEntry(number=number, start=p["start"] * layout.SECTOR, size=p["size"] * layout.SECTOR,
                                  mbr_type=int(p["type"], 16), bootable=bool(p.get("bootable", False))))
    image_id = data.get("id", "0x0")[2:].rjust(8, "0")
    return Table(image_id=image_id, entries=tuple(entries))


def layout_problems(table: Table) -> list[tuple[layout.Role, str]]:
    """The liveng partitions missing from the table or of another type, each with what is wrong."""
    problems = []
    for part in layout.PARTITIONS:
        found = {e.number: e for e in table.entries}.get(part.number)
        if found is None:
            problems.append((part.role, f"partition {part.number} ({part.role.value}) is missing"))
        elif found.mbr_type != part.mbr_type:
            problems.append((part.role, f"partition {part.number} ({part.role.value}) has type "
                                        f"0x{found.mbr_type:02x}, expected 0x{part.mbr_type:02x}"))
    return problems


def check_layout(table: Table) -> None:
    """Raise ImageError unless the table has the liveng partitions with the liveng types."""
    for _role, problem in layout_problems(table)[:1]:
        raise ImageError(f"{problem}: not a liveng image")
