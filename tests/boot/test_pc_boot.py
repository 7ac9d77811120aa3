"""The PC image boots under UEFI and BIOS onto the overlay of p2's squashfs and p7, and keeps the delta."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from liveng import layout
from liveng.host.disk import read_table
from tests.boot import golden
from tests.boot.conftest import build_image, partition_hash, persistence_needs_recovery
from tests.vm import Vm

pytestmark = pytest.mark.boot


def check_live_layout(vm: Vm, image_id: str) -> None:
    """/ is an overlay: lower = the squashfs on this image's p2, upper = on this image's p7."""
    assert vm.sh("findmnt -no FSTYPE /") == "overlay"
    options = vm.sh("findmnt -no OPTIONS /")
    assert "lowerdir=/run/live/rootfs/filesystem.squashfs" in options
    medium = vm.sh("findmnt -no SOURCE /run/live/medium")
    assert vm.sh(f"blkid -s PARTUUID -o value {medium}") == layout.partuuid(image_id, 2)
    assert vm.sh(f"blkid -s TYPE -o value {medium}") == "iso9660"
    squashfs_loop = vm.sh("findmnt -no SOURCE /run/live/rootfs/filesystem.squashfs")
    backing = vm.sh(f"losetup -nO BACK-FILE {squashfs_loop}")
    assert backing == f"/run/live/medium/{layout.SQUASHFS_PATH}"
    upper = next(o.split("=", 1)[1] for o in options.split(",") if o.startswith("upperdir="))
    upper_dev = vm.sh(f"findmnt -no SOURCE --target {upper}")
    assert vm.sh(f"blkid -s PARTUUID -o value {upper_dev}") == layout.partuuid(image_id, 7)
    assert vm.sh(f"blkid -s LABEL -o value {upper_dev}") == layout.persistence_label(image_id)
    status = json.loads(vm.sh("liveng status --json"))
    assert status["image_id"] == image_id
    assert status["root_fstype"] == "overlay"
    assert status["persistence_device"] == upper_dev


def test_uefi_then_bios_boot_keep_the_delta(pc_golden: golden.Golden, boot_dir: Path, tmp_path: Path) -> None:
    """The golden's boot is this image's UEFI cold boot; then a real reboot, and a BIOS cold boot of the
    same disk with a second liveng disk attached (same labels and files: only the id tells them apart)."""
    disk = tmp_path / "disk.img"
    log = tmp_path / "console.log"
    print(f"UEFI power-on to shell: {pc_golden.boot_seconds:.1f} s (the golden's boot)")
    token = secrets.token_hex(8)
    with golden.resume(pc_golden, disk, log) as vm:
        image_id = read_table(disk).image_id
        system_before = partition_hash(disk, layout.Role.SYSTEM)
        check_live_layout(vm, image_id)
        assert vm.sh("cat /proc/cmdline").count("liveng.boot=slot-a") == 1
        assert vm.sh("test -d /sys/firmware/efi && echo efi") == "efi"
        assert "verify OK" in vm.sh("liveng verify", timeout=900)
        vm.sh(f"echo {token} > /root/liveng-token")
        upper = vm.sh("findmnt -no TARGET --target /run/live/persistence/vda7/rw")
        assert vm.sh(f"cat {upper}/rw/root/liveng-token") == token  # the write landed in the delta on p7
        print(f"UEFI reboot to shell: {vm.reboot():.1f} s")
        assert vm.sh("cat /root/liveng-token") == token
        check_live_layout(vm, image_id)
        vm.poweroff()
    # A clean power-off leaves p7 unmounted (through liveng-shutdown's RAM root), not for the next
    # boot to replay its journal.
    assert "liveng: persistence unmounted cleanly" in log.read_text(errors="replace")
    assert not persistence_needs_recovery(disk)
    other = build_image(boot_dir, "trixie", "other")
    other_id = read_table(other).image_id
    assert other_id != image_id
    with Vm(disk, log, bios=True, disks=(other,)) as vm:
        print(f"BIOS power-on to shell (another liveng disk attached): {vm.wait_shell():.1f} s")
        assert vm.sh("test -d /sys/firmware/efi || echo bios") == "bios"
        check_live_layout(vm, image_id)
        assert vm.sh("blkid -s PARTUUID -o value /dev/vdb2") == layout.partuuid(other_id, 2)
        assert vm.sh("cat /root/liveng-token") == token
        vm.poweroff()
    assert partition_hash(disk, layout.Role.SYSTEM) == system_before


def test_bookworm_image_boots(boot_dir: Path, tmp_path: Path) -> None:
    image = build_image(boot_dir, "bookworm", "bookworm")
    image_id = read_table(image).image_id
    with Vm(image, tmp_path / "console.log", snapshot=True) as vm:
        print(f"bookworm UEFI power-on to shell: {vm.wait_shell():.1f} s")
        assert vm.sh(". /etc/os-release; echo $VERSION_CODENAME") == "bookworm"
        check_live_layout(vm, image_id)
        vm.poweroff()
    image.unlink()
