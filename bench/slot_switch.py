"""Benchmark: kernel slot write + switch time (update-initramfs excluded).

    sudo .venv/bin/python -m bench.slot_switch [IMAGE] [--runs N]      # in a VM (TCG)
    sudo .venv/bin/python -m bench.slot_switch --native IMAGE [--runs N]   # this host, a loop device

In the VM: boots the image (BIOS, a scratch copy) and times `liveng kernel install --force $(uname -r)`
by the guest's clock: hashes of the kernel files, ISO made in RAM, written to the inactive slot,
synced, read back and compared, boot order switched in grubenv on p1. Under TCG emulation every
CPU-bound step (sha256, xorriso) runs ~10x slower than natively.

--native runs the same device code (liveng.device.slots, liveng.grubenv) on this host: the image's
factory kernel and initrd (from its p2) as the slot's content, a 256 MiB direct-I/O loop device on
/var/tmp's disk as the slot, grubenv replaced atomically (write, fsync, rename, fsync directory) on
that disk as the switch (on the device the switch also mounts p1).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests.boot.conftest import build_image
from tests.vm import Vm


def table(times: list[float]) -> str:
    return ("| runs | min s | median s | max s |\n|---|---|---|---|\n"
            f"| {len(times)} | {min(times):.2f} | {statistics.median(times):.2f} | {max(times):.2f} |")


def in_vm(image: Path | None, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="liveng-bench-", dir="/var/tmp") as tmp:
        source = image or build_image(Path(tmp), "trixie", "bench")
        scratch = Path(tmp) / "scratch.img"
        subprocess.run(["cp", "--sparse=always", source, scratch], check=True)
        with Vm(scratch, Path(tmp) / "console.log", bios=True) as vm:
            vm.wait_shell()
            vm.sh("systemctl start liveng-boot-ok.service")
            sizes = vm.sh("du -b /boot/vmlinuz-$(uname -r) /boot/initrd.img-$(uname -r) | awk '{s+=$1} END {print s}'")
            times = []
            for _ in range(runs):
                out = vm.sh("python3 -c 'import subprocess, sys, time; t = time.monotonic(); "
                            "subprocess.run([\"liveng\", \"kernel\", \"install\", \"--force\", sys.argv[1]], "
                            "check=True, stdout=subprocess.DEVNULL); print(time.monotonic() - t)' $(uname -r)")
                times.append(float(out.splitlines()[-1]))
            vm.poweroff()
    print(f"in the VM (TCG); kernel + initrd: {int(sizes) / 2**20:.1f} MiB")
    print(table(times))


def factory_kernel(image: Path, dest: Path) -> dict[str, Path]:
    """The kernel and initrd on the image's p2, copied out to ``dest`` (liveng inspect's ISO reader)."""
    from liveng import layout
    from liveng.host.disk import read_table
    from liveng.host.inspect import iso_file

    entry = read_table(image).entry(layout.partition(layout.Role.SYSTEM).number)
    files = {}
    for rel in (layout.KERNEL_PATH, layout.INITRD_PATH):
        data = iso_file(image, entry.start, rel)
        if data is None:
            raise SystemExit(f"{image}: no {rel} on its system partition (p2): give a liveng image")
        files[rel] = dest / Path(rel).name
        files[rel].write_bytes(data)
    return files


def native(image: Path, runs: int) -> None:
    from liveng import grubenv, layout, manifest
    from liveng.device import bootstate, slots

    totals: list[float] = []
    parts: dict[str, list[float]] = {"hash": [], "iso": [], "write+verify": [], "switch": []}
    with tempfile.TemporaryDirectory(prefix="liveng-bench-", dir="/var/tmp") as tmp:
        files = factory_kernel(image, Path(tmp))
        size = sum(f.stat().st_size for f in files.values())
        backing = Path(tmp) / "slot.img"
        with open(backing, "wb") as f:
            f.truncate(256 * layout.MiB)
        loop = subprocess.run(["losetup", "--direct-io=on", "--find", "--show", backing], check=True,
                              capture_output=True, text=True).stdout.strip()
        try:
            env_file = Path(tmp) / "grubenv"
            for _ in range(runs):
                subprocess.run(["sync"], check=True)
                Path("/proc/sys/vm/drop_caches").write_text("3\n")  # the kernel files come from the disk
                start = time.monotonic()
                hashes = {rel: manifest.sha256_file(src) for rel, src in files.items()}
                t1 = time.monotonic()
                with tempfile.TemporaryDirectory(prefix="liveng-slot-", dir="/dev/shm") as shm:
                    iso = slots.build_iso("b", "factory", files, hashes, Path(shm))
                    t2 = time.monotonic()
                    slots.write_and_verify(iso, Path(loop))
                t3 = time.monotonic()
                bootstate.write_atomic(env_file, grubenv.serialize({layout.ENV_ORDER: "1 0 2", layout.ENV_TRIES: "3"}))
                end = time.monotonic()
                for name, value in zip(parts, (t1 - start, t2 - t1, t3 - t2, end - t3), strict=True):
                    parts[name].append(value)
                totals.append(end - start)
        finally:
            subprocess.run(["losetup", "-d", loop], check=True)
    print(f"native, {platform.machine()} host, {os.cpu_count()} cores; the image's kernel + initrd: "
          f"{size / 2**20:.1f} MiB; slot on a direct-I/O loop device over /var/tmp")
    print(table(totals))
    print("median per step: " + ", ".join(f"{k} {statistics.median(v):.2f} s" for k, v in parts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("image", nargs="?", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--native", action="store_true", help="run the slot code on this host (loop device)")
    args = parser.parse_args()
    if args.native:
        if args.image is None:
            parser.error("--native needs the IMAGE whose kernel and initrd to write")
        native(args.image, args.runs)
    else:
        in_vm(args.image, args.runs)


if __name__ == "__main__":
    main()
