"""Snapshot archives keep overlay semantics: a real overlayfs on the host, its upper dir archived by
the device code, extracted into a new upper dir and mounted again must show the same tree."""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from liveng.device import snapshot
from liveng.device.bootstate import DeviceError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="overlayfs mounts and trusted.* xattrs need root")

# A POSIX ACL as the kernel stores it in system.posix_acl_access: version 2, then (tag, perm, id).
_UNDEFINED = 0xFFFFFFFF
ACL = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in (
    (0x01, 6, _UNDEFINED), (0x02, 4, 1234), (0x04, 4, _UNDEFINED), (0x10, 4, _UNDEFINED), (0x20, 0, _UNDEFINED)))


def mount_overlay(lower: Path, upper: Path, work: Path, merged: Path) -> None:
    # The options live-boot uses for the root.
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={work},redirect_dir=on", str(merged)], check=True)


def view(merged: Path) -> dict[str, tuple[object, ...]]:
    """What a program sees: every path with its type, mode, owner, content, link target, xattrs."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(merged):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            content: object = None
            if p.is_symlink():
                content = os.readlink(p)
            elif p.is_file():
                content = p.read_bytes()
            xattrs = {k: os.getxattr(p, k, follow_symlinks=False) for k in os.listxattr(p, follow_symlinks=False)
                      if not k.startswith("trusted.overlay.")}
            out[str(p.relative_to(merged))] = (st.st_mode, st.st_uid, st.st_gid, content, sorted(xattrs.items()))
    return out


@pytest.fixture()
def overlay(tmp_path: Path) -> Iterator[Path]:
    for d in ("lower/etc/d1", "lower/etc/d2", "lower/usr/bin", "upper", "work", "merged"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "lower/etc/gone").write_text("system file\n")
    (tmp_path / "lower/etc/config").write_text("original\n")
    (tmp_path / "lower/etc/d1/old").write_text("old\n")
    (tmp_path / "lower/etc/d2/kept").write_text("kept\n")
    (tmp_path / "lower/usr/bin/tool").write_text("#!/bin/sh\n")
    merged = tmp_path / "merged"
    mount_overlay(tmp_path / "lower", tmp_path / "upper", tmp_path / "work", merged)
    try:
        yield tmp_path
    finally:
        subprocess.run(["umount", str(merged)], check=False)


def test_archive_round_trip_keeps_overlay_semantics(overlay: Path) -> None:
    m = overlay / "merged"
    (m / "etc/gone").unlink()  # whiteout
    (m / "etc/config").write_text("changed\n")
    for f in (m / "etc/d1").iterdir():  # opaque directory
        f.unlink()
    (m / "etc/d1").rmdir()
    (m / "etc/d1").mkdir()
    (m / "etc/d1/new").write_text("new\n")
    (m / "etc/d2").rename(m / "etc/d3")  # redirect
    (m / "srv").mkdir()
    (m / "srv/data").write_text("data\n")
    os.link(m / "srv/data", m / "srv/hardlink")
    with open(m / "srv/sparse", "wb") as sparse:
        sparse.seek(64 << 20)
        sparse.write(b"end")
    os.symlink("../srv/data", m / "etc/link")
    os.chown(m / "srv/data", 1234, 2345)
    os.chmod(m / "srv/data", 0o4750)
    os.setxattr(m / "srv/data", "user.liveng", b"kept")
    os.setxattr(m / "etc/config", "system.posix_acl_access", ACL)
    before = view(m)
    assert "etc/gone" not in before and "etc/d1/old" not in before and "etc/d3/kept" in before
    subprocess.run(["umount", str(m)], check=True)

    archive = overlay / "snap.tar.zst"
    with open(archive, "wb") as out:
        result = snapshot.archive(overlay / "upper", out)
    # The 64 MiB sparse file takes its data only: the tar stream stays small.
    assert result.warnings == [] and result.tar_bytes is not None and 0 < result.tar_bytes < 1 << 20
    restored = overlay / "upper2"
    restored.mkdir()
    snapshot.extract(archive, restored)
    (overlay / "work2").mkdir()
    mount_overlay(overlay / "lower", restored, overlay / "work2", m)
    after = view(m)
    assert after == before
    assert (m / "etc/config").read_text() == "changed\n"
    assert os.getxattr(m / "etc/config", "system.posix_acl_access") == ACL
    st_data, st_link = (restored / "srv/data").stat(), (restored / "srv/hardlink").stat()
    assert st_data.st_ino == st_link.st_ino and st_data.st_nlink == 2
    # Sparse: 64 MiB apparent, almost nothing allocated.
    st = (restored / "srv/sparse").stat()
    assert st.st_size == (64 << 20) + 3 and st.st_blocks * 512 < 1 << 20
    assert archive.stat().st_size < 1 << 20


def test_a_plain_copy_would_bring_the_deleted_file_back(overlay: Path) -> None:
    """The check above can fail: losing the whiteouts and xattrs does change the merged view."""
    m = overlay / "merged"
    (m / "etc/gone").unlink()
    for f in (m / "etc/d1").iterdir():
        f.unlink()
    (m / "etc/d1").rmdir()
    (m / "etc/d1").mkdir()
    before = view(m)
    subprocess.run(["umount", str(m)], check=True)
    plain = overlay / "plain"
    # What a naive backup does: regular files and directories only, no xattrs.
    subprocess.run(["cp", "-r", "--no-preserve=all", str(overlay / "upper"), str(plain)], check=False)
    for p in plain.rglob("*"):
        if p.is_char_device():
            p.unlink()
    (overlay / "work2").mkdir()
    mount_overlay(overlay / "lower", plain, overlay / "work2", m)
    after = view(m)
    assert after != before and "etc/gone" in after and "etc/d1/old" in after


def test_damaged_archive_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.zst"
    bad.write_bytes(b"not zstd at all")
    (tmp_path / "dest").mkdir()
    with pytest.raises(DeviceError, match="cannot be decompressed"):
        snapshot.extract(bad, tmp_path / "dest")


def test_create_list_find_delete(tmp_path: Path) -> None:
    """The p7 side of snapshots on a directory standing in for p7."""
    p7 = tmp_path / "p7"
    (p7 / "rw/etc").mkdir(parents=True)
    (p7 / "rw/etc/motd").write_text("hello\n")
    path, warnings = snapshot.create(p7, "first")
    assert warnings == [] and path == p7 / "liveng/snapshots/first.tar.zst"
    with pytest.raises(DeviceError, match="already exists"):
        snapshot.create(p7, "first")
    snaps = snapshot.list_snapshots(p7)
    assert [s.name for s in snaps] == ["first"] and snaps[0].delta_bytes and snaps[0].size == path.stat().st_size
    # --to a directory elsewhere: not listed on p7, found by path.
    elsewhere = tmp_path / "usb"
    elsewhere.mkdir()
    external, _ = snapshot.create(p7, "second", to=elsewhere)
    assert external == elsewhere / "second.tar.zst" and [s.name for s in snapshot.list_snapshots(p7)] == ["first"]
    assert snapshot.find(p7, str(external)) == external
    with pytest.raises(DeviceError, match=r"no snapshot named second \(snapshots: first\)"):
        snapshot.find(p7, "second")
    out = tmp_path / "x"
    out.mkdir()
    snapshot.extract(external, out)
    assert (out / "etc/motd").read_text() == "hello\n"
    snapshot.delete(p7, "first")
    assert snapshot.list_snapshots(p7) == [] and not list((p7 / "liveng/snapshots").iterdir())
    with pytest.raises(DeviceError, match="no delta"):
        snapshot.create(tmp_path / "empty", "x")
