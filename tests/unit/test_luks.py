"""Encrypted persistence: the recipe's [persistence] table, the key file's initramfs archive, and
(with cryptsetup on the host) p7 made as LUKS2 without device-mapper."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from liveng import bootargs, layout
from liveng.host import luks, recipe
from liveng.host.errors import RecipeError


def parse(text: str, base: Path | None) -> recipe.Recipe:
    return recipe.loads(text, "r.toml", base)


def test_no_persistence_table_means_plain_ext4() -> None:
    assert parse("", None).persistence == recipe.Persistence()
    assert not recipe.Persistence().encrypted


def test_luks2_with_passphrase_and_key(tmp_path: Path) -> None:
    (tmp_path / "pass").write_text("secret words\n")
    (tmp_path / "key").write_bytes(b"\0\1\2" * 10)
    r = parse('[persistence]\nencryption = "luks2"\npassphrase_file = "pass"\nkey_file = "key"\nkdf_memory = 128',
              tmp_path)
    p = r.persistence
    assert p.encrypted and p.passphrase_file == tmp_path / "pass" and p.key_file == tmp_path / "key"
    assert p.kdf_memory == 128
    assert recipe.passphrase((tmp_path / "pass").read_bytes()) == b"secret words"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[persistence]\nencryption = "luks2"', "persistence: encryption = \"luks2\" needs passphrase_file"),
        ('[persistence]\nencryption = "luks1"', "persistence.encryption: 'luks1' is not one of"),
        ('[persistence]\nencryption = "luks2"\npassphrase_file = "empty"', "empty is empty"),
        ('[persistence]\nencryption = "luks2"\npassphrase_file = "blank"', "is empty"),
        ('[persistence]\nencryption = "luks2"\npassphrase_file = "missing"', "passphrase_file: cannot read"),
        ('[persistence]\nencryption = "luks2"\npassphrase_file = "two"', "more than one line"),
        ('[persistence]\nencryption = "luks2"\nkey_file = "empty"', "persistence.key_file:"),
        ('[persistence]\npassphrase_file = "pass"', "encryption: is \"none\" but"),
        ('[persistence]\nencryption = "luks2"\npassphrase_file = "pass"\nkdf_memory = 8', "kdf_memory: 8 MiB"),
        ('[persistence]\nencryption = "luks2"\npassphrase = "x"', "persistence.passphrase: unknown key"),
    ],
)
def test_persistence_errors(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "blank").write_text("\n")
    (tmp_path / "two").write_text("line one\nline two\n")
    (tmp_path / "pass").write_text("x\n")
    with pytest.raises(RecipeError) as info:
        parse(text, tmp_path)
    assert str(info.value).startswith("r.toml: ")
    assert needle in str(info.value)


def test_relative_secret_needs_a_recipe_file() -> None:
    with pytest.raises(RecipeError, match="needs a recipe file"):
        parse('[persistence]\nencryption = "luks2"\npassphrase_file = "pass"', None)


def test_key_archive_appended_to_an_initramfs(tmp_path: Path) -> None:
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"\x28\xb5\x2f\xfd" + b"x" * 1001)  # stands in for a compressed archive
    luks.append_key(initrd, b"KEY\n")
    data = initrd.read_bytes()
    start = data.index(b"070701")
    assert start % 4 == 0 and set(data[1005:start]) == {0}  # the kernel skips zeros up to a 4-byte boundary
    entries = luks.cpio_names(data[start:])
    assert entries == [("etc", 0o040755, b""), ("etc/liveng", 0o040700, b""),
                       (luks.KEY_FILE_PATH, 0o100400, b"KEY\n")]
    assert initrd.stat().st_mode & 0o777 == 0o600
    if shutil.which("cpio"):  # GNU cpio reads it too: the format is newc, not only what our reader expects
        listing = subprocess.run(["cpio", "-t", "-v"], input=data[start:], capture_output=True, check=True).stdout
        assert b"etc/liveng/persistence.key" in listing


def test_kernel_argument() -> None:
    assert luks.KERNEL_ARG in bootargs.kernel_cmdline("0123abcd", (luks.KERNEL_ARG,)).split()


@pytest.mark.skipif(shutil.which("cryptsetup") is None, reason="needs cryptsetup (package cryptsetup-bin)")
def test_encrypt_a_partition_image_without_device_mapper(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / layout.PERSISTENCE_CONF).write_text(layout.PERSISTENCE_CONF_CONTENT)
    (tmp_path / "pass").write_text("one two three\n")
    (tmp_path / "key").write_bytes(b"k" * 32)
    part = tmp_path / "p7.part"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "liveng-0123abcd", "-d", tree, part, "48M"], check=True)
    p = recipe.Persistence(encryption="luks2", passphrase_file=tmp_path / "pass", key_file=tmp_path / "key",
                           kdf_memory=32)
    luks.encrypt(part, 64, p, "0123abcd", tmp_path)
    assert part.stat().st_size == 64 * layout.MiB
    subprocess.run(["cryptsetup", "isLuks", "--type", "luks2", part], check=True)
    dump = subprocess.run(["cryptsetup", "luksDump", part], capture_output=True, text=True, check=True).stdout
    assert "liveng-0123abcd-luks" in dump and "argon2id" in dump
    (tmp_path / "typed").write_text("one two three")  # what askpass hands over: no line end
    for key in ("typed", "key"):
        subprocess.run(["cryptsetup", "open", "--test-passphrase", "--key-file", tmp_path / key, part], check=True)
    assert not (tmp_path / "luks-passphrase").exists()  # the passphrase copy is gone
    assert subprocess.run(["dumpe2fs", "-h", part], capture_output=True).returncode != 0
