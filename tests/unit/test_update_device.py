"""The device side of system updates that needs no booted image: the new system's delta made from
the kept paths, the owner marker, and what garbage collection deletes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from liveng import bundle, layout
from liveng.device import delta, update
from liveng.device.bootstate import DeviceError


def make_p7(root: Path) -> Path:
    rw = root / layout.DELTA_DIR
    for rel, text in {"home/pi/notes.txt": "n", "srv/db/data": "d", "etc/ssh/ssh_host_ed25519_key": "k",
                      "etc/ssh/sshd_config": "c", "etc/passwd": "p", "var/lib/apt/x": "a"}.items():
        (rw / rel).parent.mkdir(parents=True, exist_ok=True)
        (rw / rel).write_text(text)
    os.chmod(rw / "etc/ssh/ssh_host_ed25519_key", 0o600)
    os.symlink("notes.txt", rw / "home/pi/link")
    (root / layout.DELTA_STATE_DIR).mkdir()
    return root


def files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if not p.is_dir()}


def test_kept_paths_are_copied_with_their_parents(tmp_path: Path) -> None:
    p7 = make_p7(tmp_path)
    kept = update._stage_delta(p7, "2_0123456789ab", bundle.UPDATE_KEEP_DEFAULT)
    assert kept == ["/home", "/srv", "/etc/ssh/ssh_host_ed25519_key"]
    staged = p7 / layout.DELTAS_DIR / "2_0123456789ab"
    assert files(staged) == {"home/pi/notes.txt", "home/pi/link", "srv/db/data", "etc/ssh/ssh_host_ed25519_key"}
    assert (staged / "home/pi/link").is_symlink()
    assert oct((staged / "etc/ssh/ssh_host_ed25519_key").stat().st_mode & 0o777) == "0o600"
    assert files(p7 / layout.DELTA_DIR) >= {"etc/passwd", "var/lib/apt/x"}  # the running delta is untouched
    assert not list((p7 / layout.DELTAS_DIR).glob(".*"))  # no temporary left


def test_keep_everything_and_keep_nothing(tmp_path: Path) -> None:
    p7 = make_p7(tmp_path)
    update._stage_delta(p7, "2_0123456789ab", ("/",))
    assert files(p7 / layout.DELTAS_DIR / "2_0123456789ab") == files(p7 / layout.DELTA_DIR)
    assert update._stage_delta(p7, "3_0123456789ab", ("/nothing/here",)) == []
    assert files(p7 / layout.DELTAS_DIR / "3_0123456789ab") == set()


def test_owner_marker_is_made_once(tmp_path: Path) -> None:
    p7 = make_p7(tmp_path)
    update._mark_owner(p7, layout.SYSTEM_FACTORY)
    update._mark_owner(p7, "2_0123456789ab")  # a marker exists already: it is the initramfs's to rename
    assert sorted(p.name for p in (p7 / layout.DELTA_STATE_DIR).glob("owner.*")) == ["owner.factory"]


def test_garbage_is_what_no_slot_boots(tmp_path: Path) -> None:
    p7 = make_p7(tmp_path)
    for name in ("1.5_aaaaaaaaaaaa", "2_bbbbbbbbbbbb", ".3_cccccccccccc.new"):
        (p7 / layout.SYSTEMS_DIR / name).mkdir(parents=True)
        (p7 / layout.DELTAS_DIR / name).mkdir(parents=True)
    (p7 / layout.DELTAS_DIR / layout.SYSTEM_FACTORY).mkdir()
    gone = update.collect_garbage(p7, {"2_bbbbbbbbbbbb"})
    assert sorted(gone) == sorted(["systems/1.5_aaaaaaaaaaaa", "systems/.3_cccccccccccc.new",
                                   "deltas/1.5_aaaaaaaaaaaa", "deltas/.3_cccccccccccc.new"])
    assert {p.name for p in (p7 / layout.DELTAS_DIR).iterdir()} == {"2_bbbbbbbbbbbb", layout.SYSTEM_FACTORY}


def test_no_room_for_the_kept_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p7 = make_p7(tmp_path)
    monkeypatch.setattr(delta, "filesystem_space", lambda _p: (10**9, update.MARGIN))
    with pytest.raises(DeviceError, match="kept paths need"):
        update._stage_delta(p7, "2_0123456789ab", bundle.UPDATE_KEEP_DEFAULT)
    assert not (p7 / layout.DELTAS_DIR).exists() or not any((p7 / layout.DELTAS_DIR).iterdir())


def test_a_bundle_file_is_copied_onto_p7_if_it_fits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p7 = make_p7(tmp_path / "p7")
    src = tmp_path / "v2.bundle"
    src.write_bytes(b"x" * 10_000)
    (p7 / layout.UPDATE_INCOMING_DIR).mkdir(parents=True)
    (p7 / layout.UPDATE_INCOMING_DIR / "old.part").write_bytes(b"stale")  # an earlier download goes
    part = update._download(p7, str(src), None)
    assert part.read_bytes() == src.read_bytes() and part.parent == p7 / layout.UPDATE_INCOMING_DIR
    assert [p.name for p in part.parent.iterdir()] == [part.name]
    monkeypatch.setattr(delta, "filesystem_space", lambda _p: (10**9, update.MARGIN + 5_000))
    with pytest.raises(DeviceError, match=r"needs 0\.0 MiB more .* 64 MiB"):
        update._download(p7, f"file://{src}", None)
    with pytest.raises(DeviceError, match="no such bundle file"):
        update._download(p7, str(tmp_path / "missing.bundle"), None)


def test_an_installed_system_is_copied_and_read_back(tmp_path: Path) -> None:
    iso = b"system" * 1000
    meta = bundle.Metadata(version="2", target="pc", arch="amd64", layout=layout.LAYOUT_VERSION, built="now",
                           kernel="6.12", system_size=len(iso), system_sha256=hashlib.sha256(iso).hexdigest(),
                           files={f: "ab" * 32 for f in (layout.KERNEL_PATH, layout.INITRD_PATH, layout.SQUASHFS_PATH)})
    src = make_p7(tmp_path / "src")
    d = src / layout.SYSTEMS_DIR / meta.system_name
    d.mkdir(parents=True)
    (d / layout.SYSTEM_META_NAME).write_bytes(meta.to_json())
    (d / layout.SYSTEM_SIG_NAME).write_bytes(b"sig")
    (d / layout.SYSTEM_ISO_NAME).write_bytes(iso)
    assert update.system_bytes(src, meta.system_name) == len(iso) + 3 + len(meta.to_json())
    dest = tmp_path / "dest"
    dest.mkdir()
    assert update.copy_system(src, dest, meta.system_name) == len(iso)
    assert files(dest / layout.SYSTEMS_DIR / meta.system_name) == files(d)
    # A system whose file no longer matches its signed hash is not carried to another card.
    (d / layout.SYSTEM_ISO_NAME).write_bytes(iso[:-1] + b"X")
    with pytest.raises(DeviceError, match="does not read back"):
        update.copy_system(src, tmp_path / "dest2", meta.system_name)
    with pytest.raises(DeviceError, match="missing or damaged"):
        update.copy_system(src, tmp_path / "dest3", "3_abababababab")
