"""The squashfs of a customised tree, cached under a digest of the tree's content.

A rebuild with no change makes the same tree (same rootfs tarball, same recipe, same liveng), so
the compressed squashfs (the slowest native step: zstd at level 15) is taken from the cache. The
digest covers every path, type, mode, owner, size, symlink target, xattr and file content, not
the modification times (customisation writes its files anew at each build).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
from pathlib import Path

from liveng.host import filesystems
from liveng.host.runner import output

log = logging.getLogger("liveng.squashfs")

KEEP = 4  # cached squashfs files kept, the most recently used ones
EXCLUDED_TOP = ("proc", "sys", "dev", "run", "tmp")  # their content is left out of the squashfs too


def tree_digest(tree: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(tree)
        names = sorted(dirnames + filenames)
        if rel_dir == Path(".") or rel_dir.parts[0] not in EXCLUDED_TOP:
            for name in names:
                path = Path(dirpath) / name
                st = path.lstat()
                rel = (rel_dir / name).as_posix()
                h.update(f"{rel}\0{st.st_mode:o}\0{st.st_uid}\0{st.st_gid}\0{st.st_size}\0{st.st_rdev}\0".encode())
                if stat.S_ISLNK(st.st_mode):
                    h.update(os.readlink(path).encode() + b"\0")
                for attr in sorted(os.listxattr(path, follow_symlinks=False)):
                    h.update(attr.encode() + b"=" + os.getxattr(path, attr, follow_symlinks=False) + b"\0")
                if stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as f:
                        h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:32]


def squashfs(tree: Path, out: Path, compression: str, cache_dir: Path) -> bool:
    """Make ``out`` from ``tree``, from the cache when the same tree was compressed before; True if cached."""
    version = output(["mksquashfs", "-version"]).splitlines()[0]
    key = hashlib.sha256(f"{tree_digest(tree)}\0{compression}\0{version}\0{filesystems.SQUASHFS_SORT}"
                         .encode()).hexdigest()[:24]
    cached = cache_dir / f"squashfs-{key}.sqfs"
    if cached.is_file():
        shutil.copyfile(cached, out)
        os.utime(cached)
        log.info("squashfs cache hit: %s", cached.name)
        return True
    filesystems.squashfs(tree, out, compression)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(out, tmp)
        os.replace(tmp, cached)
    finally:
        tmp.unlink(missing_ok=True)
    for old in sorted(cache_dir.glob("squashfs-*.sqfs"), key=lambda p: p.stat().st_mtime, reverse=True)[KEEP:]:
        old.unlink(missing_ok=True)
    return False
