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


def test_parse_accepts_what_grub_accepts() -> None:
    # NUL padding (GRUB stops at the first part without '='), '#' padding, comment lines.
    raw = b"# GRUB Environment Block\nliveng_tries=2\n" + b"\0" * 990
    assert grubenv.parse(raw) == {"liveng_tries": "2"}
    assert grubenv.parse(b"# GRUB Environment Block\n# note\nliveng_order=0 2\n####") == {"liveng_order": "0 2"}
    # A cut-off last line is dropped, as GRUB drops it.
    assert grubenv.parse(b"# GRUB Environment Block\nliveng_order=0 2\nliveng_tr") == {"liveng_order": "0 2"}


@pytest.mark.parametrize("raw", [b"", b"\0" * 1024, b"\xff" * 1024, b"junk",
                                 b"# GRUB Environment Block\nliveng_order=\xff\xfe\n" + b"#" * 980,
                                 b"# GRUB Environment Block\nno equals sign\n" + b"#" * 980])
def test_garbage_is_a_grubenv_error_never_a_decode_error(raw: bytes) -> None:
    with pytest.raises(grubenv.GrubEnvError):
        grubenv.parse(raw)


def test_choose_prefers_a_valid_primary_then_the_backup_then_defaults() -> None:
    new, old = grubenv.serialize({"liveng_tries": "1"}), grubenv.serialize({"liveng_tries": "2"})
    assert grubenv.choose(new, old) == grubenv.Choice({"liveng_tries": "1"}, "primary", {})
    for damaged in (None, b"", b"\xff" * 1024, new[:512]):
        choice = grubenv.choose(damaged, old)
        assert (choice.env, choice.source, list(choice.damaged)) == ({"liveng_tries": "2"}, "backup", ["primary"])
    choice = grubenv.choose(b"\x00" * 3, None)
    assert (choice.env, choice.source, sorted(choice.damaged)) == ({}, "defaults", ["backup", "primary"])
    assert grubenv.copies({"a": "b"}) == (grubenv.serialize({"a": "b"}),) * 2


def test_an_unreadable_copy_is_damaged_with_its_reason() -> None:
    """A power cut that tore p1's FAT left grubenv.bak unreadable (EIO): the reason is reported as is,
    not as the length of a message mistaken for the file (seen in CI: "30 bytes instead of 1024")."""
    good = grubenv.serialize({"liveng_tries": "3"})
    choice = grubenv.choose(good, "unreadable: Input/output error")
    assert (choice.source, choice.damaged) == ("primary", {"backup": "unreadable: Input/output error"})
