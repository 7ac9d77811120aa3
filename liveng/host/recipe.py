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

from liveng import bootargs, boundedread, layout, settings
from liveng.host import appliance, updaterecipe
from liveng.host.appliance import Repository, Script
from liveng.host.errors import RecipeError
from liveng.host.targets import TARGETS, Target
from liveng.settings import Checker, Settings, Ssh, User, Wifi

__all__ = ["Recipe", "User", "load", "loads", "parse", "with_overrides"]

DEFAULT_RECIPE_NAME = "<embedded default recipe>"

SUITES = ("bookworm", "trixie", "forky", "sid")
COMPRESSIONS = ("zstd", "xz", "gzip", "lz4", "lzo", "none")

# MiB; FAT32 needs at least 65525 clusters, which mkfs.fat cannot fit below ~33 MiB.
SIZE_LIMITS = {"boot": (64, 4096), "slot": (32, 4096), "persistence": (64, 2 * 1024 * 1024)}
MBR_LIMIT_MIB = 2 * 1024 * 1024  # 2 TiB with 512-byte sectors

_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
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
class Services:
    """[services]: systemd units to enable or disable in the image (after [[files]] are copied, so a
    unit a recipe brings can be enabled)."""

    enable: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()


_UNIT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9@_.:\\-]*\.(service|socket|timer|path|target|mount)")


# LUKS2 key derivation (argon2id): the memory it costs at every unlock, in MiB. The device must
# have it free in the initramfs: a Raspberry Pi 3 has 1 GiB in all.
KDF_MEMORY_LIMITS = (32, 1024)
# cryptsetup reads at most 8 MiB from a key file by default.
KEY_FILE_MAX = 8 * 1024 * 1024


@dataclass(frozen=True)
class Persistence:
    """[persistence]: encryption of p7. The passphrase is read at build time and never copied into the
    image; a key file is (see README: it unlocks without a prompt, so it protects less)."""

    encryption: str = "none"  # "none" or "luks2"
    passphrase_file: Path | None = None
    key_file: Path | None = None
    kdf_memory: int = 256  # MiB

    @property
    def encrypted(self) -> bool:
        return self.encryption == "luks2"


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
    docs: bool = False  # man pages, info, /usr/share/doc (copyrights stay either way): trim.py
    translations: bool = False  # message catalogues; the recipe's locale's language keeps its own
    sizes: Sizes = field(default_factory=Sizes)
    ram: Ram = field(default_factory=Ram)
    files: tuple[FileCopy, ...] = ()
    services: Services = field(default_factory=Services)
    users: tuple[User, ...] = ()
    timezone: str | None = None  # None: UTC
    locale: str | None = None  # None: C.UTF-8
    keyboard: str | None = None  # None: us
    wifi: Wifi | None = None
    ssh: Ssh | None = None
    persistence: Persistence = field(default_factory=Persistence)
    boot_settings: bool | None = None  # [settings] from_boot_partition; None: the default below
    # Appliance keys (liveng/host/appliance.py).
    repositories: tuple[Repository, ...] = ()
    debs: tuple[Path, ...] = ()
    extra_tree: Path | None = None
    scripts: tuple[Script, ...] = ()
    # System updates (liveng/host/updaterecipe.py); version None: the build's time.
    version: str | None = None
    update: updaterecipe.Update = field(default_factory=updaterecipe.Update)

    @property
    def settings_from_boot_partition(self) -> bool:
        """Whether the device applies liveng-settings.toml from p1. Default: yes, but not with encrypted
        persistence, where the file would let anyone holding the card for a minute add a root key."""
        return self.boot_settings if self.boot_settings is not None else not self.persistence.encrypted

    @property
    def platform(self) -> Target:
        """The target's table: what its images have that the other target's do not."""
        return TARGETS[self.target]

    @property
    def arch(self) -> str:
        return self.platform.arch

    @property
    def settings(self) -> Settings:
        """The recipe's device settings, in the form the settings file on p1 has."""
        return Settings(**{name: getattr(self, name) for name in settings.KEYS})


_TOP_KEYS = ({f.name for f in fields(Recipe)} - {"path", "boot_settings"}) | {"settings"}


