"""Benchmark: `liveng snapshot create` of a 1 GiB delta against a plain `tar | zstd` of the same tree.

    sudo .venv/bin/python -m bench.snapshot [--rootfs TARBALL] [--size-mib 1024] [--runs 3]

Runs on the host with the device code (liveng.device.snapshot.create: sync, GNU tar with xattrs,
ACLs, sparse detection and numeric owners, zstd -3 on all cores, fsync, rename, du for the
sidecar). The tree is a rootfs tarball (binaries, libraries, text: what a delta holds after
package installs) extracted as many times as it takes to reach the size. Baselines:
`tar -cf - . | zstd -q -3 -T0 -c > FILE` (same compression level, same disk), once as it is (the
archive may still be in the page cache when it ends) and once followed by `sync FILE` (on the
disk, as liveng's is). Runs alternate, page cache warm (one untimed pass of each first);
throughput is the tree's bytes (du) over wall time. Goal: liveng >= 80 % of the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from liveng import layout
from liveng.device import delta, snapshot


def default_rootfs() -> Path:
    tarballs = sorted(Path("/var/cache/liveng").glob("rootfs-trixie-amd64-*.tar"))
    if not tarballs:
        raise SystemExit("no rootfs tarball in /var/cache/liveng: build an image first or give --rootfs")
    return tarballs[-1]


def make_tree(root: Path, rootfs: Path, size: int) -> int:
    rw = root / layout.DELTA_DIR
    rw.mkdir(parents=True)
    i = 0
    while (delta.used_bytes(rw) or 0) < size:
        d = rw / f"copy{i}"
        d.mkdir()
        subprocess.run(["tar", "-C", str(d), "--xattrs", "--xattrs-include=*", "-xf", str(rootfs)], check=True)
        i += 1
    return delta.used_bytes(rw) or 0


def baseline(src: Path, out: Path, durable: bool) -> float:
    start = time.monotonic()
    sync = f" && sync '{out}'" if durable else ""
    subprocess.run(f"tar -C '{src}' -cf - . | zstd -q -3 -T0 -c > '{out}'{sync}", shell=True, check=True)
    return time.monotonic() - start


def liveng_snapshot(root: Path, name: str) -> float:
    start = time.monotonic()
    snapshot.create(root, name)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rootfs", type=Path)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="liveng-bench-snapshot-", dir=args.dir) as tmp:
        root = Path(tmp)
        tree_bytes = make_tree(root, args.rootfs or default_rootfs(), args.size_mib * layout.MiB)
        out = root / "baseline.tar.zst"
        plain, durable, ours = "`tar \\| zstd`", "`tar \\| zstd` + `sync FILE`", "`liveng snapshot create`"
        results: dict[str, list[float]] = {plain: [], durable: [], ours: []}
        for run in range(args.runs + 1):
            for name in results:
                if name == ours:
                    seconds = liveng_snapshot(root, f"bench{run}")
                else:
                    seconds = baseline(root / layout.DELTA_DIR, out, durable=name == durable)
                    out.unlink()
                if run:  # the first pass only warms the page cache
                    results[name].append(seconds)
            snap = root / layout.SNAPSHOT_DIR / f"bench{run}{layout.SNAPSHOT_SUFFIX}"
            snap_size = snap.stat().st_size
            snap.unlink()
    print(f"tree: {tree_bytes / layout.MiB:.0f} MiB (du); archive {snap_size / layout.MiB:.0f} MiB")
    print("| what | runs | median s | MiB/s | liveng's throughput relative to it |")
    print("|---|---|---|---|---|")
    ours_median = statistics.median(results[ours])
    for name, times in results.items():
        med = statistics.median(times)
        print(f"| {name} | {len(times)} | {med:.1f} | {tree_bytes / layout.MiB / med:.0f} | "
              f"{med / ours_median:.0%} |")


if __name__ == "__main__":
    main()
