"""Keeping the delta: snapshot, factory reset, restore; resize to a bigger disk (with a power cut);
verify naming a changed file on p2; the boot menu's factory reset."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import pytest

from liveng import layout
from liveng.host.bootloader import grub
from liveng.host.disk import read_table
from liveng.host.inspect import ext4_superblock
from liveng.host.qmp import Qmp
from tests.boot import golden
from tests.boot.iso import file_extent
from tests.vm import Vm

pytestmark = pytest.mark.boot

PACKAGE = "hello"  # small, not in the image
DELETED = "/etc/issue.net"  # comes with base-files
CONFIG = "/etc/motd"
REPLACED_DIR = "/usr/share/doc/zstd"  # removed and made again: an opaque directory in the delta


def system_view(vm: Vm) -> dict[str, str]:
    return {
        "package": vm.sh(f"command -v {PACKAGE} >/dev/null && {PACKAGE} || echo absent"),
        "deleted": vm.sh(f"test -e {DELETED} && echo present || echo absent"),
        "config": vm.sh(f"md5sum < {CONFIG}"),
        "dir": vm.sh(f"ls {REPLACED_DIR}"),
    }


def test_snapshot_reset_restore(pc_golden: golden.Golden, tmp_path: Path) -> None:
    with golden.resume(pc_golden, tmp_path / "disk.img", tmp_path / "console.log") as vm:
        pristine = system_view(vm)
        assert pristine["package"] == "absent" and pristine["deleted"] == "present"
        vm.sh("apt-get update -q", timeout=900)
        vm.sh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {PACKAGE}", timeout=900)
        vm.sh(f"rm {DELETED}; echo 'changed by the test' >> {CONFIG}")
        vm.sh(f"rm -r {REPLACED_DIR}; mkdir {REPLACED_DIR}; echo mine > {REPLACED_DIR}/mine")
        changed = system_view(vm)
        assert changed["package"] == "Hello, world!" and changed["deleted"] == "absent"
        assert changed["config"] != pristine["config"] and changed["dir"] == "mine"

        start = time.monotonic()
        print(vm.sh("liveng snapshot create before-reset", timeout=600))
        print(f"snapshot of the delta: {time.monotonic() - start:.1f} s")
        snaps = json.loads(vm.sh("liveng snapshot list --json"))
        assert [s["name"] for s in snaps] == ["before-reset"] and snaps[0]["size"] > 0
        assert "already exists" in vm.sh("liveng snapshot create before-reset", check=False)
        assert "no snapshot named nope" in vm.sh("liveng snapshot restore nope", check=False)
        # Without a terminal and without --yes, reset refuses.
        out = vm.sh("liveng reset < /dev/null; echo rc=$?")
        assert "give --yes" in out and out.endswith("rc=1")
        vm.sh("liveng reset --yes")
        assert "factory reset" in vm.sh("liveng status")
        vm.sh("liveng cancel")
        assert "pending:      nothing" in vm.sh("liveng status")
        vm.sh("liveng reset --yes")
        status = json.loads(vm.sh("liveng status --json"))
        assert status["pending"]["action"] == "reset"

        vm.reboot()
        assert system_view(vm) == pristine
        status = json.loads(vm.sh("liveng status --json"))
        assert status["pending"] is None and status["snapshots"]["last"]["name"] == "before-reset"

        vm.sh("liveng snapshot restore before-reset", timeout=600)
        assert json.loads(vm.sh("liveng status --json"))["pending"]["snapshot"] == "before-reset"
        vm.sh("echo discarded > /root/after-restore-request")
        vm.reboot()
        assert system_view(vm) == changed
        assert vm.sh("test -e /root/after-restore-request && echo kept || echo gone") == "gone"
        vm.sh("liveng snapshot delete before-reset")
        assert vm.sh("liveng snapshot list").startswith("no snapshots")
        vm.poweroff()


def choose_menu_reset(vm: Vm, answer: str) -> None:
    """At the GRUB menu, pick 'Factory reset' (the 4th entry, a submenu) and then its "Yes" or "No"."""
    vm.proc.expect_exact(grub.FACTORY_RESET_TITLE, timeout=300)
    for _ in range(len(layout.ENTRIES)):
        vm.proc.send("\x1b[B")  # down
        time.sleep(0.2)
    vm.proc.send("\r")
    vm.proc.expect_exact(grub.FACTORY_RESET_YES[:20], timeout=60)
    time.sleep(0.5)
    if answer == "yes":
        vm.proc.send("\x1b[B")
        time.sleep(0.2)
    vm.proc.send("\r")


def test_resize_power_cut_verify_and_menu_reset(pc_golden: golden.Golden, tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    log = tmp_path / "console.log"
    token = secrets.token_hex(8)
    vm = golden.resume(pc_golden, disk, log)
    image_id = read_table(disk).image_id
    p7 = read_table(disk).entry(7)
    try:
        # Data on p7 (outside the delta) before the resize, to see it intact after it.
        vm.sh(f"echo {token} > /run/live/persistence/vda7/token; sync")
        size_before = disk.stat().st_size
        assert size_before < 3 * 2**30
        # The disk grows under the running system (QEMU's block_resize: the file grows, the guest's
        # virtio disk reports the new size), as a card bigger than the image would be at the first boot.
        assert vm.qmp_path is not None
        qmp = Qmp(vm.qmp_path)
        qmp.execute("block_resize", device="disk0", size=4 * 2**30)
        qmp.close()
        vm.sh("until [ $(blockdev --getsize64 /dev/vda) = $((4 << 30)) ]; do sleep 1; done", timeout=120)
        # The power goes once the partition table has grown, as ext4 starts growing.
        vm.proc.sendline("liveng resize")
        vm.proc.expect_exact("growing the persistence partition", timeout=300)
        vm.proc.expect_exact("growing the ext4", timeout=300)
        vm.power_cut()
    finally:
        vm.close()
    after_cut = read_table(disk)
    superblock = ext4_superblock(disk, p7.start)
    assert superblock is not None, "p7 holds no ext4 after the cut"
    fs_blocks = superblock["Block count"]
    print(f"after the cut: p3 {after_cut.entry(3).size // layout.MiB} MiB, p7 {after_cut.entry(7).size // layout.MiB} "
          f"MiB, ext4 {int(fs_blocks) * 4096 // layout.MiB} MiB")
    assert after_cut.entry(7).start + after_cut.entry(7).size == 4 * 2**30

    # The next boot finishes the resize by itself (liveng-resize.service).
    with Vm(disk, log) as vm:
        vm.wait_shell()
        vm.sh("systemctl start liveng-resize.service")
        disk_end = 4 * 2**30
        seen = read_table_in_vm(vm)
        assert seen[7][0] + seen[7][1] == disk_end and seen[3][0] + seen[3][1] == disk_end
        fs_bytes = int(vm.sh("df -B1 --output=size /run/live/persistence/vda7 | tail -1"))
        assert fs_bytes > disk_end - p7.start - 200 * layout.MiB  # ext4 metadata aside, it fills p7
        assert vm.sh("cat /run/live/persistence/vda7/token") == token
        assert "already fills the disk" in vm.sh("liveng resize")
        assert "verify OK" in vm.sh("liveng verify", timeout=900)
        vm.sh("echo in-delta > /root/delta-file")
        vm.poweroff()
    table = read_table(disk)
    assert table.entry(7).start == p7.start and table.entry(7).start + table.entry(7).size == 4 * 2**30

    # One byte of a file on p2 changes (p2 is never written by the device: the image file is).
    target = "liveng/image.json"
    offset, length = file_extent(disk, table.entry(2).start, target)
    with open(disk, "r+b") as f:
        f.seek(offset + length // 2)
        byte = f.read(1)
        f.seek(offset + length // 2)
        f.write(bytes([byte[0] ^ 0x01]))

    # The boot menu's factory reset: "no" first would boot on; "yes" resets. Then verify.
    with Vm(disk, log) as vm:
        choose_menu_reset(vm, "yes")
        vm.wait_shell()
        assert "liveng.reset=yes" in vm.sh("cat /proc/cmdline")
        assert vm.sh("test -e /root/delta-file && echo kept || echo gone") == "gone"
        assert vm.sh("cat /run/live/persistence/vda7/token") == token
        out = vm.sh("liveng verify; echo rc=$?", timeout=900)
        assert f"system partition: {target}: content differs" in out and out.endswith("rc=1")
        assert out.count("FAILED") == 2  # the line naming the file, and the summary
        status = json.loads(vm.sh("liveng status --json"))
        assert status["image_id"] == image_id and status["kernel_slots"]["order"] == ["factory"]
        vm.poweroff()


def read_table_in_vm(vm: Vm) -> dict[int, tuple[int, int]]:
    data = json.loads(vm.sh("sfdisk -J /dev/vda"))["partitiontable"]["partitions"]
    return {int(p["node"].removeprefix("/dev/vda")): (p["start"] * 512, p["size"] * 512) for p in data}


