"""Benchmark: a system update's apply on this machine's own CPU and disk (not under TCG), and what
an update costs to download against what a new image costs.

    sudo .venv/bin/python -m bench.update_apply [--workdir DIR] [--delta-mib N]

Builds the default recipe for the PC as version 2 taking updates (`liveng build --target pc`,
cached rootfs), makes a signing key and a bundle (`liveng bundle`), then runs the device's own
apply steps (liveng/device/update.py, fetch.py: standard library, so they run here unchanged) on
a directory standing in for p7: the signature and checks, the system's SHA-256, the system
written, synced and read back past the page cache, the kept paths copied from a delta of N MiB
(many small files and a few large ones), the kernel and initrd taken out of the new system's ISO
and checked. Writing the kernel slot needs the device's partitions: its time is the VM's
(tests/boot/test_update.py prints it). Sizes: the raw image, its zstd -10 compression (what
`liveng build --compress zstd` ships), the bundle. Results go to stdout as Markdown.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from liveng import layout
from liveng.device import fetch, update
from liveng.host.cli import main as liveng
from tests.boot.conftest import make_signing_key

RECIPE = 'target = "pc"\nversion = "2"\n[update]\nkeyring = "{key}"\n'


def make_delta(p7: Path, mib: int) -> None:
    """A used device's delta: /home with many small files and a few large ones, /srv, /etc."""
    rw = p7 / layout.DELTA_DIR
    small = rw / "home/pi/notes"
    small.mkdir(parents=True)
    for i in range(2000):
        (small / f"{i}.txt").write_bytes(os.urandom(1024))
    big = rw / "srv/data"
    big.mkdir(parents=True)
    for i in range(max(1, mib // 64)):
        with open(big / f"blob{i}", "wb") as f:
            f.write(os.urandom(min(64, mib) * layout.MiB))
    (rw / "etc").mkdir()
    (rw / "etc/hostname").write_text("bench\n")
    (p7 / layout.DELTA_STATE_DIR).mkdir(parents=True, exist_ok=True)
    os.sync()


def timed(laps: list[tuple[str, float]], what: str, start: float) -> float:
    now = time.monotonic()
    laps.append((what, now - start))
    return now


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="keep the image, key and bundle here (default: a temporary dir)")
    ap.add_argument("--delta-mib", type=int, default=256, help="size of the kept paths (default 256)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the build and the ISO mount need it")
    with tempfile.TemporaryDirectory(prefix="liveng-bench-update-", dir="/var/tmp") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        secret, public = work / "key.sec", work / "key.pub"
        if not secret.exists():
            make_signing_key(work / "gnupg", secret, public, "liveng bench updates")
        recipe, image, bundle_path = work / "v2.toml", work / "v2.img", work / "v2.bundle"
        recipe.write_text(RECIPE.format(key=public))
        if not image.exists() and liveng(["build", str(recipe), "-o", str(image), "--cached-rootfs"]) != 0:
            return 1
        start = time.monotonic()
        if liveng(["bundle", str(image), "-o", str(bundle_path), "--sign-key", str(secret)]) != 0:
            return 1
        bundle_s = time.monotonic() - start
        zst = subprocess.run(f"zstd -10 -T0 -q -c {image} | wc -c", shell=True, check=True, capture_output=True,
                             text=True).stdout.strip()

        p7 = work / "p7"
        shutil.rmtree(p7, ignore_errors=True)
        p7.mkdir()
        make_delta(p7, args.delta_mib)
        part = p7 / "incoming.part"
        shutil.copyfile(bundle_path, part)
        os.sync()
        laps: list[tuple[str, float]] = []
        t = time.monotonic()
        opened = fetch.open_signed_bundle(part, public)
        meta = opened.meta
        t = timed(laps, "signature (gpgv) and metadata", t)
        fetch.check_system(part, meta)
        t = timed(laps, "system SHA-256", t)
        fetch.cut_to_system(part, meta)
        t = timed(laps, "bundle cut to its system", t)
        final = update._install_system(p7, part, meta, (opened.metadata, opened.signature))
        t = timed(laps, "system installed, synced, read back", t)
        kept = update._stage_delta(p7, meta.system_name, ("/home", "/root", "/srv", "/etc/hostname"))
        t = timed(laps, f"kept paths copied ({', '.join(kept)}, {args.delta_mib} MiB + 2000 small files)", t)
        if "iso9660" in Path("/proc/filesystems").read_text():
            with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
                update._kernel_files(final / layout.SYSTEM_ISO_NAME, meta, Path(shm))
            timed(laps, "kernel and initrd out of the new ISO, checked", t)
        else:  # a host kernel without ISO9660 (some VMs): the step is measured in the VM only
            print("(this kernel mounts no iso9660: the kernel files step is left out)")

        mib = layout.MiB
        print(f"| step (native, {os.cpu_count()} cores, this machine's disk) | s |\n|---|---|")
        for what, s in laps:
            print(f"| {what} | {s:.1f} |")
        print(f"| **total without the download and the slot write** | **{sum(s for _, s in laps):.1f}** |\n")
        print("| what | bytes | MiB |\n|---|---|---|")
        for what, size in (("image (raw, apparent size)", image.stat().st_size),
                           ("image, allocated blocks", image.stat().st_blocks * 512),
                           ("image, zstd -10 (what --compress zstd ships)", int(zst)),
                           ("bundle (system ISO + signed metadata)", bundle_path.stat().st_size),
                           ("system ISO on p7", meta.system_size)):
            print(f"| {what} | {size:,} | {size / mib:.0f} |")
        print(f"\nbundle made in {bundle_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
