from __future__ import annotations

import hashlib
from pathlib import Path

from liveng import layout
from liveng.device.verify import Report, verify_tree


def make(root: Path) -> None:
    (root / "live").mkdir(parents=True)
    (root / "liveng").mkdir()
    (root / "live/vmlinuz").write_bytes(b"kernel" * 1000)
    (root / "live/initrd.img").write_bytes(b"initrd" * 1000)
    lines = [f"{hashlib.sha256((root / n).read_bytes()).hexdigest()}  {n}" for n in ("live/initrd.img",
                                                                                    "live/vmlinuz")]
    (root / layout.MANIFEST_PATH).write_text("\n".join(lines) + "\n")


def test_untouched_tree_passes(tmp_path: Path) -> None:
    make(tmp_path)
    report = Report()
    verify_tree(tmp_path, "p2", report)
    assert report.ok and report.checked == 2


def test_one_flipped_byte_is_named(tmp_path: Path) -> None:
    make(tmp_path)
    data = bytearray((tmp_path / "live/vmlinuz").read_bytes())
    data[1234] ^= 0x01
    (tmp_path / "live/vmlinuz").write_bytes(bytes(data))
    report = Report()
    verify_tree(tmp_path, "p2", report)
    assert not report.ok
    assert len(report.problems) == 1 and report.problems[0].startswith("p2: live/vmlinuz: content differs")


def test_missing_and_extra_files(tmp_path: Path) -> None:
    make(tmp_path)
    (tmp_path / "live/initrd.img").unlink()
    (tmp_path / "live/extra").write_text("x")
    report = Report()
    verify_tree(tmp_path, "p2", report)
    assert any("live/initrd.img: cannot read" in p for p in report.problems)
    assert any("live/extra: not in the manifest" in p for p in report.problems)
