"""The Raspberry Pi boot chain on p1: GPU firmware → U-Boot → UEFI → GRUB arm64-efi.

The firmware (Debian's raspi-firmware) reads config.txt and the board's device tree from the root
of p1 and starts U-Boot (Debian's u-boot-rpi, the 64-bit build for the Pi 3, 4 and 400) as its
"kernel". U-Boot finds EFI/BOOT/BOOTAA64.EFI on p1 and starts GRUB, which boots the kernel slot.
The packages are unpacked on the host; they are not installed in the image, so their kernel hooks
never touch the boot partition.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from liveng import layout
from liveng.host.errors import BuildError

FIRMWARE_DIR = "usr/lib/raspi-firmware"
FIRMWARE_GLOBS = ("bootcode.bin", "start*.elf", "fixup*.dat")
FIRMWARE_COPYRIGHT = "usr/share/doc/raspi-firmware/copyright"
UBOOT_BIN = "usr/lib/u-boot/rpi_arm64/u-boot.bin"
GRUB_MODULES = "usr/lib/grub/arm64-efi"
UBOOT_NAME = "u-boot.bin"

# SMBIOS product names as U-Boot reports them (the model of the firmware's device tree), most
# specific first, and the device tree of each board in the kernel's dtbs/.
BOARD_DTBS: tuple[tuple[str, str], ...] = (
    ("^Raspberry Pi 400", "broadcom/bcm2711-rpi-400.dtb"),
    ("^Raspberry Pi Compute Module 4", "broadcom/bcm2711-rpi-cm4-io.dtb"),
    ("^Raspberry Pi 4 Model B", "broadcom/bcm2711-rpi-4-b.dtb"),
    ("^Raspberry Pi 3 Model B Plus", "broadcom/bcm2837-rpi-3-b-plus.dtb"),
    ("^Raspberry Pi 3 Model A Plus", "broadcom/bcm2837-rpi-3-a-plus.dtb"),
    ("^Raspberry Pi 3 Model B", "broadcom/bcm2837-rpi-3-b.dtb"),
    ("^Raspberry Pi Compute Module 3", "broadcom/bcm2837-rpi-cm3-io3.dtb"),
    ("^Raspberry Pi Zero 2 W", "broadcom/bcm2837-rpi-zero-2-w.dtb"),
    ("^Raspberry Pi 5 Model B", "broadcom/bcm2712-rpi-5-b.dtb"),
)


def config_txt() -> str:
    return """\
# Raspberry Pi firmware settings, written by liveng build. This file is on the FAT partition and
# can be edited from any computer; see https://www.raspberrypi.com/documentation/computers/config_txt.html
[all]
# 64-bit, U-Boot instead of a kernel; U-Boot starts GRUB, GRUB the kernel of the active slot.
arm_64bit=1
kernel=u-boot.bin
# Device trees with the mainline kernel's names (bcm2837-rpi-3-b.dtb...), as Debian's kernel uses.
upstream_kernel=1
# The serial console on GPIO 14 (TX) and 15 (RX), 115200 8N1: the mini UART (ttyS1 in Linux).
enable_uart=1
disable_overscan=1

[pi3]
# The mini UART's clock follows the core clock: keep it fixed so the console stays readable.
core_freq=250

[pi4]
# The GIC interrupt controller, which Debian's kernel and U-Boot expect on the Pi 4.
enable_gic=1
arm_boost=1

[all]
"""


def _one(root: Path, rel: str, package: str) -> Path:
    path = root / rel
    if not path.is_file():
        raise BuildError(f"{package} has no {rel}: the package layout changed; liveng needs an update")
    return path


def check_assets(assets: dict[str, Path]) -> None:
    _one(assets["u-boot-rpi"], UBOOT_BIN, "u-boot-rpi")
    _one(assets["grub-efi-arm64-bin"], f"{GRUB_MODULES}/linux.mod", "grub-efi-arm64-bin")
    _one(assets["raspi-firmware"], f"{FIRMWARE_DIR}/start.elf", "raspi-firmware")


def grub_modules(assets: dict[str, Path]) -> Path:
    return assets["grub-efi-arm64-bin"] / GRUB_MODULES


def populate(staging: Path, assets: dict[str, Path], dtbs: dict[str, Path]) -> None:
    """Firmware, config.txt, U-Boot and the factory kernel's device trees into p1's tree.

    The firmware looks for the board's device tree in the root of p1, so these are flat copies;
    the kernel itself is booted with the device tree from its own slot (see grub.grub_cfg).
    """
    staging.mkdir(parents=True, exist_ok=True)
    firmware = assets["raspi-firmware"] / FIRMWARE_DIR
    blobs = sorted({p for g in FIRMWARE_GLOBS for p in firmware.glob(g)})
    if not blobs:
        raise BuildError(f"raspi-firmware has no firmware files in /{FIRMWARE_DIR}")
    for blob in blobs:
        shutil.copyfile(blob, staging / blob.name)
    copyright_file = assets["raspi-firmware"] / FIRMWARE_COPYRIGHT
    if copyright_file.is_file():
        shutil.copyfile(copyright_file, staging / "LICENCE.raspi-firmware")
    shutil.copyfile(_one(assets["u-boot-rpi"], UBOOT_BIN, "u-boot-rpi"), staging / UBOOT_NAME)
    (staging / "config.txt").write_text(config_txt())
    if not dtbs:
        raise BuildError("the kernel ships no Raspberry Pi device trees (dtbs/broadcom/bcm27*-rpi-*.dtb)")
    for rel, src in dtbs.items():
        if rel.startswith(f"{layout.DTB_DIR}/broadcom/"):
            shutil.copyfile(src, staging / Path(rel).name)
