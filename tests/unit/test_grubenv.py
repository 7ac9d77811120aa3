from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from liveng import grubenv


def test_roundtrip() -> None:
    env = {"liveng_order": "b a factory", "liveng_tries": "3", "x": "a\\b\nc"}
    raw = grubenv.serialize(env)
    assert len(raw) == grubenv.SIZE
    assert raw.startswith(b"# GRUB Environment Block\n")
    assert grubenv.parse(raw) == env


def test_bad_blocks() -> None:
    with pytest.raises(grubenv.GrubEnvError):
        grubenv.parse(b"junk")
    with pytest.raises(grubenv.GrubEnvError):
        grubenv.serialize({"v": "x" * 2000})
    with pytest.raises(grubenv.GrubEnvError):
        grubenv.serialize({"a=b": "x"})


@pytest.mark.skipif(shutil.which("grub-editenv") is None, reason="grub-editenv not installed")
def test_compatible_with_grub_editenv(tmp_path: Path) -> None:
    f = tmp_path / "grubenv"
    subprocess.run(["grub-editenv", f, "create"], check=True)
    subprocess.run(["grub-editenv", f, "set", "liveng_tries=2", "liveng_order=a factory"], check=True)
    assert grubenv.parse(f.read_bytes()) == {"liveng_tries": "2", "liveng_order": "a factory"}
    f.write_bytes(grubenv.serialize({"liveng_good": "b"}))
    out = subprocess.run(["grub-editenv", f, "list"], check=True, capture_output=True, text=True).stdout
    assert out == "liveng_good=b\n"
