"""Read the screendumps QEMU writes (binary PPM, P6) and compare their pixels with expected colours."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

Rgb = tuple[int, int, int]


@dataclass(frozen=True)
class Screen:
    width: int
    height: int
    data: bytes  # width * height RGB triples, row by row

    def pixel(self, x: int, y: int) -> Rgb:
        i = 3 * (y * self.width + x)
        return self.data[i], self.data[i + 1], self.data[i + 2]


def _fields(raw: bytes, count: int) -> tuple[list[int], int]:
    """The first ``count`` header fields of a PPM (whitespace-separated, # comments) and where its data starts."""
    fields: list[int] = []
    pos = 2
    while len(fields) < count:
        while raw[pos:pos + 1].isspace():
            pos += 1
        if raw[pos:pos + 1] == b"#":
            pos = raw.index(b"\n", pos) + 1
            continue
        end = pos
        while raw[end:end + 1].isdigit():
            end += 1
        if end == pos:
            raise ValueError(f"bad PPM header at byte {pos}")
        fields.append(int(raw[pos:end]))
        pos = end
    return fields, pos + 1  # one whitespace byte ends the header


def read_ppm(path: Path) -> Screen:
    raw = path.read_bytes()
    if raw[:2] != b"P6":
        raise ValueError(f"{path}: not a binary PPM (P6)")
    (width, height, maxval), start = _fields(raw, 3)
    if maxval != 255:
        raise ValueError(f"{path}: {maxval} levels per colour, expected 255")
    data = raw[start:start + 3 * width * height]
    if len(data) != 3 * width * height:
        raise ValueError(f"{path}: {len(data)} bytes of pixels for {width}x{height}")
    return Screen(width, height, data)


def close(a: Rgb, b: Rgb, tolerance: int = 12) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))
