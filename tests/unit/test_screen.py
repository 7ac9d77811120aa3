from __future__ import annotations

from pathlib import Path

import pytest

from tests.screen import close, read_ppm


def test_read_ppm_pixels_and_comments(tmp_path: Path) -> None:
    ppm = tmp_path / "s.ppm"
    pixels = bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30])
    ppm.write_bytes(b"P6\n# made by a test\n2 2\n255\n" + pixels)
    screen = read_ppm(ppm)
    assert (screen.width, screen.height) == (2, 2)
    assert screen.pixel(0, 0) == (255, 0, 0) and screen.pixel(1, 0) == (0, 255, 0)
    assert screen.pixel(0, 1) == (0, 0, 255) and screen.pixel(1, 1) == (10, 20, 30)
    assert close(screen.pixel(1, 1), (20, 30, 40), tolerance=10) and not close(screen.pixel(1, 1), (0, 0, 0))


def test_read_ppm_refuses_short_or_other_files(tmp_path: Path) -> None:
    short = tmp_path / "short.ppm"
    short.write_bytes(b"P6 2 2 255\n" + bytes(5))
    with pytest.raises(ValueError, match="bytes of pixels"):
        read_ppm(short)
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ValueError, match="not a binary PPM"):
        read_ppm(png)
