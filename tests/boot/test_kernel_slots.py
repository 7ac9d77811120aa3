"""A/B kernel slots on a booted PC image: apt installs a kernel, it boots next; broken slots fall
back with nobody at the console; a kernel that never marks itself good is dropped after its tries."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from liveng import layout
from liveng.host.disk import read_table
from tests.boot import golden
from tests.boot.conftest import partition_hash
from tests.vm import Vm

pytestmark = [pytest.mark.boot]

# LIVENG_LONG_TESTS=1 (outside CI) runs the apt test, with update-initramfs and a fallback (CI: test_secure_boot).
LONG = os.environ.get("LIVENG_LONG_TESTS") == "1"


def kstatus(vm: Vm) -> dict[str, object]:
    # The JSON on stdout; a warning on stderr (a damaged boot-state copy) comes first in the output.
    out = vm.sh("liveng kernel status --json")
    status: dict[str, object] = json.loads(out[out.index("\n{") + 1:] if not out.startswith("{") else out)
    return status


def settle(vm: Vm) -> dict[str, object]:
    """Wait until this boot has been marked good (or refused), then return the kernel status."""
    vm.sh("systemctl start liveng-boot-ok.service || true")
    return kstatus(vm)


def slot_kernel(status: dict[str, object], name: str) -> object:
    slots = status["slots"]
    assert isinstance(slots, dict)
    return slots[name]["kernel"]


def test_apt_kernel_update_and_fallback(bios_golden: golden.Golden, tmp_path: Path) -> None:
    """apt installs a kernel: it goes to slot B and boots next. LIVENG_LONG_TESTS=1: then
    update-initramfs alone writes the other slot; random bytes over the slot that boots next: the
    previous one boots, unattended. In CI (without LIVENG_LONG_TESTS) apt's kernel update into slot B
    and its boot run under Secure Boot instead, in test_secure_boot: the same hooks and slots."""
    if not LONG:
        pytest.skip("CI: apt's kernel update runs under Secure Boot in test_secure_boot (LIVENG_LONG_TESTS=1: here)")
    disk = tmp_path / "disk.img"
    with golden.resume(bios_golden, disk, tmp_path / "console.log") as vm:
        image_id = read_table(disk).image_id
        system_before = partition_hash(disk, layout.Role.SYSTEM)
        st = settle(vm)
        assert st["order"] == ["slot-a", "factory"] and st["good"] == "slot-a" and st["running"] == "slot-a"
        factory_kernel = vm.sh("uname -r")

        # apt installs another kernel flavour (and, when the suite moved on, a newer ABI of the
        # default flavour too): each new kernel goes to slot B, the last one written boots next.
        vm.sh("apt-get update -q", timeout=1200)
        out = vm.sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-image-cloud-amd64", timeout=2400)
        assert "written to slot B" in out
        st = kstatus(vm)
        cloud = slot_kernel(st, "b")
        assert isinstance(cloud, str) and cloud != factory_kernel
        assert vm.sh(f"test -f /boot/vmlinuz-{cloud} && echo ok") == "ok"
        assert st["order"] == ["slot-b", "slot-a", "factory"]

        vm.reboot()
        st = settle(vm)
        assert vm.sh("uname -r") == cloud
        assert st["running"] == "slot-b" and st["good"] == "slot-b" and st["tries"] == layout.TRIES
        # update-initramfs alone: the running kernel with its new initramfs goes to the other slot.
        out = vm.sh(f"update-initramfs -u -k {cloud}", timeout=2400)
        assert "written to slot A" in out
        st = kstatus(vm)
        assert st["order"] == ["slot-a", "slot-b", "factory"] and slot_kernel(st, "a") == cloud

        # Random bytes over the slot that boots next: the previous slot boots, unattended.
        vm.sh(f"dd if=/dev/urandom of=/dev/disk/by-partuuid/{image_id}-05 bs=1M count=256 conv=fsync status=none")
        vm.reboot()
        st = settle(vm)
        assert st["running"] == "slot-b" and st["order"] == ["slot-b", "factory"]
        assert vm.sh("uname -r") == cloud
        vm.poweroff()
    assert partition_hash(disk, layout.Role.SYSTEM) == system_before


def test_unconfirmed_kernel_is_dropped_then_broken_slot_skipped(bios_golden: golden.Golden, tmp_path: Path) -> None:
    """A kernel that boots but never marks itself good is dropped after its tries; the next slot in
    the order is broken (random bytes) and is skipped at once; the factory kernel on p2 boots."""
    disk = tmp_path / "disk.img"
    with golden.resume(bios_golden, disk, tmp_path / "console.log") as vm:
        image_id = read_table(disk).image_id
        settle(vm)
        factory_kernel = vm.sh("uname -r")
        out = vm.sh(f"liveng kernel install --force {factory_kernel}")
        assert "slot B" in out
        st = kstatus(vm)
        assert st["order"] == ["slot-b", "slot-a", "factory"] and st["tries"] == layout.TRIES
        # Slot A (running now, from RAM) broken on the card; slot B fails its health check at every boot.
        vm.sh(f"dd if=/dev/urandom of=/dev/disk/by-partuuid/{image_id}-05 bs=1M count=256 conv=fsync status=none")
        vm.sh("mkdir -p /etc/liveng/health.d && printf '#!/bin/sh\\nexit 1\\n' > /etc/liveng/health.d/fail "
              "&& chmod +x /etc/liveng/health.d/fail")
        for tries_left in range(layout.TRIES - 1, -1, -1):
            vm.reboot()
            st = settle(vm)
            assert st["running"] == "slot-b", st
            assert st["tries"] == tries_left and st["good"] == "slot-a"
        # No tries left: GRUB drops slot B, cannot load slot A and boots the factory kernel, which
        # passes its checks and confirms the order that is left.
        vm.sh("rm /etc/liveng/health.d/fail")
        vm.reboot()
        st = settle(vm)
        assert st["running"] == "factory" and st["order"] == ["factory"], st
        assert vm.sh("uname -r") == factory_kernel
        vm.poweroff()
