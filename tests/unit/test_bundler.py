"""liveng bundle: a small image whose p2 holds a real system ISO, signed with a real key, checked with
gpgv as a device checks it; the channel index; every refusal leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from liveng import bundle, layout, manifest
from liveng.host import bundler, cli, disk, openpgp
from liveng.host.cli import main
from liveng.host.errors import ImageError, UpdateBundleError
from tests.unit.gpgkeys import SigningKey, gpgv, make_key

IMAGE_ID = "5eed0001"


@pytest.fixture(autouse=True)
def log_to_stderr() -> None:
    """Warnings and errors on stderr as the command line writes them, whether or not main() ran before."""
    cli._setup_logging(verbose=False)


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return make_key(tmp_path_factory.mktemp("keys"), "release")


def image_info(**changes: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"layout": 2, "id": IMAGE_ID, "version": "1.4", "update_keys": [], "target": "pc",
                            "arch": "amd64", "suite": "trixie", "kernel": "6.12.0-1-amd64",
                            "built": "2026-01-02T03:04:05Z", "liveng": "0.1.0"}
    for k, v in changes.items():
        if v is None:
            del info[k]
        else:
            info[k] = v
    return info


def system_iso(work: Path, info: dict[str, Any], leave_out: str = "") -> Path:
    """A system ISO as build.step_system_iso makes it: live/, image.json, the manifest of them all."""
    tree = work / "system"
    files = {layout.KERNEL_PATH: os.urandom(30_000), layout.INITRD_PATH: os.urandom(50_000),
             layout.SQUASHFS_PATH: os.urandom(200_000), layout.IMAGE_INFO_PATH: json.dumps(info).encode()}
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    hashes = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items() if rel != leave_out}
    (tree / layout.MANIFEST_PATH).write_text(manifest.manifest_text(hashes))
    iso = work / "system.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-iso-level", "3", "-R", "-V", layout.SYSTEM_VOLID,
                    "-o", str(iso), str(tree)], check=True, capture_output=True)
    return iso


def small_image(path: Path, info: dict[str, Any] | None = None, leave_out: str = "") -> tuple[Path, bytes]:
    """An image in miniature: the partition table, p1 with image.json, p2 a system ISO (in a partition
    rounded up to MiB, as a build makes it, so the partition is larger than the ISO). Returns the ISO's bytes."""
    info = info if info is not None else image_info()
    work = path.with_name(path.name + ".work")
    work.mkdir()
    iso = system_iso(work, info, leave_out).read_bytes()
    extents, total = layout.plan(boot=4 * layout.MiB, system=layout.align_up(len(iso)), slot=layout.MiB,
                                 persistence=layout.MiB)
    assert extents[1].size > len(iso)
    with open(path, "wb") as f:
        f.truncate(total)
    disk.write_table(path, IMAGE_ID, extents)
    fat = work / "p1.fat"
    subprocess.run(["mkfs.fat", "-i", IMAGE_ID, "-C", str(fat), "4096"], check=True, capture_output=True)
    (work / "image.json").write_text(json.dumps(info))
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    subprocess.run(["mmd", "-i", str(fat), "::/liveng"], check=True, env=env)
    subprocess.run(["mcopy", "-i", str(fat), str(work / "image.json"), "::/liveng/image.json"], check=True, env=env)
    with open(path, "r+b") as f:
        f.seek(extents[0].start)
        f.write(fat.read_bytes())
        f.seek(extents[1].start)
        f.write(iso)
        f.write(b"\xee" * 4096)  # what the partition holds after the ISO is not part of the system
    return path, iso


