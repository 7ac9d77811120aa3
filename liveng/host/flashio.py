"""The bytes of `liveng flash`: writing an image to an open disk or file (a file sparse) with progress
on stderr, and reading the target back to compare it with the image."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TextIO

from liveng import layout
from liveng.host.errors import FlashError

CHUNK = 4 * layout.MiB
HOLE = 64 * 1024  # a file target skips runs of zeros this long


class Progress:
    """Bytes, percent and speed on stderr: one line redrawn on a terminal, a line every 5 s otherwise."""

    def __init__(self, verb: str, total: int, stream: TextIO | None = None) -> None:
        self.verb, self.total = verb, total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = self.last = time.monotonic()

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def line(self, done: int) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        pct = 100 * done // self.total if self.total else 100
        return (f"liveng: {self.verb} {done / layout.MiB:8.1f} of {self.total / layout.MiB:.1f} MiB ({pct:3d} %), "
                f"{done / layout.MiB / elapsed:6.1f} MiB/s")

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= (0.5 if self.tty else 5.0):
            self.last = now
            self._write(("\r" if self.tty else "") + self.line(done) + ("" if self.tty else "\n"))

    def finish(self, done: int) -> None:
        self._write(("\r" if self.tty else "") + self.line(done) + "\n")


def human(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "bytes" else f"{size} bytes"
        value /= 1024
    raise AssertionError("unreachable")


def _is_zero(piece: memoryview) -> bool:
    return not bytes(piece).strip(b"\0")


def write_image(image: Path, fd: int, size: int, sparse: bool, progress: Progress) -> None:
    """Copy the image to ``fd`` from offset 0; ``sparse``: leave zero chunks as holes (a fresh file)."""
    done = 0
    with open(image, "rb") as src:
        while done < size:
            chunk = src.read(min(CHUNK, size - done))
            if not chunk:
                raise FlashError(f"{image}: ended after {done} of {size} bytes while being read")
            view = memoryview(chunk)
            step = HOLE if sparse else len(chunk)
            for start in range(0, len(chunk), step):
                piece = view[start:start + step]
                if sparse and _is_zero(piece):
                    continue  # a file target: zeros stay a hole
                pos = 0
                while pos < len(piece):
                    pos += os.pwrite(fd, piece[pos:], done + start + pos)
            done += len(chunk)
            progress.update(done)
    if sparse:
        os.ftruncate(fd, size)
    os.fsync(fd)
    progress.finish(done)


def verify(image: Path, target: Path, size: int, progress: Progress) -> None:
    """Read the target back (not from the page cache) and compare it with the image."""
    fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # Drop what the write left in the page cache, so the bytes come from the device.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        done = 0
        with open(image, "rb") as src:
            while done < size:
                want = src.read(min(CHUNK, size - done))
                got = os.pread(fd, len(want), done)
                if got != want:
                    at = done + next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b),
                                     min(len(want), len(got)))
                    raise FlashError(f"{target}: verification FAILED: what was read back differs from the image "
                                     f"at byte {at} (a failing or fake-capacity card?)")
                done += len(want)
                progress.update(done)
        progress.finish(done)
    finally:
        os.close(fd)