def _checker(path: str) -> Checker:
    return Checker(path, RecipeError)


def parse(data: dict[str, Any], path: str, base: Path | None) -> Recipe:
    """Validate a decoded TOML document. ``base`` resolves relative file sources."""
    c = _checker(path)
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
    # hostname, users, timezone, locale, keyboard, wifi, ssh: the same schema as the settings file on p1.
    kw.update(settings.parse_fields(c, data))
    if "wifi" in kw and kw["wifi"].ssid is not None and not kw["wifi"].key_given:
        raise c.fail("wifi.passphrase", "is missing (or give the WPA key as wifi.psk; \"\" for an open network)")
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
            if bootargs.reserved_arg(a):
                raise c.fail(f"cmdline[{i}]", f"{a!r} is an argument liveng sets itself (boot, persistence, modes, "
                             "liveng.*): use the recipe's own keys ([ram] mode...) instead")
        kw["cmdline"] = args
    if "autologin" in data:
        kw["autologin"] = c.boolean("autologin", data["autologin"])
    for key in ("docs", "translations"):
        if key in data:
            kw[key] = c.boolean(key, data[key])
    if "grub_timeout" in data:
        kw["grub_timeout"] = c.integer("grub_timeout", data["grub_timeout"], 0, 600, " s")
    if "sizes" in data:
        kw["sizes"] = _sizes(c, c.table("sizes", data["sizes"]))
    if "ram" in data:
        kw["ram"] = _ram(c, c.table("ram", data["ram"]))
    if "files" in data:
        kw["files"] = tuple(_file(c, f"files[{i}]", t, base) for i, t in enumerate(c.tables("files", data["files"])))
    if "services" in data:
        kw["services"] = _services(c, c.table("services", data["services"]))
    if "repositories" in data:
        kw["repositories"] = appliance.repositories(c, data["repositories"], base)
    if "debs" in data:
        kw["debs"] = appliance.debs(c, data["debs"], base)
    if "extra_tree" in data:
        kw["extra_tree"] = appliance.extra_tree(c, data["extra_tree"], base)
    if "scripts" in data:
        kw["scripts"] = appliance.scripts(c, data["scripts"], base)
    if "version" in data:
        kw["version"] = updaterecipe.version(c, data["version"])
    if "update" in data:
        kw["update"] = updaterecipe.update(c, data["update"], base)
    if "persistence" in data:
        kw["persistence"] = _persistence(c, c.table("persistence", data["persistence"]), base)
    if "settings" in data:
        table = c.table("settings", data["settings"])
        c.unknown(table, {"from_boot_partition"}, "settings")
        if "from_boot_partition" in table:
            kw["boot_settings"] = c.boolean("settings.from_boot_partition", table["from_boot_partition"])
    return Recipe(**kw)


def _services(c: Checker, table: dict[str, Any]) -> Services:
    c.unknown(table, {"enable", "disable"}, "services")
    lists = {}
    for key in ("enable", "disable"):
        units = c.strings(f"services.{key}", table[key]) if key in table else ()
        for i, unit in enumerate(units):
            c.pattern(f"services.{key}[{i}]", unit, _UNIT_RE, "a systemd unit name such as nginx.service")
        lists[key] = units
    both = sorted(set(lists["enable"]) & set(lists["disable"]))
    if both:
        raise c.fail("services", f"{', '.join(both)} both enabled and disabled: keep it in one list")
    return Services(enable=lists["enable"], disable=lists["disable"])


def _sizes(c: Checker, table: dict[str, Any]) -> Sizes:
    c.unknown(table, set(SIZE_LIMITS), "sizes")
    values = {k: c.integer(f"sizes.{k}", v, *SIZE_LIMITS[k], " MiB") for k, v in table.items()}
    sizes = Sizes(**values)
    total = sizes.boot + 2 * sizes.slot + sizes.persistence
    if total > MBR_LIMIT_MIB:
        raise c.fail("sizes", f"the partitions add up to {total} MiB, more than an MBR disk can address (2 TiB)")
    return sizes


