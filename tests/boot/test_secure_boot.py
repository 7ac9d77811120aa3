"""The PC test image under UEFI Secure Boot (OVMF with Microsoft's keys, enforcing): it boots through
Debian's signed shim and GRUB, takes a Debian-signed kernel from apt into a slot (in CI the only apt
kernel update: test_kernel_slots' runs with LIVENG_LONG_TESTS=1), and falls back by itself from a
signed kernel that never marks itself good and from a kernel shim refuses.

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
from tests.boot.conftest import partition_hash
from tests.boot.test_kernel_slots import kstatus, settle, slot_kernel
from tests.vm import Vm

pytestmark = [pytest.mark.boot]


def p1_file(disk: Path, name: str) -> bytes:
    start = read_table(disk).entry(layout.partition(layout.Role.BOOT).number).start
    return subprocess.run(["mtype", "-i", f"{disk}@@{start}", f"::/{name}"], capture_output=True, check=True,
                          env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}).stdout


def test_secure_boot_signed_kernel_update_refused_and_counting(trixie_image: Path, tmp_path: Path) -> None:
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
        system_before = partition_hash(disk, layout.Role.SYSTEM)
        assert vm.sh("mokutil --sb-state").startswith("SecureBoot enabled")
        # (--notime: the console helper drops lines that look like kernel messages with a time)
        assert "Secure boot enabled" in vm.sh("dmesg --notime | grep -i 'secure boot'")
        assert "[integrity]" in vm.sh("cat /sys/kernel/security/lockdown")  # Debian's kernel under Secure Boot
        st = settle(vm)
        assert st["running"] == "slot-a" and st["good"] == "slot-a" and st["order"] == ["slot-a", "factory"]
        factory = vm.sh("uname -r")

        # The running kernel without its signature: liveng kernel install writes it (slot B) and warns.
        unsigned = f"/boot/vmlinuz-{factory}-unsigned"
        vm.sh(f"cp /boot/vmlinuz-{factory} {unsigned} && sbattach --remove {unsigned}")
        out = vm.sh(f"liveng kernel install {factory}-unsigned --initrd /boot/initrd.img-{factory}", timeout=600)
        assert "written to slot B" in out
        assert "WARNING" in out and "not signed by a key this machine trusts" in out

        # apt installs another Debian-signed kernel: it replaces that one in slot B, without a warning.
        start = time.monotonic()
        vm.sh("apt-get update -q", timeout=1200)
        out = vm.sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-image-cloud-amd64", timeout=2400)
        print(f"apt-get update and install of the cloud kernel: {time.monotonic() - start:.0f} s")
        assert "written to slot B" in out and "WARNING" not in out
        st = kstatus(vm)
        cloud = slot_kernel(st, "b")
        assert isinstance(cloud, str) and cloud != factory and st["order"] == ["slot-b", "slot-a", "factory"]
        # By hand, with its manifest: the unsigned kernel into slot A, after B in the boot order.
        vm.sh("python3 -c 'from pathlib import Path; from liveng import layout, manifest; "
              "from liveng.device import slots; "
              f'f = {{layout.KERNEL_PATH: Path("{unsigned}"), '
              f'layout.INITRD_PATH: Path("/boot/initrd.img-{factory}")}}; '
              f'slots.write_slot("a", "{factory}-unsigned", f, {{r: manifest.sha256_file(p) for r, p in f.items()}})'
              "'", timeout=600)
        # Only the signature is wrong: the slot matches its manifest.
        assert vm.sh(f"rm {unsigned}; python3 -c 'from liveng.device import verify; print(verify.intact(\"a\"))'") \
            == "True"
        # B never marks itself good, and has one try left (GRUB counts every one of them down in
        # test_kernel_slots; here one boot shows it does so under Secure Boot too).
        vm.sh("mkdir -p /etc/liveng/health.d && printf '#!/bin/sh\\nexit 1\\n' > /etc/liveng/health.d/fail "
              "&& chmod +x /etc/liveng/health.d/fail")
        vm.sh("python3 -c 'from liveng.device import bootstate; bootstate.update_state(tries=1)'")

        # GRUB counts the last try down and boots the Debian-signed kernel of slot B; it is not marked good.
        print(f"reboot into slot B, its last try: {vm.reboot():.1f} s")
        st = settle(vm)
        assert vm.sh("uname -r") == cloud and vm.sh("mokutil --sb-state").startswith("SecureBoot enabled")
        assert st["running"] == "slot-b" and st["tries"] == 0 and st["good"] == "slot-a", st
        assert st["order"] == ["slot-b", "slot-a", "factory"]

        # No try left: GRUB drops B; shim refuses A; the factory kernel boots, with nobody at the console.
        vm.sh("rm /etc/liveng/health.d/fail")
        print(f"reboot: B dropped, A refused, factory kernel: {vm.reboot():.1f} s")
        st = settle(vm)
        assert st["running"] == "factory" and vm.sh("uname -r") == factory, st
        # The good boot drops the refused slot A too (intact, but this machine will not start it).
        assert st["order"] == ["factory"] and st["good"] == "factory", st
        vm.poweroff()
    assert partition_hash(disk, layout.Role.SYSTEM) == system_before
    console = log.read_text(errors="replace")
    last_boot = console[console.rindex("GNU GRUB"):]
    refusal = [line for line in last_boot.splitlines() if re.search(r"error:|Falling back", line)]
    print("GRUB on the refused kernel:", *refusal, sep="\n  ")
    assert "bad shim signature" in last_boot and "Falling back to `liveng factory kernel" in last_boot
