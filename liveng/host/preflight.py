"""Checks before any work, each failure saying exactly what to install or change."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from liveng.host.bootloader import grub
from liveng.host.errors import PreflightError
from liveng.host.targets import Target

# tool -> Debian package that provides it
BUILD_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "mksquashfs": "squashfs-tools",
    "xorriso": "xorriso",
    "mkfs.fat": "dosfstools",
    "mcopy": "mtools",
    "mkfs.ext4": "e2fsprogs",
    "tune2fs": "e2fsprogs",
    "sfdisk": "fdisk",
    "grub-mkimage": "grub-common",
    "systemctl": "systemd",
    "useradd": "passwd",
    "tar": "tar",
    "dpkg-deb": "dpkg",
}
# What an arm64 (rpi) build needs on top, when the host is not arm64: qemu-user runs the arm64
# maintainer scripts through binfmt_misc; mmdebstrap asks arch-test, its eatmydata hook dpkg-architecture.
FOREIGN_TOOLS = {"arch-test": "arch-test", "dpkg-architecture": "dpkg-dev"}
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
QEMU_BINFMT = {"arm64": "qemu-aarch64", "amd64": "qemu-x86_64"}
RUN_TOOLS = {"amd64": {"qemu-system-x86_64": "qemu-system-x86"},
             "arm64": {"qemu-system-aarch64": "qemu-system-arm"}}
MIN_FREE_BYTES = 4 * 1024**3


def _which(tool: str) -> bool:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return shutil.which(tool, path=path) is not None


def missing_tools(tools: dict[str, str]) -> list[str]:
    return [f"{tool} (package {pkg})" for tool, pkg in tools.items() if not _which(tool)]


def check_tools(tools: dict[str, str]) -> None:
    """Refuse, saying what to install, unless every tool (tool -> Debian package) is on the PATH."""
    _fail(missing_tools(tools))


def _fail(problems: list[str]) -> None:
    if problems:
        packages = sorted({p.split("package ")[-1].rstrip(")") for p in problems if "package " in p})
        hint = f"\nInstall with: apt-get install {' '.join(packages)}" if packages else ""
        raise PreflightError("the host is not ready:\n  - " + "\n  - ".join(problems) + hint)


def binfmt_problems(arch: str, host_arch: str) -> list[str]:
    """Why the host cannot run programs of ``arch`` in a chroot, if it cannot."""
    if arch == host_arch:
        return []
    name = QEMU_BINFMT.get(arch, f"qemu-{arch}")
    entry = BINFMT_DIR / name
    try:
        state = entry.read_text().splitlines()
    except OSError:
        return [f"{entry} is missing: {arch} programs cannot run on this {host_arch} host "
                f"(package qemu-user-static, then: update-binfmts --enable {name})"]
    problems = []
    if not state or state[0] != "enabled":
        problems.append(f"binfmt entry {name} is disabled: run update-binfmts --enable {name}")
    if not any(line.startswith("flags:") and "F" in line for line in state):
        problems.append(f"binfmt entry {name} lacks the F flag, so it cannot work inside a chroot "
                        "(use qemu-user-static's entry, package qemu-user-static)")
    return problems


def check_build(target: Target, workdir_parent: Path, need_mmdebstrap: bool = True,
                host_arch: str = "amd64", encrypted: bool = False) -> None:
    problems = []
    arch = target.arch
    if os.geteuid() != 0:
        problems.append("liveng build must run as root: the image tree holds files of other owners and "
                        "device nodes (run it with sudo)")
    tools = dict(BUILD_TOOLS)
    if not need_mmdebstrap:
        del tools["mmdebstrap"]
    if encrypted:
        tools["cryptsetup"] = "cryptsetup-bin"
    if arch != host_arch and need_mmdebstrap:
        tools.update(FOREIGN_TOOLS)
        problems += binfmt_problems(arch, host_arch)
    problems += missing_tools(tools)
    if target.bios:
        problems += grub.check_host()
    try:
        free = shutil.disk_usage(workdir_parent).free
    except OSError as exc:
        problems.append(f"cannot check free space in {workdir_parent}: {exc}")
    else:
        if free < MIN_FREE_BYTES:
            problems.append(f"{workdir_parent} has {free // 2**20} MiB free; a build needs about "
                            f"{MIN_FREE_BYTES // 2**20} MiB")
    _fail(problems)


def check_run(arch: str, firmware_files: list[Path]) -> None:
    problems = missing_tools(RUN_TOOLS[arch])
    for f in firmware_files:
        if not f.exists():
            pkg = "ovmf" if "OVMF" in str(f) else "qemu-efi-aarch64" if "AAVMF" in str(f) else "seabios"
            problems.append(f"{f} is missing (package {pkg})")
    _fail(problems)