def _secret_file(c: Checker, key: str, value: Any, base: Path | None) -> Path:
    path = appliance.recipe_path(c, key, value, base)
    try:
        data = boundedread.read_regular(path, KEY_FILE_MAX)
    except boundedread.ReadError as exc:
        raise c.fail(key, f"cannot read {path}: {exc.reason}") from None
    if not data.strip():
        raise c.fail(key, f"{path} is empty: there is no default passphrase or key, put one in it")
    if key.endswith("passphrase_file") and b"\n" in passphrase(data):
        raise c.fail(key, f"{path} holds more than one line: a passphrase is typed on one line")
    return path


def passphrase(data: bytes) -> bytes:
    """The passphrase a file holds: its one line, without the line end (what a person types)."""
    return data.removesuffix(b"\n").removesuffix(b"\r")


def _persistence(c: Checker, table: dict[str, Any], base: Path | None) -> Persistence:
    c.unknown(table, {"encryption", "passphrase_file", "key_file", "kdf_memory"}, "persistence")
    encryption = c.choice("persistence.encryption", table.get("encryption", "none"), ("none", "luks2"))
    files = {k: _secret_file(c, f"persistence.{k}", table[k], base)
             for k in ("passphrase_file", "key_file") if k in table}
    kdf = (c.integer("persistence.kdf_memory", table["kdf_memory"], *KDF_MEMORY_LIMITS, " MiB")
           if "kdf_memory" in table else Persistence.kdf_memory)
    if encryption == "none" and (files or "kdf_memory" in table):
        raise c.fail("persistence.encryption", "is \"none\" but a passphrase, key file or kdf_memory is given: "
                     "set encryption = \"luks2\" or remove them")
    if encryption == "luks2" and not files:
        raise c.fail("persistence", "encryption = \"luks2\" needs passphrase_file (typed at every boot) "
                     "and/or key_file (unlocks without a prompt); there is no default passphrase")
    return Persistence(encryption=encryption, passphrase_file=files.get("passphrase_file"),
                       key_file=files.get("key_file"), kdf_memory=kdf)


def _ram(c: Checker, table: dict[str, Any]) -> Ram:
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
                bootargs.check_persistent_path(path)
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


def _file(c: Checker, key: str, table: dict[str, Any], base: Path | None) -> FileCopy:
    c.unknown(table, {"source", "destination", "mode"}, key)
    for required in ("source", "destination"):
        if required not in table:
            raise c.fail(f"{key}.{required}", "is missing")
    source = appliance.recipe_path(c, f"{key}.source", table["source"], base)
    if not source.exists():
        raise c.fail(f"{key}.source", f"{source} does not exist")
    dest = c.string(f"{key}.destination", table["destination"])
    problem = destination_problem(dest)
    if problem:
        raise c.fail(f"{key}.destination", f"{dest!r} must be an absolute path inside the image: {problem}")
    mode = None
    if "mode" in table:
        text = c.pattern(f"{key}.mode", table["mode"], re.compile(r"^0?[0-7]{3,4}$"), "an octal mode like \"0644\"")
        mode = int(text, 8)
    return FileCopy(source=source, destination=dest, mode=mode)


def destination_problem(dest: str) -> str | None:
    """Why ``dest`` is not a normalised absolute path below / (None when it is one)."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in dest):
        return "it holds a control character"
    if not dest.startswith("/"):
        return "it does not start with /"
    parts = dest[1:].split("/")
    if parts == [""] or any(p in ("", ".", "..") for p in parts):
        return "it is /, or has an empty, . or .. component"
    return None


def load(path: Path | None) -> Recipe:
    """Load a recipe file, or the embedded default recipe when ``path`` is None."""
    if path is None:
        text = resources.files("liveng.host").joinpath("data/default.toml").read_text()
        return loads(text, DEFAULT_RECIPE_NAME, None)
    try:
        text = boundedread.read_regular(path, boundedread.SETTINGS_CAP).decode()
    except boundedread.ReadError as exc:
        if exc.missing:
            raise RecipeError(f"{path}: no such recipe file") from None
        raise RecipeError(f"{path}: cannot read the recipe: {exc.reason}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not UTF-8 text: save the recipe as UTF-8") from None
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
        _checker("command line").choice("--target", changes["target"], list(TARGETS))
    return replace(recipe, **changes)
