"""The arm64 (rpi) image: its boot partition and slot, then real boots on QEMU's virt (AAVMF UEFI) and
raspi3b (U-Boot from the SD card) machines."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from liveng import layout
from liveng.host.bootloader import rpi
from liveng.host.disk import read_table
from tests.boot.conftest import RELEASE_FILE, build_image, partition_hash, update_recipe
from tests.boot.test_kernel_slots import kstatus, settle, slot_kernel
from tests.boot.test_pc_boot import check_live_layout
from tests.boot.test_update import HOST, ustatus
from tests.httpserve import serve
from tests.vm import Vm, VmError, raspi3b_emulator_fault

pytestmark = pytest.mark.boot

PI3_DTB = "dtbs/broadcom/bcm2837-rpi-3-b.dtb"
# The long variants (apt kernel update and fallback on arm64, a reboot on raspi3b) take about 50 min
# more under TCG than CI has: README, tests.
LONG = os.environ.get("LIVENG_LONG_TESTS") == "1"


@pytest.fixture(scope="session")
def rpi_image(boot_dir: Path, update_key: tuple[Path, Path]) -> Path:
    # Version 1, taking updates (test_virt_uefi_kernel_update_system_update_and_fallback).
    return build_image(boot_dir, "trixie", "rpi", target="rpi", extra=update_recipe(update_key[1], "1"))


def copy_of(image: Path, dest: Path, size: int | None = None) -> Path:
    subprocess.run(["cp", "--sparse=always", image, dest], check=True)
    if size:
        with open(dest, "r+b") as f:
            f.truncate(size)
    return dest


def p1_spec(image: Path) -> str:
    boot = read_table(image).entry(1)
    return f"{image}@@{boot.start}"


def p1_read(image: Path, path: str) -> bytes:
    return subprocess.run(["mtype", "-i", p1_spec(image), f"::/{path}"], check=True, capture_output=True,
                          env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}).stdout


def iso_listing(image: Path, number: int, tmp: Path) -> set[str]:
    entry = read_table(image).entry(number)
    part = tmp / f"p{number}.iso"
    with open(image, "rb") as src, open(part, "wb") as dst:
        src.seek(entry.start)
        dst.write(src.read(entry.size))
    out = subprocess.run(["xorriso", "-indev", str(part), "-find", "/", "-type", "f"], check=True,
                         capture_output=True, text=True).stdout
    return {line.strip().strip("'").lstrip("/") for line in out.splitlines() if line.startswith("'/")}


def test_boot_partition_holds_the_pi_boot_chain(rpi_image: Path) -> None:
    listing = subprocess.run(["mdir", "-/", "-b", "-i", p1_spec(rpi_image), "::/"], check=True, capture_output=True,
                             text=True, env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}).stdout
    names = {line.strip().lstrip(":/").lower() for line in listing.splitlines()}
    for wanted in ("bootcode.bin", "start.elf", "start4.elf", "fixup.dat", "fixup4.dat", "config.txt",
                   "u-boot.bin", "efi/boot/bootaa64.efi", "boot/grub/grub.cfg", layout.GRUBENV_PATH,
                   "bcm2837-rpi-3-b.dtb", "bcm2711-rpi-4-b.dtb", "liveng/image.json"):
        assert wanted in names, f"{wanted} missing from p1: {sorted(names)}"
    config = p1_read(rpi_image, "config.txt").decode()
    assert "kernel=u-boot.bin" in config and "arm_64bit=1" in config and "enable_uart=1" in config
    assert "[pi3]" in config and "[pi4]" in config
    efi = p1_read(rpi_image, "EFI/BOOT/BOOTAA64.EFI")
    assert efi[:2] == b"MZ" and b"\x64\xaa" in efi[:512]  # PE32+ for machine 0xaa64 (arm64)
    cfg = p1_read(rpi_image, "boot/grub/grub.cfg").decode()
    assert f"set liveng_dtb={PI3_DTB}" in cfg and "smbios --type 1" in cfg
    info = json.loads(p1_read(rpi_image, layout.IMAGE_INFO_PATH))
    assert info["target"] == "rpi" and info["arch"] == "arm64"
    assert len(p1_read(rpi_image, rpi.UBOOT_NAME)) > 100_000  # the whole U-Boot, not an empty file


def test_kernel_slot_and_system_carry_the_kernels_device_trees(rpi_image: Path, tmp_path: Path) -> None:
    for number in (2, 5):
        files = iso_listing(rpi_image, number, tmp_path)
        for wanted in (layout.KERNEL_PATH, layout.INITRD_PATH, PI3_DTB, "dtbs/broadcom/bcm2711-rpi-4-b.dtb",
                       layout.MANIFEST_PATH):
            assert wanted in files, f"{wanted} missing from p{number}: {sorted(files)}"
        assert not any(f.startswith("dtbs/broadcom/bcm4908") for f in files)  # routers are no Pi
    # The device tree on p1 (what the firmware reads) is the factory kernel's own (p2.iso: see above).
    out = tmp_path / "pi3.dtb"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(tmp_path / "p2.iso"), "-extract", f"/{PI3_DTB}",
                    str(out)], check=True, capture_output=True)
    assert out.read_bytes() == p1_read(rpi_image, "bcm2837-rpi-3-b.dtb")


def boot_and_keep_a_file(disk: Path, log: Path, machine: str, image_id: str, reboot: bool = True) -> dict[str, str]:
    """Boot, check the live layout, write a file, reboot, find it again; returns facts for the caller."""
    before = partition_hash(disk, layout.Role.SYSTEM)
    token = secrets.token_hex(8)
    facts: dict[str, str] = {}
    with Vm(disk, log, machine=machine) as vm:
        facts["first boot s"] = f"{vm.wait_shell(timeout=1500):.0f}"
        check_live_layout(vm, image_id)
        facts["cmdline"] = vm.sh("cat /proc/cmdline")
        facts["model"] = vm.sh("tr -d '\\0' < /proc/device-tree/model 2>/dev/null || true")
        assert vm.sh("uname -m") == "aarch64"
        vm.sh(f"echo {token} > /root/keep.txt; sync")
        if reboot:
            facts["reboot s"] = f"{vm.reboot(timeout=1500):.0f}"
            assert vm.sh("cat /root/keep.txt") == token
        vm.poweroff()
    assert partition_hash(disk, layout.Role.SYSTEM) == before
    return facts


def slot_files(vm: Vm, image_id: str, slot: str) -> set[str]:
    """The files in a kernel slot, read in the guest straight from its partition."""
    out = vm.sh(f"d=$(mktemp -d) && mount -o ro {layout.partuuid_path(image_id, layout.SLOTS[slot])} $d "
                "&& (cd $d && find . -type f) && umount $d && rmdir $d")
    return {line.strip().removeprefix("./") for line in out.splitlines() if line.startswith("./")}


def shipped_dtbs(vm: Vm, kernel: str) -> set[str]:
    """The device trees for liveng's boards that the installed kernel package ships, as slot paths."""
    return set(json.loads(vm.sh(
        "python3 -c 'import json, sys; from pathlib import Path; from liveng import manifest; "
        "print(json.dumps(sorted(manifest.kernel_dtbs(Path(\"/\"), sys.argv[1]))))' " + kernel)))