def test_bundle_and_channel_pass_a_devices_checks(tmp_path: Path, key: SigningKey,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    image, iso = small_image(tmp_path / "kiosk.img", image_info(update_keys=[key.fingerprint]))
    channel = tmp_path / "channel"
    channel.mkdir()
    out = channel / "kiosk-1.4.bundle"
    assert main(["bundle", str(image), "-o", str(out), "--sign-key", str(key.secret), "--channel"]) == 0
    data = out.read_bytes()
    # The system is the ISO, to its last byte and not one further.
    assert data[:len(iso)] == iso
    foot = bundle.parse_footer(data[-bundle.FOOTER_SIZE:], len(data))
    assert foot.metadata_offset == bundle.align_up(len(iso))
    assert data[len(iso):foot.metadata_offset] == bytes(foot.metadata_offset - len(iso))
    raw_meta = data[foot.metadata_offset:foot.signature_offset]
    (tmp_path / "meta").write_bytes(raw_meta)
    (tmp_path / "meta.sig").write_bytes(data[foot.signature_offset:foot.signature_offset + foot.signature_size])
    # gpgv with the public key alone accepts it; a changed byte is refused.
    assert gpgv(key.public_binary, tmp_path / "meta.sig", tmp_path / "meta").returncode == 0
    (tmp_path / "meta").write_bytes(raw_meta.replace(b"1.4", b"1.5"))
    assert gpgv(key.public_binary, tmp_path / "meta.sig", tmp_path / "meta").returncode != 0
    meta = bundle.parse_metadata(raw_meta)
    assert (meta.version, meta.target, meta.arch, meta.layout, meta.kernel, meta.built) == (
        "1.4", "pc", "amd64", 2, "6.12.0-1-amd64", "2026-01-02T03:04:05Z")
    assert meta.system_size == len(iso) and meta.system_sha256 == hashlib.sha256(iso).hexdigest()
    assert set(meta.files) == {layout.KERNEL_PATH, layout.INITRD_PATH, layout.SQUASHFS_PATH, layout.IMAGE_INFO_PATH}
    squashfs = (tmp_path / "kiosk.img.work/system" / layout.SQUASHFS_PATH).read_bytes()
    assert meta.files[layout.SQUASHFS_PATH] == hashlib.sha256(squashfs).hexdigest()
    bundle.check_system_fits(meta, foot)

    raw_index = (channel / bundle.INDEX_NAME).read_bytes()
    assert gpgv(key.public_binary, channel / bundle.INDEX_SIG_NAME, channel / bundle.INDEX_NAME).returncode == 0
    assert bundle.parse_index(raw_index) == bundle.Index(version="1.4", target="pc", arch="amd64",
                                                         bundle="kiosk-1.4.bundle", size=len(data),
                                                         sha256=hashlib.sha256(data).hexdigest())
    assert sorted(p.name for p in channel.iterdir()) == ["index.json", "index.json.sig", "kiosk-1.4.bundle"]
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"liveng: {out}: version 1.4 (pc, amd64, kernel 6.12.0-1-amd64)")
    assert f"bundle {len(data)} bytes, signed by {key.fingerprint}" in line and "index.json names it" in line


