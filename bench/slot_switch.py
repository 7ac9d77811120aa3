"""Benchmark: kernel slot write + switch time on a booted image (update-initramfs excluded).

    sudo .venv/bin/python -m bench.slot_switch [IMAGE] [--runs N]

Boots the image (BIOS, a scratch copy) and times `liveng kernel install --force $(uname -r)` inside
the guest: ISO made in RAM, written to the inactive slot, synced, read back, checked, boot order
switched. Timed by the guest's clock, under TCG emulation (real hardware is faster).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

from tests.boot.conftest import build_image
from tests.vm import Vm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("image", nargs="?", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="liveng-bench-", dir="/var/tmp") as tmp:
        source = args.image or build_image(Path(tmp), "trixie", "bench")
        image = Path(tmp) / "scratch.img"
        subprocess.run(["cp", "--sparse=always", source, image], check=True)
        with Vm(image, Path(tmp) / "console.log", bios=True) as vm:
            vm.wait_shell()
            vm.sh("systemctl start liveng-boot-ok.service")
            sizes = vm.sh("du -b /boot/vmlinuz-$(uname -r) /boot/initrd.img-$(uname -r) | awk '{s+=$1} END {print s}'")
            times = []
            for _ in range(args.runs):
                out = vm.sh("python3 -c 'import subprocess, sys, time; t = time.monotonic(); "
                            "subprocess.run([\"liveng\", \"kernel\", \"install\", \"--force\", sys.argv[1]], "
                            "check=True, stdout=subprocess.DEVNULL); print(time.monotonic() - t)' $(uname -r)")
                times.append(float(out.splitlines()[-1]))
            vm.poweroff()
    print(f"kernel + initrd: {int(sizes) / 2**20:.1f} MiB")
    print("| runs | min s | median s | max s |")
    print("|---|---|---|---|")
    print(f"| {len(times)} | {min(times):.2f} | {statistics.median(times):.2f} | {max(times):.2f} |")


if __name__ == "__main__":
    main()