def test_virt_uefi_kernel_update_system_update_and_fallback(rpi_image: Path, rpi_v2_channel: Path,
                                                            tmp_path: Path) -> None:
    """arm64 on AAVMF: a kernel written to slot B carries its device trees and boots next, with the
    delta kept; then version 2 of the system, a signed bundle over HTTP, goes to slot A and boots with
    the kept files. LIVENG_LONG_TESTS=1 (outside CI: about 40 min more under TCG): apt installs the cloud
    kernel for it, then the factory kernel goes to slot A, random bytes over slot A → slot B boots,
    nobody at the console."""
    disk = copy_of(rpi_image, tmp_path / "disk.img")
    image_id = read_table(disk).image_id
    before = partition_hash(disk, layout.Role.SYSTEM)
    token = secrets.token_hex(8)
    with Vm(disk, tmp_path / "console.log", machine="virt") as vm:
        first = vm.wait_shell(timeout=1500)
        check_live_layout(vm, image_id)
        assert vm.sh("uname -m") == "aarch64"
        # No Raspberry Pi here: GRUB loads no device tree (the machine has ACPI from AAVMF).
        assert layout.KERNEL_ARG_DTB not in vm.sh("cat /proc/cmdline")
        st = settle(vm)
        assert st["running"] == "slot-a" and st["good"] == "slot-a"
        factory = vm.sh("uname -r")
        vm.sh(f"echo {token} > /root/keep.txt; sync")
        if not LONG:
            # The factory kernel (the generic flavour, with the Pi device trees) into slot B, booted next.
            assert "slot B" in vm.sh(f"liveng kernel install --force {factory}")
            dtbs = shipped_dtbs(vm, factory)
            assert "dtbs/broadcom/bcm2837-rpi-3-b.dtb" in dtbs
            in_slot = slot_files(vm, image_id, "b")
            assert {layout.KERNEL_PATH, layout.INITRD_PATH, layout.MANIFEST_PATH} <= in_slot
            assert {f for f in in_slot if f.startswith(layout.DTB_DIR + "/")} == dtbs
            assert kstatus(vm)["order"] == ["slot-b", "slot-a", "factory"]
            rebooted = vm.reboot(timeout=1500)
            st = settle(vm)
            assert st["running"] == "slot-b" and st["good"] == "slot-b" and vm.sh("uname -r") == factory
            assert vm.sh("cat /root/keep.txt") == token
            vm.sh("echo v1-only > /etc/v1-only.conf && sync")

            with serve(rpi_v2_channel) as channel:
                start = time.monotonic()
                out = vm.sh(f"liveng update apply http://{HOST}:{channel.port}/", timeout=2400)
                applied = time.monotonic() - start
            assert "system 2 installed" in out and "slot A" in out, out
            updated = vm.reboot(timeout=1500)
            st = settle(vm)
            assert st["running"] == "slot-a" and st["good"] == "slot-a", st
            ust = ustatus(vm)
            assert ust["version"] == "2" and str(ust["running"]).startswith("2_"), ust
            assert vm.sh(f"cat {RELEASE_FILE}") == "v2"
            assert vm.sh("cat /root/keep.txt") == token  # /root is kept
            assert vm.sh("test -e /etc/v1-only.conf || echo gone") == "gone"  # v2 starts from its own state
            assert "verify OK" in vm.sh("liveng verify", timeout=1500)
            vm.poweroff()
            assert partition_hash(disk, layout.Role.SYSTEM) == before
            print(f"\narm64 virt (AAVMF): shell after {first:.0f} s; reboot into slot B {rebooted:.0f} s; "
                  f"device trees in the slot: {len(dtbs)}; system update applied in {applied:.0f} s, "
                  f"reboot into version 2 {updated:.0f} s")
            return

        vm.sh("apt-get update -q", timeout=1500)
        start = time.monotonic()
        out = vm.sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-image-cloud-arm64", timeout=3600)
        install_s = time.monotonic() - start
        assert "written to slot B" in out
        st = kstatus(vm)
        cloud = slot_kernel(st, "b")
        assert isinstance(cloud, str) and cloud != factory
        assert st["order"] == ["slot-b", "slot-a", "factory"]
        in_slot = slot_files(vm, image_id, "b")
        assert {layout.KERNEL_PATH, layout.INITRD_PATH, layout.MANIFEST_PATH} <= in_slot
        assert {f for f in in_slot if f.startswith(layout.DTB_DIR + "/")} == shipped_dtbs(vm, cloud)

        rebooted = vm.reboot(timeout=1500)
        assert vm.sh("uname -r") == cloud and vm.sh("cat /root/keep.txt") == token
        st = settle(vm)
        assert st["running"] == "slot-b" and st["good"] == "slot-b"

        # The factory kernel (the generic flavour, with the Pi device trees) into the other slot.
        assert "slot A" in vm.sh(f"liveng kernel install {factory}")
        dtbs = shipped_dtbs(vm, factory)
        assert "dtbs/broadcom/bcm2837-rpi-3-b.dtb" in dtbs
        assert {f for f in slot_files(vm, image_id, "a") if f.startswith(layout.DTB_DIR + "/")} == dtbs
        assert kstatus(vm)["order"] == ["slot-a", "slot-b", "factory"]

        vm.sh(f"dd if=/dev/urandom of={layout.partuuid_path(image_id, layout.Role.SLOT_A)} bs=1M count=32 "
              "conv=fsync status=none")
        fallback = vm.reboot(timeout=1500)
        st = settle(vm)
        assert st["running"] == "slot-b" and vm.sh("uname -r") == cloud
        assert st["order"] == ["slot-b", "factory"]
        assert vm.sh("cat /root/keep.txt") == token
        vm.poweroff()
    assert partition_hash(disk, layout.Role.SYSTEM) == before
    print(f"\narm64 virt (AAVMF): shell after {first:.0f} s; apt install of {cloud} {install_s:.0f} s; "
          f"reboot into it {rebooted:.0f} s; reboot after slot A was overwritten {fallback:.0f} s; "
          f"device trees in the factory kernel's slot: {len(dtbs)}")


