"""Filesystem images made from directories, without mounting anything."""

from __future__ import annotations

import os
from pathlib import Path

from liveng import durable
from liveng.host import fatlayout
from liveng.host.runner import run

_SQUASHFS_COMP = {
    "zstd": ["-comp", "zstd", "-Xcompression-level", "15"],
    "xz": ["-comp", "xz"],
    "gzip": ["-comp", "gzip"],
    "lz4": ["-comp", "lz4"],
    "lzo": ["-comp", "lzo"],
    "none": ["-noI", "-noD", "-noF", "-noX"],
}


# /boot (the kernel and its initrd) written last: the system ISO puts its own copies of them right
# after the squashfs, so the two initrds (already compressed, stored as they are) lie within
# `zstd --long`'s 128 MiB window and a shipped image carries the bytes once (bench/RESULTS.md).
SQUASHFS_SORT = "boot -32768\n"


def squashfs(tree: Path, out: Path, compression: str) -> None:
    sort = out.with_name(f".{out.name}.sort")
    sort.write_text(SQUASHFS_SORT)
    try:
        # -xattrs keeps file capabilities (ping) and ACLs; -wildcards lets the excludes be patterns.
        run(["mksquashfs", tree, out, "-noappend", "-no-progress", "-xattrs", "-wildcards",
             *_SQUASHFS_COMP[compression], "-sort", sort,
             "-e", "proc/*", "sys/*", "dev/*", "run/*", "tmp/*"])
    finally:
        sort.unlink(missing_ok=True)


def iso9660(tree: Path, out: Path, volid: str) -> None:
    # Rock Ridge for long names and modes; level 3 lets the squashfs pass 4 GiB.
    run(["xorriso", "-as", "mkisofs", "-quiet", "-iso-level", "3", "-R", "-V", volid, "-o", out, tree])


def fat32(static: Path, runtime: Path, out: Path, size_mib: int, label: str, serial: str) -> fatlayout.Fence:
    """A FAT32 image holding the trees ``static`` and ``runtime`` (the root entries the device rewrites),
    kept apart (fatlayout); ``serial`` is 8 hex digits."""
    out.unlink(missing_ok=True)
    run(["mkfs.fat", "-F", "32", "-n", label, "-i", serial, "-C", out, str(size_mib * 1024)])
    fatlayout.populate(out, static, runtime)
    return fatlayout.check(out, tuple(p.name for p in runtime.iterdir()))


def persistence_ext4(tree: Path, out: Path, size_mib: int, label: str) -> None:
    out.unlink(missing_ok=True)
    run(["mkfs.ext4", "-q", "-F", "-L", label, "-d", tree, "-E", "nodiscard", out, f"{size_mib}M"])
    run(["tune2fs", "-o", durable.PERSISTENCE_MOUNT_DEFAULTS, out])


def copy_sparse(src: Path, dst_fd: int, offset: int) -> None:
    """Copy a file into ``dst_fd`` at ``offset``, skipping its holes so the image stays sparse."""
    with open(src, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                data_start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            hole = os.lseek(fd, data_start, os.SEEK_HOLE)
            os.lseek(fd, data_start, os.SEEK_SET)
            remaining = hole - data_start
            dst = offset + data_start
            while remaining:
                chunk = os.read(fd, min(remaining, 8 * 1024 * 1024))
                if not chunk:
                    raise OSError(f"{src}: short read")
                os.pwrite(dst_fd, chunk, dst)
                dst += len(chunk)
                remaining -= len(chunk)
            pos = hole
