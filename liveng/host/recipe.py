"""Recipes: one TOML file parsed into a frozen, typed Recipe, validated before any work.

Every error names the file and the key, and says what would be right.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from liveng import layout
from liveng.host.errors import RecipeError

DEFAULT_RECIPE_NAME = "<embedded default recipe>"

TARGETS = {"pc": "amd64", "rpi": "arm64"}
SUITES = ("bookworm", "trixie", "forky", "sid")
COMPRESSIONS = ("zstd", "xz", "gzip", "lz4", "lzo", "none")

# MiB; FAT32 needs at least 65525 clusters, which mkfs.fat cannot fit below ~33 MiB.
SIZE_LIMITS = {"boot": (64, 4096), "slot": (32, 4096), "persistence": (64, 2 * 1024 * 1024)}
MBR_LIMIT_MIB = 2 * 1024 * 1024  # 2 TiB with 512-byte sectors

_HOSTNAME_RE = re.compile(r"^(?=.{1,63}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_HASH_RE = re.compile(r"^\$[0-9a-z]+\$\S+$")
_SSH_KEY_RE = re.compile(r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-\S+|sk-\S+) [A-Za-z0-9+/=]+( .*)?$")
_MIRROR_RE = re.compile(r"^((https?|file)://\S+)?$")
_SECURITY_RE = re.compile(r"^(none|https?://\S+)?$")


@dataclass(frozen=True)
class Sizes:
    boot: int = 256
    slot: int = 256
    persistence: int = 1024


JOURNALS = ("volatile", "persistent")
_CAP_RE = re.compile(r"^([1-9][0-9]?%|[1-9][0-9]{0,6}[kmg])$")


@dataclass(frozen=True)
class Ram:
    """Boot modes and memory: the [ram] table."""

    mode: str = layout.MODE_PERSISTENT  # the default boot mode (layout.MODES)
    zram_percent: int = 50  # zram swap, in percent of RAM (0: none)
    delta_cap: str = "50%"  # RAM modes: the most the RAM delta may use (tmpfs size=: N% of RAM or Nk/Nm/Ng)
    persistent_paths: tuple[str, ...] = ()  # ram-paths mode: directories kept on p7
    journal: str = "volatile"  # systemd-journald's Storage=: volatile (RAM) or persistent


@dataclass(frozen=True)
class FileCopy:
    source: Path
    destination: str
    mode: int | None = None


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str | None = None
    ssh_keys: tuple[str, ...] = ()
    sudo: bool = False


@dataclass(frozen=True)
class Recipe:
    path: str = DEFAULT_RECIPE_NAME
    target: str = "rpi"
    suite: str = "trixie"
    mirror: str = ""  # empty: the Debian mirror the host's apt uses
    security_mirror: str = ""  # empty: the host's; "none": no security sources on the device
    hostname: str = "liveng"
    packages: tuple[str, ...] = ()
    compression: str = "zstd"
    cmdline: tuple[str, ...] = ()
    autologin: bool = False
    grub_timeout: int = 3
    sizes: Sizes = field(default_factory=Sizes)
    ram: Ram = field(default_factory=Ram)
    files: tuple[FileCopy, ...] = ()
    users: tuple[User, ...] = ()

    @property
    def arch(self) -> str:
        return TARGETS[self.target]


_TOP_KEYS = {f.name for f in fields(Recipe)} - {"path"}


class _Checker:
    """Type checks that name the file and the dotted key."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, message: str) -> RecipeError:
        return RecipeError(f"{self.path}: {key}: {message}")

    def unknown(self, table: dict[str, Any], allowed: set[str], where: str) -> None:
        for key in table:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                name = f"{where}.{key}" if where else key
                raise self.fail(name, f"unknown key (known keys: {known})")

    def string(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, not {_kind(value)}")
        return value

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, not {_kind(value)}")
        return value

    def integer(self, key: str, value: Any, low: int, high: int, unit: str = "") -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer{unit}, not {_kind(value)}")
        if not low <= value <= high:
            raise self.fail(key, f"{value}{unit} is impossible: it must be between {low} and {high}{unit}")
        return value

    def strings(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list of strings, not {_kind(value)}")
        return tuple(self.string(f"{key}[{i}]", v) for i, v in enumerate(value))

    def table(self, key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, not {_kind(value)}")
        return value

    def tables(self, key: str, value: Any) -> list[dict[str, Any]]:
        if not isinstance(value, list):
            raise self.fail(key, f"must be an array of tables ([[{key}]]), not {_kind(value)}")
        return [self.table(f"{key}[{i}]", v) for i, v in enumerate(value)]

    def choice(self, key: str, value: Any, choices: tuple[str, ...] | list[str]) -> str:
        text = self.string(key, value)
        if text not in choices:
            raise self.fail(key, f"{text!r} is not one of: {', '.join(choices)}")
        return text

    def pattern(self, key: str, value: Any, regex: re.Pattern[str], what: str) -> str:
        text = self.string(key, value)
        if not regex.match(text):
            raise self.fail(key, f"{text!r} is not {what}")
        return text


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def parse(data: dict[str, Any], path: str, base: Path | None) -> Recipe:
    """Validate a decoded TOML document. ``base`` resolves relative file sources."""
    c = _Checker(path)
    c.unknown(data, _TOP_KEYS, "")
    kw: dict[str, Any] = {"path": path}
    if "target" in data:
        kw["target"] = c.choice("target", data["target"], list(TARGETS))
    if "suite" in data:
        kw["suite"] = c.choice("suite", data["suite"], SUITES)
    if "mirror" in data:
        kw["mirror"] = c.pattern("mirror", data["mirror"], _MIRROR_RE, "empty or an http://, https:// or file:// URL")
    if "security_mirror" in data:
        kw["security_mirror"] = c.pattern("security_mirror", data["security_mirror"], _SECURITY_RE,
                                          "empty, \"none\" or an http:// or https:// URL")
    if "hostname" in data:
        kw["hostname"] = c.pattern("hostname", data["hostname"], _HOSTNAME_RE,
                                   "a valid host name (a-z, 0-9 and -, at most 63 characters)")
    if "packages" in data:
        pkgs = c.strings("packages", data["packages"])
        for i, p in enumerate(pkgs):
            c.pattern(f"packages[{i}]", p, _PACKAGE_RE, "a Debian package name")
        kw["packages"] = pkgs
    if "compression" in data:
        kw["compression"] = c.choice("compression", data["compression"], COMPRESSIONS)
    if "cmdline" in data:
        args = c.strings("cmdline", data["cmdline"])
        for i, a in enumerate(args):
            if not a or any(ch.isspace() for ch in a) or any(ch in a for ch in "\"'$;{}"):
                raise c.fail(f"cmdline[{i}]", f"{a!r} must be one kernel argument without spaces, quotes, $ ; {{ }}")
        kw["cmdline"] = args
    if "autologin" in data:
        kw["autologin"] = c.boolean("autologin", data["autologin"])
    if "grub_timeout" in data:
        kw["grub_timeout"] = c.integer("grub_timeout", data["grub_timeout"], 0, 600, " s")
    if "sizes" in data:
        kw["sizes"] = _sizes(c, c.table("sizes", data["sizes"]))
    if "ram" in data:
        kw["ram"] = _ram(c, c.table("ram", data["ram"]))
    if "files" in data:
        kw["files"] = tuple(_file(c, f"files[{i}]", t, base) for i, t in enumerate(c.tables("files", data["files"])))
    if "users" in data:
        users = tuple(_user(c, f"users[{i}]", t) for i, t in enumerate(c.tables("users", data["users"])))
        names = [u.name for u in users]
        for name in names:
            if names.count(name) > 1:
                raise c.fail("users", f"user {name!r} is listed twice")
        kw["users"] = users
    return Recipe(**kw)


def _sizes(c: _Checker, table: dict[str, Any]) -> Sizes:
    c.unknown(table, set(SIZE_LIMITS), "sizes")
    values = {k: c.integer(f"sizes.{k}", v, *SIZE_LIMITS[k], " MiB") for k, v in table.items()}
    sizes = Sizes(**values)
    total = sizes.boot + 2 * sizes.slot + sizes.persistence
    if total > MBR_LIMIT_MIB:
        raise c.fail("sizes", f"the partitions add up to {total} MiB, more than an MBR disk can address (2 TiB)")
    return sizes


def _ram(c: _Checker, table: dict[str, Any]) -> Ram:
    c.unknown(table, {f.name for f in fields(Ram)}, "ram")
    kw: dict[str, Any] = {}
    if "mode" in table:
        kw["mode"] = c.choice("ram.mode", table["mode"], layout.MODES)
    if "zram_percent" in table:
        kw["zram_percent"] = c.integer("ram.zram_percent", table["zram_percent"], 0, 200, " %")
    if "delta_cap" in table:
        kw["delta_cap"] = c.pattern("ram.delta_cap", table["delta_cap"], _CAP_RE,
                                    "a size like \"50%\" (of RAM, 1-99) or \"512m\" (k, m or g)")
    if "persistent_paths" in table:
        paths = c.strings("ram.persistent_paths", table["persistent_paths"])
        for i, path in enumerate(paths):
            try:
                layout.check_persistent_path(path)
            except layout.LayoutError as exc:
                raise c.fail(f"ram.persistent_paths[{i}]", str(exc)) from None
            if paths.count(path) > 1:
                raise c.fail(f"ram.persistent_paths[{i}]", f"{path} is listed twice")
            for other in paths:
                if other != path and path.startswith(other + "/"):
                    raise c.fail(f"ram.persistent_paths[{i}]", f"{path} is inside {other}, which is listed already")
        kw["persistent_paths"] = paths
    if "journal" in table:
        kw["journal"] = c.choice("ram.journal", table["journal"], JOURNALS)
    return Ram(**kw)


def _file(c: _Checker, key: str, table: dict[str, Any], base: Path | None) -> FileCopy:
    c.unknown(table, {"source", "destination", "mode"}, key)
    for required in ("source", "destination"):
        if required not in table:
            raise c.fail(f"{key}.{required}", "is missing")
    source = Path(c.string(f"{key}.source", table["source"]))
    if not source.is_absolute():
        if base is None:
            raise c.fail(f"{key}.source", "a relative path needs a recipe file to be relative to")
        source = base / source
    if not source.exists():
        raise c.fail(f"{key}.source", f"{source} does not exist")
    dest = c.string(f"{key}.destination", table["destination"])
    if not dest.startswith("/") or "/../" in dest + "/" or dest == "/":
        raise c.fail(f"{key}.destination", f"{dest!r} must be an absolute path inside the image")
    mode = None
    if "mode" in table:
        text = c.pattern(f"{key}.mode", table["mode"], re.compile(r"^0?[0-7]{3,4}$"), "an octal mode like \"0644\"")
        mode = int(text, 8)
    return FileCopy(source=source, destination=dest, mode=mode)


def _user(c: _Checker, key: str, table: dict[str, Any]) -> User:
    c.unknown(table, {"name", "password_hash", "ssh_keys", "sudo"}, key)
    if "name" not in table:
        raise c.fail(f"{key}.name", "is missing")
    name = c.pattern(f"{key}.name", table["name"], _USER_RE, "a valid user name")
    password_hash = None
    if "password_hash" in table:
        password_hash = c.pattern(f"{key}.password_hash", table["password_hash"], _HASH_RE,
                                  "a crypt(3) hash (make one with: mkpasswd -m yescrypt); plain passwords are refused")
    keys: tuple[str, ...] = ()
    if "ssh_keys" in table:
        keys = c.strings(f"{key}.ssh_keys", table["ssh_keys"])
        for i, k in enumerate(keys):
            c.pattern(f"{key}.ssh_keys[{i}]", k, _SSH_KEY_RE, "an OpenSSH public key line")
    sudo = c.boolean(f"{key}.sudo", table["sudo"]) if "sudo" in table else False
    return User(name=name, password_hash=password_hash, ssh_keys=keys, sudo=sudo)


def load(path: Path | None) -> Recipe:
    """Load a recipe file, or the embedded default recipe when ``path`` is None."""
    if path is None:
        text = resources.files("liveng.host").joinpath("data/default.toml").read_text()
        return loads(text, DEFAULT_RECIPE_NAME, None)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read the recipe: {exc}") from None
    return loads(text, str(path), path.resolve().parent)


def loads(text: str, path: str, base: Path | None) -> Recipe:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}") from None
    return parse(data, path, base)


def with_overrides(recipe: Recipe, **changes: Any) -> Recipe:
    """A copy with command-line overrides applied, checked like recipe values."""
    from dataclasses import replace

    if "target" in changes:
        _Checker("command line").choice("--target", changes["target"], list(TARGETS))
    return replace(recipe, **changes)
