"""The PC test image under UEFI Secure Boot (OVMF with Microsoft's keys, enforcing): it boots through
Debian's signed shim and GRUB, takes a Debian-signed kernel from apt into a slot, and falls back by
itself from a kernel shim refuses and from a signed one that never marks itself good.

The same image under UEFI without Secure Boot and under BIOS: test_pc_boot's
test_uefi_then_bios_boot_keep_the_delta (the trixie test image, whose UEFI path is the same shim).
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from liveng import layout
from liveng.host.bootloader import signed
from liveng.host.disk import read_table
from tests.boot import golden
from tests.boot.test_kernel_slots import kstatus, settle, slot_kernel
from tests.vm import Vm

pytestmark = [pytest.mark.boot]


def p1_file(disk: Path, name: str) -> bytes:
    start = read_table(disk).entry(layout.partition(layout.Role.BOOT).number).start
    return subprocess.run(["mtype", "-i", f"{disk}@@{start}", f"::/{name}"], capture_output=True, check=True,
                          env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}).stdout


def test_secure_boot_signed_kernel_update_refused_kernel_and_counting(trixie_image: Path, tmp_path: Path) -> None:
    disk = golden.copy(trixie_image, tmp_path / "disk.img")
    log = tmp_path / "console.log"
    # The image's own signed GRUB (Debian's binary, read here again) has every command its menu runs.
    modules, prefix = signed.image_contents(p1_file(disk, "EFI/BOOT/grubx64.efi"))
    menu = p1_file(disk, layout.GRUB_CFG_PATH).decode()
    stub = p1_file(disk, "EFI/BOOT/grub.cfg").decode()
    assert prefix == "/EFI/debian" and p1_file(disk, "EFI/debian/grub.cfg").decode() == stub
    assert signed.missing_commands([menu, stub], modules, signed.command_modules()) == []

    with Vm(disk, log, secure_boot=True) as vm:
        print(f"Secure Boot power-on to shell: {vm.wait_shell():.1f} s")
        assert vm.sh("mokutil --sb-state").startswith("SecureBoot enabled")
        # (--notime: the console helper drops lines that look like kernel messages with a time)
        assert "Secure boot enabled" in vm.sh("dmesg --notime | grep -i 'secure boot'")
        assert "[integrity]" in vm.sh("cat /sys/kernel/security/lockdown")  # Debian's kernel under Secure Boot
        st = settle(vm)
        assert st["running"] == "slot-a" and st["good"] == "slot-a" and st["order"] == ["slot-a", "factory"]
        factory_kernel = vm.sh("uname -r")

        # apt installs another Debian-signed kernel: slot B, no warning, and it boots under Secure Boot.
        start = time.monotonic()
        vm.sh("apt-get update -q", timeout=1200)
        out = vm.sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-image-cloud-amd64", timeout=2400)
        print(f"apt-get install of the cloud kernel: {time.monotonic() - start:.0f} s")
        assert "written to slot B" in out and "WARNING" not in out
        cloud = slot_kernel(kstatus(vm), "b")
        assert isinstance(cloud, str) and cloud != factory_kernel
        print(f"reboot into slot B: {vm.reboot():.1f} s")
        st = settle(vm)
        assert vm.sh("uname -r") == cloud and st["running"] == "slot-b" and st["good"] == "slot-b"
        assert vm.sh("mokutil --sb-state").startswith("SecureBoot enabled")

        # The same kernel without its signature, into the other slot with its manifest: liveng warns.
        unsigned = f"{cloud}-unsigned"
        vm.sh(f"cp /boot/vmlinuz-{cloud} /boot/vmlinuz-{unsigned} && sbattach --remove /boot/vmlinuz-{unsigned}")
        out = vm.sh(f"liveng kernel install {unsigned} --initrd /boot/initrd.img-{cloud}", timeout=600)
        assert "written to slot A" in out
        assert "WARNING" in out and "not signed by a key this machine trusts" in out
        assert kstatus(vm)["order"] == ["slot-a", "slot-b", "factory"]
        # Slot B first again (rollback), and from now on it never marks itself good; it is on its last
        # try, as GRUB would have left it after two such boots (test_kernel_slots counts all of them).
        assert "slot B" in vm.sh("liveng kernel rollback")
        vm.sh("mkdir -p /etc/liveng/health.d && printf '#!/bin/sh\\nexit 1\\n' > /etc/liveng/health.d/fail "
              "&& chmod +x /etc/liveng/health.d/fail")
        vm.sh("python3 -c 'from liveng.device import bootstate; bootstate.update_state(tries=1)'")
        assert kstatus(vm)["tries"] == 1

        # GRUB (under Secure Boot) counts the last try down and boots B, which is not marked good.
        print(f"reboot into slot B, last try: {vm.reboot():.1f} s")
        st = settle(vm)
        assert st["running"] == "slot-b" and st["tries"] == 0 and st["order"] == ["slot-b", "slot-a", "factory"]

        # No try left: GRUB drops B; shim refuses A; the factory kernel boots, with nobody at the console.
        vm.sh("rm /etc/liveng/health.d/fail")
        print(f"reboot: B dropped, A refused, factory kernel: {vm.reboot():.1f} s")
        st = settle(vm)
        assert st["running"] == "factory" and vm.sh("uname -r") == factory_kernel, st
        # The good boot drops the refused slot A too (intact, but this machine will not start it).
        assert st["order"] == ["factory"] and st["good"] == "factory", st
        vm.poweroff()
    console = log.read_text(errors="replace")
    refusal = [line for line in console.splitlines() if re.search(r"shim|[Ss]ignature|Falling back|error:", line)]
    print("GRUB on the refused kernel:", *refusal[-8:], sep="\n  ")
    assert refusal
