"""Benchmark: what liveng costs at boot. The default-recipe PC image against the same rootfs as a
plain ext4 root: same kernel and initramfs (p2's), same QEMU (q35, TCG, 1 vCPU, 1 GiB), same
kernel arguments apart from the root, one after the other in the same run; each to its serial
login prompt. Then the test image's power-on to shell through firmware and GRUB.

    sudo .venv/bin/python -m bench.boot_ratio [IMAGE] [--runs N] [--test-image IMAGE]

Without IMAGE the default recipe is built for the PC (`liveng build --target pc`). The kernel is
started directly (-kernel/-initrd) for both, so that the firmware and GRUB, which a plain install
would have too, are not in the ratio. The plain root is the squashfs's tree unpacked into ext4
(mkfs.ext4 -d), booted with root=/dev/vda: liveng's own services are in it but do not start
without liveng.id= on the command line. Goal: liveng / plain <= 1.15.
Results go to stdout as Markdown; copy them into bench/RESULTS.md with the date.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pexpect

from liveng import layout
from liveng.host.cli import main as liveng
from liveng.host.imagefile import fat_file, open_image
from liveng.host.inspect import iso_file
from liveng.host.qemu import TCG
from liveng.host.runner import run
from tests.boot.conftest import build_image
from tests.vm import Vm

LOGIN = re.compile(r"login: ")


def boot_files(image: Path, dest: Path) -> tuple[Path, Path, Path, str]:
    """p2's kernel, initrd and squashfs, and the command line of the boot menu's first entry."""
    img = open_image(image)
    p1 = img.table.entry(layout.partition(layout.Role.BOOT).number).start
    p2 = img.table.entry(layout.partition(layout.Role.SYSTEM).number).start
    out = []
    for rel in (layout.KERNEL_PATH, layout.INITRD_PATH, layout.SQUASHFS_PATH):
        data = iso_file(image, p2, rel)
        if data is None:
            sys.exit(f"{image}: no {rel} on p2")
        path = dest / Path(rel).name
        path.write_bytes(data)
        out.append(path)
    cfg = fat_file(image, p1, layout.GRUB_CFG_PATH).decode()
    match = re.search(r'^set liveng_cmdline="([^"]*)"', cfg, re.M)
    if not match:
        sys.exit(f"{image}: no liveng_cmdline in grub.cfg")
    cmdline = f"{match.group(1)} {layout.KERNEL_ARG_MODE}={layout.MODE_PERSISTENT} {layout.KERNEL_ARG_BOOT}=factory"
    return out[0], out[1], out[2], cmdline


def plain_root(squashfs: Path, dest: Path) -> Path:
    tree = dest / "tree"
    run(["unsquashfs", "-no-progress", "-d", tree, squashfs])
    (tree / "etc/fstab").write_text("/dev/vda / ext4 rw,noatime 0 1\n")
    size = int(subprocess.run(["du", "-sm", tree], capture_output=True, text=True, check=True).stdout.split()[0])
    root = dest / "plain.img"
    run(["mkfs.ext4", "-q", "-L", "plain", "-d", tree, root, f"{size * 13 // 10 + 256}M"])
    run(["rm", "-rf", tree])
    return root


def to_login(disk: Path, kernel: Path, initrd: Path, cmdline: str, log: Path) -> float:
    """Start QEMU on ``disk`` with the kernel given directly; seconds to the serial login prompt."""
    argv = ["-machine", "q35", "-accel", TCG, "-m", "1024", "-smp", "1", "-nodefaults", "-no-user-config",
            "-drive", f"file={disk},format=raw,if=none,id=disk0,cache=unsafe", "-device", "virtio-blk-pci,drive=disk0",
            "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0", "-device", "virtio-rng-pci",
            "-display", "none", "-serial", "mon:stdio", "-snapshot",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline]
    start = time.monotonic()
    with open(log, "a") as f:
        proc = pexpect.spawn("qemu-system-x86_64", argv, encoding="utf-8", codec_errors="replace", timeout=1800)
        proc.logfile_read = f
        try:
            proc.expect(LOGIN)
            return time.monotonic() - start
        finally:
            proc.terminate(force=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("image", nargs="?", type=Path, help="a PC image (default: the default recipe, built)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--test-image", type=Path, help="a test image (default: built from the boot tests' recipe)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="liveng-bench-", dir="/var/tmp") as name:
        tmp = Path(name)
        image = args.image
        if image is None:
            image = tmp / "default-pc.img"
            if liveng(["build", "--target", "pc", "-o", str(image)]) != 0:
                sys.exit("building the default PC image failed")
        kernel, initrd, squashfs, cmdline = boot_files(image, tmp)
        plain = plain_root(squashfs, tmp)
        squashfs.unlink()
        plain_cmdline = re.sub(r"\S*(live|persistence|liveng)\S*", "", cmdline)
        plain_cmdline = " ".join(f"root=/dev/vda rw {plain_cmdline}".split())
        log = tmp / "console.log"
        results: dict[str, list[float]] = {"liveng": [], "plain ext4": []}
        for _ in range(args.runs):
            results["liveng"].append(to_login(image, kernel, initrd, cmdline, log))
            results["plain ext4"].append(to_login(plain, kernel, initrd, plain_cmdline, log))
        print("| root | runs | min s | median s | max s |")
        print("|---|---|---|---|---|")
        for what, times in results.items():
            print(f"| {what} | {len(times)} | {min(times):.1f} | {statistics.median(times):.1f} | {max(times):.1f} |")
        ratio = statistics.median(results["liveng"]) / statistics.median(results["plain ext4"])
        print(f"\nliveng / plain (medians): {ratio:.2f} (goal <= 1.15)")
        test_image = args.test_image or build_image(tmp, "trixie", "bench-test")
        shells = []
        for _ in range(args.runs):
            with Vm(test_image, log, snapshot=True) as vm:
                shells.append(vm.wait_shell(timeout=1800))
                vm.poweroff()
        print(f"test image, UEFI power-on to shell: median {statistics.median(shells):.1f} s over {len(shells)} "
              "(goal <= 45 s under TCG)")


if __name__ == "__main__":
    main()