def test_default_name_and_no_channel(tmp_path: Path, key: SigningKey, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    image, _ = small_image(tmp_path / "x.img")
    work = tmp_path / "out"
    work.mkdir()
    monkeypatch.chdir(work)
    made = bundler.make(image, None, key.secret)
    assert made.path == work / "liveng-pc-1.4.bundle" and made.index is None
    assert sorted(p.name for p in work.iterdir()) == ["liveng-pc-1.4.bundle"]
    # The system in it names no update keys: a device that installs it takes no later bundle.
    assert "takes no update bundles itself" in capsys.readouterr().err


def test_a_signer_the_new_system_does_not_trust_is_warned_about(tmp_path: Path, key: SigningKey,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    image, _ = small_image(tmp_path / "x.img", image_info(update_keys=["0" * 40]))
    bundler.make(image, tmp_path / "x.bundle", key.secret)
    assert f"does not trust the key signing it ({key.fingerprint})" in capsys.readouterr().err


def test_the_system_is_cut_at_the_iso_size(tmp_path: Path) -> None:
    image, iso = small_image(tmp_path / "x.img")
    system = bundler.image_system(image)
    p2 = disk.read_table(image).entry(2)
    assert (system.offset, system.size) == (p2.start, len(iso)) and p2.size > len(iso)
    assert system.version == "1.4" and system.files[layout.KERNEL_PATH]
    with open(image, "r+b") as f:  # the primary volume descriptor damaged
        f.seek(p2.start + 16 * 2048 + 1)
        f.write(b"XX")
    with pytest.raises(ImageError, match="holds no ISO9660 filesystem"):
        bundler.image_system(image)


@pytest.mark.parametrize(("info", "leave_out", "message"), [
    (image_info(layout=1), "", "layout 1: built by a liveng without system updates: rebuild it"),
    (image_info(layout=None), "", "layout None: built by a liveng without system updates: rebuild it"),
    (image_info(version=None), "", "names no version: rebuild it"),
    (image_info(version="latest"), "", "version 'latest' is not a Debian-style version"),
    (image_info(kernel=None), "", "has no kernel"),
    (image_info(), layout.SQUASHFS_PATH, "lists no live/filesystem.squashfs"),
    (image_info(), layout.KERNEL_PATH, "lists no live/vmlinuz"),
])
def test_an_image_that_cannot_be_an_update_is_refused(tmp_path: Path, key: SigningKey, info: dict[str, Any],
                                                      leave_out: str, message: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    image, _ = small_image(tmp_path / "x.img", info, leave_out)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["bundle", str(image), "-o", str(out / "x.bundle"), "--sign-key", str(key.secret),
                 "--channel"]) == 2
    assert message in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_key_problems_name_the_key_file(tmp_path: Path, key: SigningKey, capsys: pytest.CaptureFixture[str]) -> None:
    image, _ = small_image(tmp_path / "x.img")
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "notes.txt").write_text("no key\n")
    for key_file, message in ((key.public, "holds no secret key: export the signing key with"),
                              (tmp_path / "notes.txt", "is not an OpenPGP key file"),
                              (tmp_path / "none.asc", "cannot be read")):
        capsys.readouterr()
        assert main(["bundle", str(image), "-o", str(out / "x.bundle"), "--sign-key", str(key_file)]) == 2
        assert f"--sign-key {key_file}: {message}" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_a_passphrase_protected_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    protected = make_key(tmp_path / "keys", "protected", passphrase="correct horse")
    image, _ = small_image(tmp_path / "x.img")
    out = tmp_path / "out"
    out.mkdir()
    assert main(["bundle", str(image), "-o", str(out / "x.bundle"), "--sign-key", str(protected.secret)]) == 2
    err = capsys.readouterr().err
    assert "protected by a passphrase, and it was not given: give it with --passphrase-file" in err
    (tmp_path / "wrong").write_text("wrong horse\n")
    assert main(["bundle", str(image), "-o", str(out / "x.bundle"), "--sign-key", str(protected.secret),
                 "--passphrase-file", str(tmp_path / "wrong")]) == 2
    assert "and it was not the right one" in capsys.readouterr().err
    assert list(out.iterdir()) == []
    (tmp_path / "right").write_text("correct horse\n")
    assert main(["bundle", str(image), "-o", str(out / "x.bundle"), "--sign-key", str(protected.secret),
                 "--passphrase-file", str(tmp_path / "right")]) == 0
    bundler.check_bundle(out / "x.bundle", protected.public_binary.read_bytes())


def test_a_bundle_that_fails_its_check_is_not_written(tmp_path: Path, key: SigningKey,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    image, _ = small_image(tmp_path / "x.img")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.bundle").write_bytes(b"the previous bundle")
    other = make_key(tmp_path / "other", "other")
    # The check reads back with another key's public part, as if the signature were not the key's.
    monkeypatch.setattr(openpgp.Signer, "public_key", lambda self: other.public_binary.read_bytes())
    with pytest.raises(UpdateBundleError, match="gpgv does not accept the bundle's signature"):
        bundler.make(image, out / "x.bundle", key.secret, channel=True)
    assert sorted(p.name for p in out.iterdir()) == ["x.bundle"]
    assert (out / "x.bundle").read_bytes() == b"the previous bundle"


def test_check_bundle_finds_a_changed_system(tmp_path: Path, key: SigningKey) -> None:
    image, iso = small_image(tmp_path / "x.img")
    made = bundler.make(image, tmp_path / "x.bundle", key.secret)
    keyring = key.public_binary.read_bytes()
    assert bundler.check_bundle(made.path, keyring).sha256 == hashlib.sha256(made.path.read_bytes()).hexdigest()
    with open(made.path, "r+b") as f:
        f.seek(len(iso) // 2)
        byte = f.read(1)
        f.seek(len(iso) // 2)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(UpdateBundleError, match="does not match its signed hash"):
        bundler.check_bundle(made.path, keyring)
    with open(made.path, "r+b") as f:
        f.truncate(made.path.stat().st_size - 1)
    with pytest.raises(bundle.BundleError, match="not a liveng update bundle"):
        bundler.check_bundle(made.path, keyring)


@pytest.mark.parametrize(("name", "channel", "message"), [
    ("x.img", False, "name the bundle NAME.bundle"),
    (".x.bundle", True, "a channel's bundle needs a plain file name"),
    ("missing/x.bundle", False, "does not exist: create it"),
])
def test_bad_output_names(tmp_path: Path, key: SigningKey, name: str, channel: bool, message: str,
                          capsys: pytest.CaptureFixture[str]) -> None:
    image, _ = small_image(tmp_path / "x.img")
    argv = ["bundle", str(image), "-o", str(tmp_path / name), "--sign-key", str(key.secret)]
    assert main([*argv, "--channel"] if channel else argv) == 2
    assert message in capsys.readouterr().err


def test_a_channel_going_back_or_sideways_is_warned_about(tmp_path: Path, key: SigningKey,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    image, _ = small_image(tmp_path / "x.img")
    old = bundle.Index(version="1.10", target="rpi", arch="arm64", bundle="old.bundle", size=99_999, sha256="1" * 64)
    (tmp_path / bundle.INDEX_NAME).write_bytes(old.to_json())
    bundler.make(image, tmp_path / "new.bundle", key.secret, channel=True)
    err = capsys.readouterr().err
    assert "offered version 1.10, newer than this bundle's 1.4" in err
    assert "offered a rpi (arm64) system, this bundle is for pc (amd64)" in err
    assert bundle.parse_index((tmp_path / bundle.INDEX_NAME).read_bytes()).bundle == "new.bundle"
