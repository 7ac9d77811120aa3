"""RAM boot modes on a PC image whose recipe boots in ram mode: the card written zero bytes after
boot and then removed (QMP) while the system keeps working and installs a package into RAM; zram
swap of the configured size; the RAM-delta cap; commit, then ram-paths mode has the package and
keeps its listed paths (recipe and device) on the card; a commit of one path; then persistent mode
has the commits and what the persistent paths got, also after the commit, and nothing else."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from liveng.host.qmp import Qmp
from tests.boot import golden
from tests.boot.conftest import RAM_MEMORY as MEMORY
from tests.boot.conftest import RELEASE_FILE
from tests.boot.test_update import HOST, ustatus
from tests.httpserve import serve
from tests.vm import Vm

pytestmark = pytest.mark.boot

PACKAGE = "hello"  # installed in RAM, then committed
AFTER_REMOVAL = "figlet"  # installed with the card removed
DEVICE_PATH = "/var/lib/liveng-test"  # a persistent path of the device's own (liveng mode paths --add)


def settle(vm: Vm) -> None:
    """Wait until the boot is complete: liveng-boot-ok has confirmed it (the last card write a boot may make)."""
    vm.sh("systemctl is-system-running --wait >/dev/null; "
          "until systemctl is-active -q liveng-boot-ok; do sleep 1; done", timeout=600)


def exists(vm: Vm, path: str) -> bool:
    return vm.sh(f"test -e {path} && echo yes || echo no") == "yes"


def test_ram_modes(ram_golden: golden.Golden, v2_channel: Path, tmp_path: Path) -> None:
    """The golden's boot is the first ram-mode boot of the image; the later boots are real. Last, a
    system update arrives and the updated system (an ISO file on p7) runs from RAM."""
    log = tmp_path / "console.log"
    ram_copy = tmp_path / "ram-disk.img"
    with golden.resume(ram_golden, ram_copy, log) as vm:
        settle(vm)
        assert "liveng.mode=ram " in vm.sh("cat /proc/cmdline") + " "
        assert json.loads(vm.sh("liveng mode show --json"))["running"] == "ram"
        # Nothing of the card is mounted: the squashfs is in RAM, the delta a tmpfs.
        assert vm.sh("grep -c '^/dev/vd' /proc/mounts || true") == "0"
        assert vm.sh("findmnt -n -o FSTYPE /run/live/overlay") == "tmpfs"
        # zram swap: 50 % of RAM (the recipe's zram_percent).
        mem_kib = int(vm.sh("awk '/^MemTotal:/ {print $2}' /proc/meminfo"))
        swaps = vm.sh("swapon --show=NAME,SIZE --bytes --noheadings")
        print(swaps)
        name, size = swaps.split()[:2]
        assert name.startswith("/dev/zram") and abs(int(size) - mem_kib * 1024 // 2) < mem_kib * 1024 // 50
        # The RAM-delta cap (recipe: 384m): a full delta is ENOSPC, not the OOM killer.
        assert vm.sh("df -B1M --output=size /run/live/overlay | tail -1").strip() == "384"
        out = vm.sh("fallocate -l 400M /root/big; echo rc=$?; rm -f /root/big")
        assert "No space left on device" in out and "rc=1" in out

        assert vm.qmp_path is not None
        qmp = Qmp(vm.qmp_path)
        before = qmp.written()
        vm.sh("apt-get update -q", timeout=900)
        vm.sh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {PACKAGE}", timeout=900)
        vm.sh("echo made-in-ram > /root/ram-file; sync")
        time.sleep(5)
        written = qmp.written() - before
        print(f"ram mode: {written} bytes written to the card after boot (apt-get update and install)")
        assert written == 0

        start = time.monotonic()
        print(vm.sh("liveng commit", timeout=600))
        print(f"commit: {time.monotonic() - start:.1f} s")
        assert json.loads(vm.sh("liveng status --json"))["pending"]["action"] == "commit"
        vm.sh(f"liveng mode paths --add {DEVICE_PATH}")
        vm.sh("liveng mode set ram-paths")

        qmp.remove_card()
        vm.sh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {AFTER_REMOVAL}", timeout=900)
        assert "| |" in vm.sh(f"{AFTER_REMOVAL} ok")
        assert vm.sh(PACKAGE) == "Hello, world!"
        vm.sh("ls -R /usr/share/doc > /dev/null; python3 -c 'print(1)'")
        # Nothing tried to use the card after it went.
        assert vm.sh("dmesg | grep -ci 'i/o error' || true") == "0"
        qmp.close()
        vm.power_cut()

    with Vm(ram_copy, log, memory=MEMORY) as vm:
        vm.wait_shell()
        assert "liveng.mode=ram-paths" in vm.sh("cat /proc/cmdline")
        mode = json.loads(vm.sh("liveng mode show --json"))
        assert sorted(mode["mounted_paths"]) == sorted(["/srv/keep", DEVICE_PATH]), mode
        assert vm.sh(PACKAGE) == "Hello, world!"  # committed, switched in at this boot, copied into RAM
        assert vm.sh("cat /root/ram-file") == "made-in-ram"
        assert vm.sh(f"command -v {AFTER_REMOVAL} || echo absent") == "absent"  # installed after the commit
        vm.sh(f"echo kept > /srv/keep/kept; echo kept > {DEVICE_PATH}/kept; echo lost > /root/lost")
        vm.sh("echo one > /root/partial; echo other > /root/not-committed")
        vm.sh("liveng commit /root/partial")
        vm.sh("echo after-commit > /srv/keep/after")
        vm.sh("liveng mode set persistent")
        vm.reboot()

        # Persistent mode sees the commits and the persistent paths: they are all in p7:rw.
        assert "liveng.mode=persistent" in vm.sh("cat /proc/cmdline")
        assert json.loads(vm.sh("liveng status --json"))["persistence_device"]
        assert vm.sh(PACKAGE) == "Hello, world!"
        assert vm.sh("cat /srv/keep/kept /srv/keep/after") == "kept\nafter-commit"
        assert vm.sh(f"cat {DEVICE_PATH}/kept") == "kept"
        assert not exists(vm, "/root/lost") and not exists(vm, "/root/not-committed")
        assert vm.sh("cat /root/partial") == "one"

        with serve(v2_channel) as channel:
            assert "system 2 installed" in vm.sh(f"liveng update apply http://{HOST}:{channel.port}/", timeout=2400)
        vm.sh("liveng mode set ram")
        vm.reboot()
        settle(vm)
        assert "liveng.mode=ram " in vm.sh("cat /proc/cmdline") + " "
        st = ustatus(vm)
        assert str(st["running"]).startswith("2_") and st["version"] == "2", st
        assert vm.sh(f"cat {RELEASE_FILE}") == "v2"
        assert vm.sh("cat /root/partial") == "one"  # /root is a kept path: in v2's delta, copied into RAM
        # v2's squashfs is in RAM: the card, its p7 and the loop device that held v2's ISO are let go.
        assert vm.sh("grep -c '^/dev/vd' /proc/mounts || true") == "0"
        assert vm.sh("losetup -n -O BACK-FILE | grep -c system.iso || true") == "0"
        vm.poweroff()
