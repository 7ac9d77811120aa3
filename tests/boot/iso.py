"""Where a file lies inside an ISO9660 partition of a disk image (to change one byte of it)."""

from __future__ import annotations

import struct
from pathlib import Path

BLOCK = 2048


def _records(data: bytes) -> list[tuple[str, int, int, bool]]:
    out = []
    pos = 0
    while pos < len(data):
        length = data[pos]
        if length == 0:  # records do not cross blocks: skip to the next one
            pos = (pos // BLOCK + 1) * BLOCK
            continue
        rec = data[pos:pos + length]
        extent, size = struct.unpack_from("<I", rec, 2)[0], struct.unpack_from("<I", rec, 10)[0]
        name = rec[33:33 + rec[32]].decode("ascii", "replace").split(";")[0].rstrip(".").lower()
        out.append((name, extent, size, bool(rec[25] & 2)))
        pos += length
    return out


def file_extent(image: Path, partition_start: int, path: str) -> tuple[int, int]:
    """(byte offset in the image, length) of ``path`` in the ISO9660 at ``partition_start``."""
    with open(image, "rb") as f:
        f.seek(partition_start + 16 * BLOCK)
        pvd = f.read(BLOCK)
        assert pvd[1:6] == b"CD001", "no ISO9660 primary volume descriptor"
        root = pvd[156:156 + 34]
        extent, size = struct.unpack_from("<I", root, 2)[0], struct.unpack_from("<I", root, 10)[0]
        parts = path.split("/")
        for i, part in enumerate(parts):
            f.seek(partition_start + extent * BLOCK)
            entries = {name: (e, s, d) for name, e, s, d in _records(f.read(size))}
            if part.lower() not in entries:
                raise FileNotFoundError(f"{path}: {part} not found (have {sorted(entries)})")
            extent, size, is_dir = entries[part.lower()]
            assert is_dir == (i < len(parts) - 1)
    return partition_start + extent * BLOCK, size