def test_raspi3b_uboot_boot_keeps_the_delta(rpi_image: Path, tmp_path: Path) -> None:
    """The Pi 3 way: U-Boot from p1 → GRUB → slot A's kernel with the board's DTB from slot A → live-boot;
    with LIVENG_LONG_TESTS=1 also a reboot that keeps a file (outside CI: the Pi path under TCG is slow)."""
    size = 1 << (rpi_image.stat().st_size - 1).bit_length()  # QEMU's SD card: a power of two
    disk = copy_of(rpi_image, tmp_path / "sdcard.img", size)
    image_id = read_table(disk).image_id
    try:
        facts = boot_and_keep_a_file(disk, tmp_path / "console.log", "raspi3b", image_id, reboot=LONG)
    except VmError as err:
        fault = raspi3b_emulator_fault(err.console)
        if fault is None:
            raise
        # An emulator fault (see tests/vm.py): one more boot, of a fresh card, decides. The first
        # console log stays for the record.
        print(f"\nraspi3b: {fault} ({err}); booting a fresh card once more")
        disk = copy_of(rpi_image, tmp_path / "sdcard.img", size)
        facts = boot_and_keep_a_file(disk, tmp_path / "console-again.log", "raspi3b", image_id, reboot=LONG)
    # U-Boot named the board (SMBIOS); GRUB loaded that board's device tree from the booted slot.
    assert f"{layout.KERNEL_ARG_DTB}={PI3_DTB}" in facts["cmdline"].split()
    assert f"{layout.KERNEL_ARG_BOOT}=slot-a" in facts["cmdline"].split()
    assert facts["model"].startswith("Raspberry Pi 3 Model B")
    print(f"\nraspi3b (U-Boot): shell after {facts['first boot s']} s, after reboot {facts.get('reboot s', '-')} s")
