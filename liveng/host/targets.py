"""What differs between the machines liveng builds for, one table per target: the build, the rootfs,
the trimming and the preflight read it here instead of asking for a target by name.

Where a difference is code (GRUB's BIOS image, Debian's signed shim and GRUB, the Pi's firmware), the
table says which boot parts the target has and the build runs the steps of those parts."""

from __future__ import annotations

from dataclasses import dataclass

from liveng.host.bootloader import signed

# Wi-Fi through wpa_supplicant and systemd-networkd; the radio rules for the country (wireless-regdb).
WIFI_PACKAGES = ("wpasupplicant", "wireless-regdb")


@dataclass(frozen=True)
class Target:
    name: str
    arch: str  # Debian's architecture
    kernel_packages: tuple[str, ...]
    packages: tuple[str, ...]  # installed in every image of the target, beyond the base set
    components: tuple[str, ...]  # the Debian archive areas of the image's apt sources
    # Packages the boot partition is made from: downloaded with the rootfs, unpacked on the host,
    # never installed (rootfs.py).
    boot_assets: tuple[str, ...]
    dpkg_filters: tuple[str, ...]  # dpkg path filters of every image of the target (trim.py)
    console: str  # the kernel's console arguments
    bios: bool  # GRUB's BIOS image in front of p1 (a PC boots from BIOS as well as UEFI)
    signed_uefi: bool  # Debian's signed shim and GRUB on p1: UEFI with Secure Boot
    pi_firmware: bool  # the Pi's firmware, U-Boot, device trees and arm64 GRUB on p1


PC = Target(
    name="pc", arch="amd64", kernel_packages=("linux-image-amd64",),
    # What `liveng kernel install` checks a kernel's signature with under Secure Boot (sbverify;
    # mokutil to see and enrol Machine Owner Keys). A PC's Wi-Fi chip needs firmware of its own
    # (e.g. firmware-iwlwifi): a recipe with [wifi] adds WIFI_PACKAGES, its packages the firmware.
    packages=("mokutil", "sbsigntool"),
    components=("main",),
    boot_assets=signed.PACKAGES,
    dpkg_filters=(),
    console="console=tty0 console=ttyS0,115200n8",
    bios=True, signed_uefi=True, pi_firmware=False,
)

RPI = Target(
    name="rpi", arch="arm64", kernel_packages=("linux-image-arm64",),
    # Wi-Fi in every image: the Pi 3, 4 and Zero 2 W have it on board (Broadcom's firmware, from
    # non-free-firmware).
    packages=(*WIFI_PACKAGES, "firmware-brcm80211"),
    components=("main", "non-free-firmware"),
    # raspi-firmware is unpacked, not installed: its kernel hooks would fight liveng's slots.
    boot_assets=("raspi-firmware", "u-boot-rpi", "grub-efi-arm64-bin"),
    # The device trees the kernel package carries for every arm64 board (a Pi needs Broadcom's;
    # layout.DTB_GLOBS picks its own from there into the boot and kernel partitions), and the
    # firmware of Broadcom/Cypress Wi-Fi chips on PCIe cards (every Pi's Wi-Fi is on SDIO; USB
    # dongles' stays). Firmware is in /usr/lib/firmware from trixie on, /lib/firmware in bookworm.
    dpkg_filters=("path-exclude=/usr/lib/linux-image-*/*", "path-include=/usr/lib/linux-image-*/broadcom/*",
                  *(f"path-exclude={root}/firmware/{vendor}/*-pcie.*" for root in ("/usr/lib", "/lib")
                    for vendor in ("brcm", "cypress"))),
    console="",
    bios=False, signed_uefi=False, pi_firmware=True,
)

TARGETS: dict[str, Target] = {t.name: t for t in (PC, RPI)}
