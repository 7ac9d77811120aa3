"""live-premount/liveng-room on a REAL ext4 stand-in for p7 (a loop device): without free inodes the
reserve is released and overlayfs can mount the delta again; with the reserve already used up,
persistent mode boots without persistence (p7 untouched); the reserve is made again once there is
room; ram mode never writes."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

from liveng import layout
from liveng.host.rootfs import initramfs_functions

SCRIPT = Path(str(resources.files("liveng.device").joinpath("data/initramfs/live-premount/liveng-room")))


def mount_p7(root: Path, inodes: int) -> Path:
    p7 = root / "p7"
    p7.mkdir()
    image = root / "p7.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-N", str(inodes), str(image), "16M"], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(p7)], check=True)
    (p7 / "rw").mkdir()
    (p7 / "work").mkdir()
    layout.make_reserve(p7)
    (root / "scripts").mkdir()
    (root / "scripts/liveng-functions").write_bytes(initramfs_functions())
    return p7


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a stand-in p7 needs root")
    yield tmp_path
    for mnt in (tmp_path / "merged", tmp_path / "p7"):
        if os.path.ismount(mnt):
            subprocess.run(["umount", str(mnt)], check=True)


def exhaust(p7: Path) -> None:
    """The owner's files take every inode left, outside the delta as in the fault campaign."""
    (p7 / "files").mkdir()
    n = 0
    try:
        while True:
            (p7 / "files" / f"f{n}").touch()
            n += 1
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    assert os.statvfs(p7).f_ffree == 0


def run(root: Path, mode: str = layout.MODE_PERSISTENT) -> str:
    (root / "cmdline").write_text(f"boot=live liveng.id=12ab34cd liveng.mode={mode}\n")
    env = {**os.environ, "LIVENG_DELTA_TEST_ROOT": str(root)}
    proc = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, check=True)
    return proc.stdout + proc.stderr


def reserve(p7: Path) -> list[str]:
    d = p7 / layout.RESERVE_DIR
    return sorted(x.name for x in d.iterdir()) if d.is_dir() else []


def overlay_mounts(root: Path, p7: Path) -> bool:
    (root / "lower").mkdir(exist_ok=True)
    (root / "merged").mkdir(exist_ok=True)
    proc = subprocess.run(["mount", "-t", "overlay", "-o",
                           f"lowerdir={root / 'lower'},upperdir={p7 / 'rw'},workdir={p7 / 'work'}",
                           "overlay", str(root / "merged")], capture_output=True, check=False)
    if proc.returncode != 0:
        return False
    writable = subprocess.run(["touch", str(root / "merged/written")], check=False).returncode == 0
    subprocess.run(["umount", str(root / "merged")], check=True)
    return writable


def test_no_free_inode_releases_the_reserve_and_the_delta_mounts(stand_in: Path) -> None:
    p7 = mount_p7(stand_in, 256)
    exhaust(p7)
    assert not overlay_mounts(stand_in, p7)  # the defect: no inode for overlayfs's work directory
    out = run(stand_in)
    assert "its reserve was released" in out
    assert reserve(p7) == []
    assert os.statvfs(p7).f_ffree >= layout.RESERVE_FILES
    assert not (stand_in / "param.conf").exists()
    assert "reserve was released" in (stand_in / "notice").read_text()
    assert overlay_mounts(stand_in, p7)
    assert (p7 / "rw/written").exists()


def test_reserve_used_up_boots_without_persistence_and_leaves_p7(stand_in: Path) -> None:
    p7 = mount_p7(stand_in, 256)
    for name in reserve(p7):
        (p7 / layout.RESERVE_DIR / name).unlink()
    exhaust(p7)
    before = sorted(str(p) for p in p7.rglob("*"))
    out = run(stand_in)
    assert (stand_in / "param.conf").read_text() == "NOPERSISTENCE=true\n"
    assert (stand_in / "room-ram").exists()  # live-bottom/liveng-ram: ram mode's way
    assert "runs as RAM mode does" in out and "RAM mode" in (stand_in / "notice").read_text()
    assert sorted(str(p) for p in p7.rglob("*")) == before


def test_ram_paths_mode_releases_but_never_asks_for_no_persistence(stand_in: Path) -> None:
    p7 = mount_p7(stand_in, 256)
    for name in reserve(p7):
        (p7 / layout.RESERVE_DIR / name).unlink()
    exhaust(p7)
    run(stand_in, layout.MODE_RAM_PATHS)  # live-boot has no persistence in the RAM modes anyway
    assert not (stand_in / "param.conf").exists() and not (stand_in / "room-ram").exists()


def test_ram_mode_writes_nothing(stand_in: Path) -> None:
    p7 = mount_p7(stand_in, 256)
    exhaust(p7)
    assert run(stand_in, layout.MODE_RAM) == ""
    assert len(reserve(p7)) == layout.RESERVE_FILES
    assert not (stand_in / "param.conf").exists() and not (stand_in / "notice").exists()


def test_reserve_made_again_once_there_is_room(stand_in: Path) -> None:
    p7 = mount_p7(stand_in, 4096)
    for name in reserve(p7)[:10]:
        (p7 / layout.RESERVE_DIR / name).unlink()
    run(stand_in)
    assert reserve(p7) == sorted(str(i) for i in range(layout.RESERVE_FILES))
    assert (p7 / layout.RESERVE_DIR).stat().st_mode & 0o777 == 0o700
    # Complete: a boot with room writes nothing.
    stamp = (p7 / layout.RESERVE_DIR).stat().st_mtime_ns
    run(stand_in)
    assert (p7 / layout.RESERVE_DIR).stat().st_mtime_ns == stamp
    assert not (stand_in / "notice").exists()


def test_little_room_keeps_the_reserve_as_it_is(stand_in: Path) -> None:
    """Between the two thresholds: neither released nor made again."""
    p7 = mount_p7(stand_in, 256)
    (p7 / layout.RESERVE_DIR / "0").unlink()
    run(stand_in)
    assert len(reserve(p7)) == layout.RESERVE_FILES - 1


def test_status_shows_what_the_initramfs_did(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from liveng.device import status

    notice = tmp_path / "notices"
    monkeypatch.setattr(layout, "INITRAMFS_NOTICE_PATH", str(notice))
    assert status._initramfs_notices() == []
    notice.write_text("the persistence partition had 0 free inodes: its reserve was released\n")
    report = {"image_id": "12ab34cd", "boot_entry": "slot-a", "firmware": "BIOS", "kernel": "6.12",
              "root_fstype": "overlay", "lower": [], "upper": None, "persistence_device": None,
              "warnings": status._initramfs_notices()}
    assert "warning:      the persistence partition had 0 free inodes: its reserve was released" in status.lines(report)
