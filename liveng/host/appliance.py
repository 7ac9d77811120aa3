"""The recipe's appliance keys: what turns a Debian image into the thing it runs.

- ``[[repositories]]``: extra apt sources, each signed by its own key (an ASCII-armored OpenPGP
  public key, embedded in the deb822 source as apt's Signed-By allows), used by mmdebstrap and kept
  on the device unless ``keep = false``.
- ``debs``: local .deb files installed with the packages (apt resolves their dependencies).
- ``extra_tree``: a directory copied over the image's root, as mkosi.extra is, with the path safety
  of ``[[files]]``.
- ``[[scripts]]``: executables run at build time inside the image's root (a chroot with /proc, /sys
  and /dev), in order, after the files and the extra tree, before ``[services]``.

The repositories and debs shape the rootfs, so they are part of its cache key; scripts and the
extra tree shape the tree the squashfs is made from, whose cache key is its content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liveng import boundedread
from liveng.settings import Checker

REPOSITORY_KEYS = {"name", "uri", "suites", "components", "key_file", "keep"}
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_URI_RE = re.compile(r"(https?|file)://[^\s\"'\\]+")
_WORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/+~-]{0,63}")
ARMOR_BEGIN = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
ARMOR_END = "-----END PGP PUBLIC KEY BLOCK-----"
KEY_MAX = 1024 * 1024
DEB_MAX = 2 * 1024 * 1024 * 1024
SCRIPT_MAX = 16 * 1024 * 1024


@dataclass(frozen=True)
class Repository:
    name: str  # the source's file on the device: /etc/apt/sources.list.d/liveng-NAME.sources
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    key: str  # the ASCII-armored public key, as read
    keep: bool = True

    @property
    def file_name(self) -> str:
        return f"liveng-{self.name}.sources"

    def deb822(self) -> str:
        """The deb822 source with the key inside (apt >= 2.3: Signed-By holds the key itself)."""
        key = "\n".join(f" {line}" if line.strip() else " ." for line in self.key.strip().splitlines())
        return (f"Types: deb\nURIs: {self.uri}\nSuites: {' '.join(self.suites)}\n"
                f"Components: {' '.join(self.components)}\nSigned-By:\n{key}\n")


@dataclass(frozen=True)
class Script:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name


def recipe_path(c: Checker, key: str, value: Any, base: Path | None) -> Path:
    """A path the recipe names; a relative one is relative to the recipe's directory ``base``."""
    path = Path(c.string(key, value))
    if not path.is_absolute():
        if base is None:
            raise c.fail(key, "a relative path needs a recipe file to be relative to")
        path = base / path
    return path


def repositories(c: Checker, value: Any, base: Path | None) -> tuple[Repository, ...]:
    found: list[Repository] = []
    for i, table in enumerate(c.tables("repositories", value)):
        key = f"repositories[{i}]"
        c.unknown(table, REPOSITORY_KEYS, key)
        for required in ("name", "uri", "suites", "key_file"):
            if required not in table:
                raise c.fail(f"{key}.{required}", "is missing (an unsigned repository is not accepted)"
                             if required == "key_file" else "is missing")
        name = c.pattern(f"{key}.name", table["name"], _NAME_RE, "a short name: a-z, 0-9 and -, up to 40")
        if any(r.name == name for r in found):
            raise c.fail(f"{key}.name", f"{name!r} names another repository already")
        uri = c.pattern(f"{key}.uri", table["uri"], _URI_RE, "an http://, https:// or file:// URL")
        words = {}
        for field in ("suites", "components"):
            items = c.strings(f"{key}.{field}", table.get(field, ["main"]))
            if not items:
                raise c.fail(f"{key}.{field}", "is empty")
            for j, item in enumerate(items):
                c.pattern(f"{key}.{field}[{j}]", item, _WORD_RE, "a suite or component name such as stable or main")
            words[field] = items
        key_path = recipe_path(c, f"{key}.key_file", table["key_file"], base)
        try:
            text = boundedread.read_regular(key_path, KEY_MAX).decode("ascii")
        except boundedread.ReadError as exc:
            raise c.fail(f"{key}.key_file", f"cannot read {key_path}: {exc.reason}") from None
        except UnicodeDecodeError:
            text = ""
        if ARMOR_BEGIN not in text or ARMOR_END not in text:
            raise c.fail(f"{key}.key_file", f"{key_path} is not an ASCII-armored OpenPGP public key: export it "
                         "with gpg --armor --export KEYID (a binary .gpg keyring: gpg --enarmor, or --export -a)")
        keep = c.boolean(f"{key}.keep", table["keep"]) if "keep" in table else not uri.startswith("file:")
        found.append(Repository(name=name, uri=uri, suites=words["suites"], components=words["components"],
                                key=text[text.index(ARMOR_BEGIN):text.index(ARMOR_END) + len(ARMOR_END)] + "\n",
                                keep=keep))
    return tuple(found)


def debs(c: Checker, value: Any, base: Path | None) -> tuple[Path, ...]:
    paths = []
    for i, item in enumerate(c.strings("debs", value)):
        path = recipe_path(c, f"debs[{i}]", item, base)
        if path.suffix != ".deb":
            raise c.fail(f"debs[{i}]", f"{path} is not a .deb file (its name must end in .deb)")
        if not path.is_file():
            raise c.fail(f"debs[{i}]", f"{path} does not exist or is not a file")
        if any(ch in str(path) for ch in ",%\n"):
            raise c.fail(f"debs[{i}]", f"{path}: a path with , or % cannot be given to mmdebstrap: rename it")
        with open(path, "rb") as f:
            if f.read(8) != b"!<arch>\n":
                raise c.fail(f"debs[{i}]", f"{path} is not a Debian package (no ar archive header)")
        if path.stat().st_size > DEB_MAX:
            raise c.fail(f"debs[{i}]", f"{path} is larger than {DEB_MAX >> 30} GiB")
        paths.append(path.resolve())
    return tuple(paths)


def extra_tree(c: Checker, value: Any, base: Path | None) -> Path:
    path = recipe_path(c, "extra_tree", value, base)
    if not path.is_dir() or path.is_symlink():
        raise c.fail("extra_tree", f"{path} is not a directory")
    return path


def scripts(c: Checker, value: Any, base: Path | None) -> tuple[Script, ...]:
    found = []
    for i, table in enumerate(c.tables("scripts", value)):
        key = f"scripts[{i}]"
        c.unknown(table, {"path"}, key)
        if "path" not in table:
            raise c.fail(f"{key}.path", "is missing")
        path = recipe_path(c, f"{key}.path", table["path"], base)
        try:
            data = boundedread.read_regular(path, SCRIPT_MAX)
        except boundedread.ReadError as exc:
            raise c.fail(f"{key}.path", f"cannot read {path}: {exc.reason}") from None
        if not data.startswith(b"#!"):
            raise c.fail(f"{key}.path", f"{path} does not start with #! (an interpreter such as #!/bin/sh, which "
                         "must be in the image)")
        found.append(Script(path=path))
    return tuple(found)
