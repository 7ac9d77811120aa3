"""Checks before any work, each failure saying exactly what to install or change."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from liveng.host.bootloader import grub
from liveng.host.errors import PreflightError

# tool -> Debian package that provides it
BUILD_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "mksquashfs": "squashfs-tools",
    "xorriso": "xorriso",
    "mkfs.fat": "dosfstools",
    "mcopy": "mtools",
    "mkfs.ext4": "e2fsprogs",
    "sfdisk": "fdisk",
    "grub-mkimage": "grub-common",
    "systemctl": "systemd",
    "useradd": "passwd",
    "tar": "tar",
}
RUN_TOOLS = {"qemu-system-x86_64": "qemu-system-x86"}
MIN_FREE_BYTES = 4 * 1024**3


def _which(tool: str) -> bool:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return shutil.which(tool, path=path) is not None


def missing_tools(tools: dict[str, str]) -> list[str]:
    return [f"{tool} (package {pkg})" for tool, pkg in tools.items() if not _which(tool)]


def _fail(problems: list[str]) -> None:
    if problems:
        packages = sorted({p.split("package ")[-1].rstrip(")") for p in problems if "package " in p})
        hint = f"\nInstall with: apt-get install {' '.join(packages)}" if packages else ""
        raise PreflightError("the host is not ready:\n  - " + "\n  - ".join(problems) + hint)


def check_build(target: str, workdir_parent: Path, need_mmdebstrap: bool = True) -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("liveng build must run as root: the image tree holds files of other owners and "
                        "device nodes (run it with sudo)")
    tools = dict(BUILD_TOOLS)
    if not need_mmdebstrap:
        del tools["mmdebstrap"]
    problems += missing_tools(tools)
    if target == "pc":
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


def check_run(firmware_files: list[Path]) -> None:
    problems = missing_tools(RUN_TOOLS)
    for f in firmware_files:
        if not f.exists():
            pkg = "ovmf" if "OVMF" in str(f) else "qemu-efi-aarch64" if "AAVMF" in str(f) else "seabios"
            problems.append(f"{f} is missing (package {pkg})")
    _fail(problems)
