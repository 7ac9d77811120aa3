"""Benchmark: power-on-to-shell time of a liveng test image in QEMU (TCG), UEFI and BIOS.

    sudo .venv/bin/python -m bench.boot_time [IMAGE] [--runs N]

Without IMAGE it builds the boot tests' recipe (trixie, autologin, their kernel arguments).
Results go to stdout as a Markdown table; copy them into bench/RESULTS.md with the date.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from tests.boot.conftest import build_image
from tests.vm import Vm


def measure(image: Path, bios: bool, runs: int, log: Path) -> list[float]:
    times = []
    for _ in range(runs):
        with Vm(image, log, bios=bios, snapshot=True) as vm:
            times.append(vm.wait_shell())
            vm.poweroff()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("image", nargs="?", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="liveng-bench-", dir="/var/tmp") as tmp:
        image = args.image or build_image(Path(tmp), "trixie", "bench")
        log = Path(tmp) / "console.log"
        print("| firmware | runs | min s | median s | max s |")
        print("|---|---|---|---|---|")
        for bios in (False, True):
            t = measure(image, bios, args.runs, log)
            print(f"| {'BIOS' if bios else 'UEFI'} | {len(t)} | {min(t):.1f} | {statistics.median(t):.1f} | "
                  f"{max(t):.1f} |")


if __name__ == "__main__":
    main()
