"""Copying the recipe's [[files]] into the image tree, as root, without ever leaving the tree.

The tree is a Debian system: /etc/localtime and /var/run are absolute symbolic links that mean the
image's files, not the build host's. Every destination is resolved component by component as a chroot
would (an absolute link starts again at the tree's root, .. stops at it); a final symbolic link is
replaced, never written through; directories are copied entry by entry the same way.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from liveng.host.errors import RecipeError

MAX_LINKS = 40  # what the kernel allows (ELOOP)


def resolve_parent(tree: Path, dest: str) -> tuple[Path, str]:
    """The real directory (inside ``tree``, made if missing) that holds ``dest``, and its last name."""
    parts = [p for p in dest.split("/") if p]
    if not parts:
        raise RecipeError(f"{dest!r}: not a file inside the image")
    *todo, last = parts
    todo.reverse()
    done: list[str] = []
    links = 0
    while todo:
        name = todo.pop()
        if name in ("", "."):
            continue
        if name == "..":
            if done:
                done.pop()
            continue
        here = tree.joinpath(*done, name)
        if here.is_symlink():
            links += 1
            if links > MAX_LINKS:
                raise RecipeError(f"{dest}: too many symbolic links in the image tree")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            todo.extend(reversed(target.split("/")))
            continue
        if here.exists() and not here.is_dir():
            raise RecipeError(f"{dest}: /{'/'.join([*done, name])} is a file in the image, not a directory")
        if not here.exists():
            here.mkdir(mode=0o755)
        done.append(name)
    return tree.joinpath(*done), last


def copy_into(tree: Path, source: Path, dest: str, mode: int | None) -> None:
    """Copy a file or a directory to ``dest`` in the image tree."""
    parent, name = resolve_parent(tree, dest)
    target = parent / name
    if source.is_dir() and not source.is_symlink():
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            target.unlink()
        if not target.exists():
            target.mkdir(mode=0o755)
        shutil.copystat(source, target)
        for entry in sorted(source.iterdir()):
            copy_into(tree, entry, f"{dest.rstrip('/')}/{entry.name}", None)
    else:
        if target.is_dir() and not target.is_symlink():
            raise RecipeError(f"{dest}: a directory in the image; a file cannot replace it")
        # A temporary name in the real directory, then a rename: a link there is replaced, not followed.
        tmp = parent / f".{name}.liveng-copy"
        tmp.unlink(missing_ok=True)
        if source.is_symlink():
            tmp.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, tmp, follow_symlinks=False)
        os.replace(tmp, target)
    if mode is not None and not target.is_symlink():
        target.chmod(mode)


def copy_over(tree: Path, source: Path) -> None:
    """A directory laid over the image's root (the recipe's extra_tree): every file and link of it to
    the same path in the image, through the image's own directory links (/bin -> usr/bin stays a link)."""
    for here, dirs, files in os.walk(source):
        rel = Path(here).relative_to(source)
        for name in sorted(dirs):
            entry = Path(here) / name
            dest = f"/{(rel / name).as_posix()}"
            if entry.is_symlink():
                copy_into(tree, entry, dest, None)
            else:
                # Made where missing, with the source's mode; an image directory keeps its own.
                parent, _ = resolve_parent(tree, dest)
                made = parent / name
                if not made.exists():
                    made.mkdir()
                    shutil.copystat(entry, made)
        for name in sorted(files):
            copy_into(tree, Path(here) / name, f"/{(rel / name).as_posix()}", None)
