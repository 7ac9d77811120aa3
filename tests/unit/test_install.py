"""liveng install: the new disk's partition plan and the checks on the target."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from liveng import layout
from liveng.device import install, snapshot
from liveng.device.bootstate import DeviceError

MiB = layout.MiB


def source_extents() -> dict[int, tuple[int, int]]:
    extents, _ = layout.plan(boot=256 * MiB, system=420 * MiB, slot=256 * MiB, persistence=1024 * MiB)
    return {e.number: (e.start, e.size) for e in extents}


def test_plan_keeps_p1_to_p6_and_fills_the_disk_with_p7() -> None:
    src = source_extents()
    disk = 4096 * MiB + 12345
    planned = install.plan(src, disk)
    by_number = {e.number: e for e in planned}
    for n in (1, 2, 5, 6):
        assert (by_number[n].start, by_number[n].size) == src[n]
    assert by_number[7].start == src[7][0]
    assert by_number[7].end == by_number[3].end == 4096 * MiB  # aligned down to a MiB
    script = layout.sfdisk_script("0123abcd", planned)
    assert "label-id: 0x0123abcd" in script
    assert f"start={src[7][0] // 512}, size={(4096 * MiB - src[7][0]) // 512}, type=83" in script


def test_plan_stops_at_the_mbr_limit() -> None:
    src = source_extents()
    planned = {e.number: e for e in install.plan(src, 3 * 2**40)}  # 3 TiB
    assert planned[3].end == planned[7].end == 2**32 * 512
    script = layout.sfdisk_script("0123abcd", list(planned.values()))
    assert f"start={src[7][0] // 512}, size={2**32 - src[7][0] // 512}, type=83" in script
    assert all(int(w.split("=")[1].rstrip(",")) < 2**32 for w in script.split() if w.startswith("size="))


def test_plan_refuses_a_small_disk() -> None:
    src = source_extents()
    with pytest.raises(DeviceError, match="needs at least"):
        install.plan(src, src[7][0] + 100 * MiB)
    with pytest.raises(DeviceError, match="needs at least"):
        install.plan(src, src[7][0] + 300 * MiB, need=400 * MiB)


def test_target_must_be_a_whole_block_device(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="does not exist"):
        install.whole_disk(tmp_path / "nope")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(DeviceError, match="not a block device"):
        install.whole_disk(tmp_path / "file")


def test_volume_key_from_the_dm_table() -> None:
    mapping = Path("/dev/mapper/vda7")
    key = bytes(range(64))
    line = f"0 4177920 crypt aes-xts-plain64 {key.hex()} 0 254:7 16384\n"
    assert install.key_from_table(line, mapping) == key
    keyring = "0 4177920 crypt aes-xts-plain64 :64:logon:cryptsetup:1234-d0 0 254:7 16384"
    with pytest.raises(DeviceError, match="kernel keyring"):
        install.key_from_table(keyring, mapping)
    with pytest.raises(DeviceError, match="not a dm-crypt mapping"):
        install.key_from_table("0 100 linear 254:7 0", mapping)


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts and trusted.* xattrs need root")
def test_delta_copy_keeps_whiteouts_and_overlay_xattrs(tmp_path: Path) -> None:
    src, dst = tmp_path / "rw", tmp_path / "new"
    (src / "etc/opaque").mkdir(parents=True)
    dst.mkdir()
    (src / "etc/file").write_text("changed\n")
    os.chmod(src / "etc/file", 0o640)
    os.mknod(src / "etc/deleted", 0o600 | stat.S_IFCHR, os.makedev(0, 0))  # an overlayfs whiteout
    os.setxattr(src / "etc/opaque", "trusted.overlay.opaque", b"y")
    snapshot.copy_tree(src, dst)
    assert (dst / "etc/file").read_text() == "changed\n"
    assert stat.S_IMODE((dst / "etc/file").stat().st_mode) == 0o640
    st = (dst / "etc/deleted").lstat()
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(dst / "etc/opaque", "trusted.overlay.opaque") == b"y"
