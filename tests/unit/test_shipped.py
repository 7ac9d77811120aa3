"""Images ready to ship: the compressed image, its bmap and sums, and flashing them (bmaptool writes,
liveng reads every mapped range back)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from liveng import layout
from liveng.host import disk, flash, shipped
from liveng.host.errors import LivengError
from tests.unit.test_flash import loop_device, small_image  # noqa: F401 - loop_device is a fixture

pytestmark = pytest.mark.skipif(shutil.which("bmaptool") is None, reason="needs bmap-tools (dev/install-deps)")


@pytest.mark.parametrize("compression", ["zstd", "xz"])
def test_package_then_flash_to_a_file(tmp_path: Path, compression: str) -> None:
    image = small_image(tmp_path / "liveng.img")
    packed, bmap, sums = shipped.package(image, compression)
    assert packed.name == f"liveng.img{shipped.COMPRESSIONS[compression][0]}" and bmap.name == "liveng.img.bmap"
    subprocess.run(["sha256sum", "--quiet", "-c", sums.name], cwd=tmp_path, check=True)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    parsed = shipped.parse_bmap(bmap)
    assert parsed.image_size == image.stat().st_size
    mapped = sum(end - start for start, end, _ in parsed.ranges)
    assert 300_000 < mapped < image.stat().st_size  # the data, not the holes
    image_bytes = image.read_bytes()
    image.unlink()  # flashing needs the compressed image and its bmap only
    target = tmp_path / "out" / "card.img"
    target.parent.mkdir()
    summary = flash.flash(packed, target)
    assert "written and verified" in summary and target.read_bytes() == image_bytes
    # Without the bmap beside it: all of it is written, and compared with the whole stream.
    bmap.unlink()
    again = tmp_path / "out" / "again.img"
    flash.flash(packed, again)
    assert again.read_bytes() == image_bytes
    assert sorted(os.listdir(target.parent)) == ["again.img", "card.img"]


def test_damaged_inputs_are_refused_and_leave_nothing(tmp_path: Path) -> None:
    image = small_image(tmp_path / "liveng.img")
    packed, bmap, _ = shipped.package(image, "zstd")
    out = tmp_path / "out"
    out.mkdir()
    # A bmap whose checksum of the data range does not match: bmaptool stops, nothing is left.
    text = bmap.read_text()
    first = text.index('chksum="') + len('chksum="')
    bmap.write_text(text[:first] + ("0" if text[first] != "0" else "1") + text[first + 1:])
    with pytest.raises(LivengError):
        flash.flash(packed, out / "card.img")
    assert os.listdir(out) == []
    bmap.write_text("<bmap version='1.4'/>")
    with pytest.raises(shipped.ShipError, match="version"):
        flash.flash(packed, out / "card.img")
    bmap.write_text("not xml")
    with pytest.raises(shipped.ShipError, match="not a readable bmap"):
        flash.flash(packed, out / "card.img")
    bmap.unlink()
    # Not a liveng image at all.
    raw = tmp_path / "junk.img"
    raw.write_bytes(os.urandom(1 << 20))
    junk = tmp_path / "junk.img.zst"
    subprocess.run(["zstd", "-q", "-o", str(junk), str(raw)], check=True)
    with pytest.raises(shipped.ShipError, match="first sector"):
        flash.flash(junk, out / "card.img")
    # A truncated compressed image: its size is unknown, or the stream ends early.
    cut = tmp_path / "cut.img.zst"
    cut.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    with pytest.raises(LivengError):
        flash.flash(cut, out / "card.img")
    assert os.listdir(out) == []


def test_flash_to_a_block_device_writes_the_mapped_ranges(tmp_path: Path, loop_device: Path) -> None:  # noqa: F811
    # As big as the disk: its partition table stays as built (test_flash: the table grown).
    image = small_image(tmp_path / "liveng.img", persistence=5 * layout.MiB)
    packed, bmap, _ = shipped.package(image, "zstd")
    with open(loop_device, "r+b") as f:
        f.write(b"\xaa" * (16 * layout.MiB))
    flash.flash(packed, loop_device)
    parsed = shipped.parse_bmap(bmap)
    data = image.read_bytes()
    with open(loop_device, "rb") as f:
        for start, end, _ in parsed.ranges:
            f.seek(start)
            assert f.read(end - start) == data[start:end]
        # Outside the mapped ranges the old bytes stay (that is what a bmap is for): a hole of the image.
        gap = next(end for (_, end, _), (start, _, _) in zip(parsed.ranges, parsed.ranges[1:], strict=False)
                   if start > end)
        f.seek(gap)
        assert f.read(16) == b"\xaa" * 16
    shipped.verify_against_bmap(loop_device, parsed)
    # But no partition starts with old bytes (slot B is a hole in a new image).
    with open(loop_device, "rb") as f:
        for entry in disk.read_table(image).entries:
            n = min(layout.MiB, entry.size)
            f.seek(entry.start)
            assert f.read(n) == data[entry.start:entry.start + n], entry
    # A smaller image: its table grows to the disk, as with a raw image (test_flash).
    (tmp_path / "small").mkdir()
    small, _, _ = shipped.package(small_image(tmp_path / "small" / "liveng.img"), "zstd")
    assert "persistence partition grown to 5.0 MiB" in flash.flash(small, loop_device)
    p7 = disk.read_table(loop_device).entry(7)
    assert p7.start + p7.size == 16 * layout.MiB


def test_build_compress_leaves_the_three_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from liveng.host import build
    from liveng.host.cli import main

    info = {"suite": "trixie", "target": "rpi", "arch": "arm64", "version": "1", "built": "2026-12-06T00:00:00Z"}

    def fake_build(recipe: object, output: Path, **kwargs: object) -> SimpleNamespace:
        small_image(output)
        return SimpleNamespace(output=output, image_info=lambda: info)

    monkeypatch.setattr(build, "build", fake_build)
    out = tmp_path / "liveng.img"
    assert main(["build", "--compress", "xz", "-o", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("liveng.img")) == \
        ["liveng.img", "liveng.img.bmap", "liveng.img.xz", "liveng.img.xz.sha256sums"]
    # Raspberry Pi Imager's manifest names the compressed image (liveng/host/imager.py).
    manifest = json.loads((tmp_path / "liveng.rpi-imager-manifest").read_text())
    assert manifest["os_list"][0]["url"] == (tmp_path / "liveng.img.xz").as_uri()
