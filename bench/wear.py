"""Benchmark: bytes written to the card, per boot mode, read from QEMU's block statistics (QMP
query-blockstats, wr_bytes of the image's drive).

    sudo python3 -m bench.wear [IMAGE] [--idle-min 10] [--modes persistent,ram]

Without IMAGE a trixie PC test image is built (tests/boot/conftest.py). For each mode: a fresh
sparse copy of the image, its default mode set in p1's grubenv from the host (mtools), one boot
under TCG with 2 GiB; the count starts once the boot is complete (liveng-boot-ok has run, which
may write grubenv on the first boot of a copy). Then an idle period (nothing but the system's own
timers), then a scripted workload: 200 small files created and deleted, a 4 MiB file written,
50 lines appended to a log file, sync; then 40 s for the page cache's writeback. Idle bytes are
extrapolated to an hour. Then a slow log: one line a second for 120 s, no sync, and 40 s more (what
ext4's allocation mode changes: with delayed allocation the blocks are chosen at writeback). Then
the seconds a 64 MiB file takes to be written and synced. Goals: ram mode 0 bytes after boot;
persistent mode idle <= 1 MiB/hour.

``--p7-options``: tune2fs -o for the copy's p7 before its boot (``^nodelalloc`` to measure delayed
allocation; an image whose initramfs has live-premount/liveng-p7defaults sets p7's defaults back
before the mount, so use one built before it). The table says which allocation p7 was mounted with.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from liveng import grubenv, layout
from liveng.host.disk import read_table
from liveng.host.qmp import Qmp
from tests.boot.conftest import build_image
from tests.vm import Vm

WORKLOAD = """mkdir -p /root/wear
for i in $(seq 1 200); do echo "$i" > /root/wear/f$i; done
rm -r /root/wear
head -c 4M /dev/urandom > /root/wear.bin
for i in $(seq 1 50); do echo "line $i" >> /var/tmp/wear.log; done
sync"""
SLOW_LOG = 'for i in $(seq 1 120); do echo "line $i $(date +%s.%N)" >> /var/tmp/slow.log; sleep 1; done'
BIG_WRITE = ("python3 -c 'import os, time; t = time.monotonic(); f = open(\"/root/big.bin\", \"wb\"); "
             "[f.write(os.urandom(1 << 20)) for _ in range(64)]; f.close(); os.sync(); print(time.monotonic() - t)'")


@dataclass(frozen=True)
class Wear:
    boot: int  # bytes written to the card, per phase
    idle: int
    per_hour: float
    workload: int
    slow_log: int
    big_write_s: float
    alloc: str  # p7's allocation mode as mounted


def set_mode(image: Path, mode: str, tmp: Path) -> None:
    """Write grubenv's default mode into p1 of ``image`` (mtools: nothing is mounted)."""
    p1 = read_table(image).entry(layout.partition(layout.Role.BOOT).number)
    spec = f"{image}@@{p1.start}"
    env_file = tmp / "grubenv"
    env = {"MTOOLS_SKIP_CHECK": "1"}
    subprocess.run(["mcopy", "-n", "-i", spec, f"::/{layout.GRUBENV_PATH}", env_file], check=True,
                   env=env)
    values = grubenv.parse(env_file.read_bytes())
    values[layout.ENV_MODE] = mode
    env_file.write_bytes(grubenv.serialize(values))
    subprocess.run(["mcopy", "-o", "-i", spec, env_file, f"::/{layout.GRUBENV_PATH}"], check=True, env=env)


def measure(image: Path, mode: str, idle_s: float, tmp: Path, p7_options: str = "") -> Wear:
    copy = tmp / f"{mode}.img"
    subprocess.run(["cp", "--sparse=always", image, copy], check=True)
    set_mode(copy, mode, tmp)
    if p7_options:
        p7 = read_table(copy).entry(layout.partition(layout.Role.PERSISTENCE).number)
        subprocess.run(["tune2fs", "-o", p7_options, f"{copy}?offset={p7.start}"], check=True, capture_output=True)
    sock = tmp / f"{mode}.qmp"
    with Vm(copy, tmp / f"{mode}.log", memory=2048, qmp=sock) as vm:
        vm.wait_shell()
        vm.sh("systemctl is-system-running --wait >/dev/null; "
              "until systemctl is-active -q liveng-boot-ok; do sleep 1; done", timeout=600)
        assert f"{layout.KERNEL_ARG_MODE}={mode}" in vm.sh("cat /proc/cmdline")
        qmp = Qmp(sock)
        boot = qmp.written()
        time.sleep(idle_s)
        idle = qmp.written() - boot
        options = vm.sh("cat /proc/fs/ext4/vda7/options 2>/dev/null || true").split()
        alloc = "nodelalloc" if "nodelalloc" in options else "delalloc" if "delalloc" in options else "-"
        vm.sh(WORKLOAD, timeout=600)
        time.sleep(40)
        work = qmp.written() - boot - idle
        vm.sh(SLOW_LOG, timeout=600)
        time.sleep(40)
        slow = qmp.written() - boot - idle - work
        seconds = float(vm.sh(BIG_WRITE, timeout=900))
        qmp.close()
        vm.power_cut()
    return Wear(boot, idle, idle * 3600 / idle_s, work, slow, seconds, alloc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", nargs="?", type=Path)
    parser.add_argument("--idle-min", type=float, default=10)
    parser.add_argument("--modes", default=f"{layout.MODE_PERSISTENT},{layout.MODE_RAM}")
    parser.add_argument("--p7-options", default="", help="tune2fs -o for p7 before the boot, e.g. ^nodelalloc")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="liveng-wear-", dir="/var/tmp") as name:
        tmp = Path(name)
        image = args.image or build_image(tmp, "trixie", "wear")
        print("| mode | p7 | written during boot | idle (measured) | idle per hour | workload | slow log | "
              "64 MiB write+sync |")
        print("|---|---|---|---|---|---|---|---|")
        for mode in args.modes.split(","):
            r = measure(image, mode, args.idle_min * 60, tmp, args.p7_options)
            print(f"| {mode} | {r.alloc} | {r.boot / 2**20:.1f} MiB | {r.idle / 1024:.0f} KiB in "
                  f"{args.idle_min:g} min | {r.per_hour / 2**20:.2f} MiB | {r.workload / 2**20:.2f} MiB | "
                  f"{r.slow_log / 1024:.0f} KiB | {r.big_write_s:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
