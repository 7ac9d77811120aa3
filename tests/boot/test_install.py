"""liveng install: a running PC image copies itself to an empty second disk, which then boots alone
(UEFI; with LIVENG_LONG_TESTS=1 then BIOS too) with its own working persistence and the delta carried over."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from liveng import layout
from liveng.host.disk import check_layout, read_table
from tests.boot import golden
from tests.boot.conftest import INSTALL_TARGET_SIZE as TARGET_SIZE
from tests.boot.conftest import partition_hash
from tests.vm import Vm

pytestmark = pytest.mark.boot



def check_runs_from(vm: Vm, image_id: str, disk_bytes: int) -> None:
    """/ is the overlay of p2 and p7 of the one disk attached, the installed one."""
    assert vm.sh("findmnt -no FSTYPE /") == "overlay"
    medium = vm.sh("findmnt -no SOURCE /run/live/medium")
    assert medium == "/dev/vda2"
    assert vm.sh(f"blkid -s PARTUUID -o value {medium}") == layout.partuuid(image_id, 2)
    assert int(vm.sh("blockdev --getsize64 /dev/vda")) == disk_bytes
    upper_dev = vm.sh("findmnt -no SOURCE --target /run/live/persistence/vda7")
    assert upper_dev == "/dev/vda7"
    assert vm.sh(f"blkid -s LABEL -o value {upper_dev}") == layout.persistence_label(image_id)


def test_install_to_a_second_disk(pc_golden: golden.Golden, tmp_path: Path) -> None:
    fresh_copy = tmp_path / "disk.img"
    target = golden.blank(tmp_path / "target.img", TARGET_SIZE)
    # A disk that was used before: an old partition table the kernel will know about.
    subprocess.run(["sfdisk", "--quiet", str(target)], input=b"label: dos\n,512M,83\n,,83\n", check=True)
    carried, kept = secrets.token_hex(8), secrets.token_hex(8)
    log = tmp_path / "console.log"
    with golden.resume(pc_golden, fresh_copy, log, disks=(target,)) as vm:
        image_id = read_table(fresh_copy).image_id
        # The saved VM knew the disk blank: it reads the old table now, as at a boot.
        vm.sh("blockdev --rereadpt /dev/vdb && udevadm settle")
        assert vm.sh("ls /sys/block/vdb/ | grep -c '^vdb[0-9]' || true") == "2"
        disks = dict(line.split() for line in vm.sh("lsblk -dbno NAME,SIZE").splitlines())
        name = next(n for n, size in disks.items() if int(size) == TARGET_SIZE)
        assert name != "vda"
        out = vm.sh("liveng install /dev/vda --yes", check=False)
        assert "the disk this system runs from" in out
        out = vm.sh(f"liveng install /dev/{name}1 --yes", check=False)
        assert "is a partition" in out
        out = vm.sh(f"liveng install /dev/{name} </dev/null", check=False)
        assert "needs a confirmation" in out
        vm.sh(f"echo {carried} > /root/carried-token")
        out = vm.sh(f"time liveng install /dev/{name} --with-delta --yes", timeout=1200)
        print(out)
        assert f"installed on /dev/{name}" in out
        # The running system was not told about the copy's partitions (same partition ids).
        assert vm.sh(f"ls /sys/block/{name}/ | grep -c '^{name}[0-9]' || true") == "0"
        assert vm.sh(f"readlink -f /dev/disk/by-partuuid/{layout.partuuid(image_id, 7)}") == "/dev/vda7"
        vm.poweroff()
    table = read_table(target)
    check_layout(table)
    assert table.image_id == image_id
    assert table.entry(7).start + table.entry(7).size == TARGET_SIZE
    # p2 and the running kernel's slot are copied raw (p1 differs: a fresh boot state in grubenv).
    for role in (layout.Role.SYSTEM, layout.Role.SLOT_A):
        assert partition_hash(target, role) == partition_hash(fresh_copy, role)
    with Vm(target, log) as vm:  # UEFI, the second disk alone
        print(f"installed disk, UEFI: power-on to shell {vm.wait_shell():.1f} s")
        assert vm.sh("test -d /sys/firmware/efi && echo efi") == "efi"
        check_runs_from(vm, image_id, TARGET_SIZE)
        assert vm.sh("cat /root/carried-token") == carried
        assert json.loads(vm.sh("liveng kernel status --json"))["order"][0] == "slot-a"
        vm.sh(f"echo {kept} > /root/kept-token")
        vm.poweroff()
    if os.environ.get("LIVENG_LONG_TESTS") != "1":
        return  # CI: the UEFI boot above; the BIOS boot of the copy (its MBR code and core.img) outside CI
    with Vm(target, log, bios=True) as vm:
        print(f"installed disk, BIOS: power-on to shell {vm.wait_shell():.1f} s")
        assert vm.sh("test -d /sys/firmware/efi || echo bios") == "bios"
        check_runs_from(vm, image_id, TARGET_SIZE)
        assert vm.sh("cat /root/kept-token") == kept
        assert vm.sh("cat /root/carried-token") == carried
        vm.poweroff()
