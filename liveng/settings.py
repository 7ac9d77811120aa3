"""Device settings: one schema for the recipe and for the settings file on p1.

Standard library only: this module is installed inside every image. The recipe bakes settings in at
build time (liveng/host/customize.py); the file liveng-settings.toml on p1 (FAT, editable from any
computer after flashing) is applied at boot by liveng-settings.service (liveng/device/firstboot.py).
Both are validated here, whole, before anything is applied; every error names the file and the key
and says what would be right. This module also renders the configuration files both sides write,
so that a setting means the same thing whether it came from the recipe or from p1.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, fields
from typing import Any

# Secrets: applied, then removed from the file on p1 (they stay only in their hashed or derived form
# in the system: /etc/shadow, the Wi-Fi PSK). A WPA key (psk) opens the network as the passphrase does.
SECRET_KEYS = ("password_hash", "passphrase", "psk")

HOSTNAME_RE = re.compile(r"^(?=.{1,63}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
HASH_RE = re.compile(r"^\$[0-9a-z]+\$\S+$")
SSH_KEY_RE = re.compile(r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-\S+|sk-\S+) [A-Za-z0-9+/=]+( [^\n\r]*)?$")
TIMEZONE_RE = re.compile(r"^(UTC|[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9][A-Za-z0-9_+-]*){0,2})$")
LOCALE_RE = re.compile(r"^(C|POSIX|C\.UTF-8|[a-z]{2,3}(_[A-Z]{2})?(\.[A-Za-z0-9-]+)?(@[a-z]+)?)$")
# An XKB layout, optionally with its variant in XKB's own notation: "de", "de(nodeadkeys)".
KEYBOARD_RE = re.compile(r"^([a-z]{2,12})(\(([a-z0-9_-]{1,32})\))?$")
COUNTRY_RE = re.compile(r"^([A-Z]{2}|00)$")
# WPA's pre-shared key as wpa_passphrase prints it (what Raspberry Pi Imager writes instead of the passphrase).
PSK_RE = re.compile(r"^[0-9a-fA-F]{64}$")

# Locales glibc has built in: they work in every image, without the locales package.
BUILTIN_LOCALES = ("C", "POSIX", "C.UTF-8")


class SettingsError(ValueError):
    """A settings value is wrong: the message names the file and the key."""


class Checker:
    """Type checks that name the file and the dotted key; ``error`` is the exception raised."""

    def __init__(self, path: str, error: type[Exception] = SettingsError) -> None:
        self.path = path
        self.error = error

    def fail(self, key: str, message: str) -> Exception:
        return self.error(f"{self.path}: {key}: {message}")

    def unknown(self, table: dict[str, Any], allowed: set[str], where: str) -> None:
        for key in table:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                name = f"{where}.{key}" if where else key
                raise self.fail(name, f"unknown key (known keys: {known})")

    def string(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, not {kind(value)}")
        return value

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, not {kind(value)}")
        return value

    def integer(self, key: str, value: Any, low: int, high: int, unit: str = "") -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer{unit}, not {kind(value)}")
        if not low <= value <= high:
            raise self.fail(key, f"{value}{unit} is impossible: it must be between {low} and {high}{unit}")
        return value

    def strings(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list of strings, not {kind(value)}")
        return tuple(self.string(f"{key}[{i}]", v) for i, v in enumerate(value))

    def table(self, key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, not {kind(value)}")
        return value

    def tables(self, key: str, value: Any) -> list[dict[str, Any]]:
        if not isinstance(value, list):
            raise self.fail(key, f"must be an array of tables ([[{key}]]), not {kind(value)}")
        return [self.table(f"{key}[{i}]", v) for i, v in enumerate(value)]

    def choice(self, key: str, value: Any, choices: tuple[str, ...] | list[str]) -> str:
        text = self.string(key, value)
        if text not in choices:
            raise self.fail(key, f"{text!r} is not one of: {', '.join(choices)}")
        return text

    def pattern(self, key: str, value: Any, regex: re.Pattern[str], what: str, secret: bool = False) -> str:
        text = self.string(key, value)
        if not regex.fullmatch(text):
            # A secret is never repeated: the message goes to the console, the journal and a file on p1,
            # and a "hash" that does not look like one is often the plain password.
            shown = "the value (not shown: it may be a password)" if secret else repr(text)
            raise self.fail(key, f"{shown} is not {what}")
        return text


def kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str | None = None
    ssh_keys: tuple[str, ...] = ()
    sudo: bool = False
    # sudo without the user's password (Raspberry Pi OS's default user has it): implies sudo.
    sudo_nopasswd: bool = False
    # Supplementary groups besides sudo (video, dialout...); those the system lacks are skipped, and said so.
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Wifi:
    country: str
    ssid: str | None  # None: the country (the radio rules) only, no network (Imager's cmdline.txt can say that)
    # None: not given (p1 after the secret was removed: the network keeps the key it has); "": open network.
    passphrase: str | None = None
    hidden: bool = False
    # The WPA key itself (64 hex digits), instead of a passphrase.
    psk: str | None = None

    @property
    def key_given(self) -> bool:
        """Whether the settings say how to join (a passphrase, a key, or "" for an open network)."""
        return self.passphrase is not None or self.psk is not None


@dataclass(frozen=True)
class Ssh:
    enabled: bool | None = None  # None: on when a user has SSH keys (recipe) / unchanged (p1)
    password_authentication: bool | None = None  # None: off (recipe) / unchanged (p1). Root: never.


@dataclass(frozen=True)
class Settings:
    """What the p1 file may set; None or empty means "leave as it is"."""

    hostname: str | None = None
    timezone: str | None = None
    locale: str | None = None
    keyboard: str | None = None
    wifi: Wifi | None = None
    ssh: Ssh | None = None
    users: tuple[User, ...] = ()

    @property
    def empty(self) -> bool:
        return self == Settings()


KEYS = {f.name for f in fields(Settings)}


def parse_fields(c: Checker, data: dict[str, Any]) -> dict[str, Any]:
    """Validate the settings keys present in ``data`` (others are the caller's); return Settings kwargs."""
    kw: dict[str, Any] = {}
    if "hostname" in data:
        kw["hostname"] = c.pattern("hostname", data["hostname"], HOSTNAME_RE,
                                   "a valid host name (a-z, 0-9 and -, at most 63 characters)")
    if "timezone" in data:
        kw["timezone"] = c.pattern("timezone", data["timezone"], TIMEZONE_RE,
                                   "a time zone name like \"Europe/Berlin\" or \"UTC\" (see timedatectl "
                                   "list-timezones)")
    if "locale" in data:
        kw["locale"] = c.pattern("locale", data["locale"], LOCALE_RE,
                                 "a locale name like \"C.UTF-8\" or \"de_DE.UTF-8\"")
    if "keyboard" in data:
        kw["keyboard"] = c.pattern("keyboard", data["keyboard"], KEYBOARD_RE,
                                   "an XKB keyboard layout like \"us\", \"de\" or \"de(nodeadkeys)\"")
    if "wifi" in data:
        kw["wifi"] = _wifi(c, c.table("wifi", data["wifi"]))
    if "ssh" in data:
        table = c.table("ssh", data["ssh"])
        c.unknown(table, {"enabled", "password_authentication"}, "ssh")
        kw["ssh"] = Ssh(**{k: c.boolean(f"ssh.{k}", v) for k, v in table.items()})
    if "users" in data:
        users = tuple(_user(c, f"users[{i}]", t) for i, t in enumerate(c.tables("users", data["users"])))
        names = [u.name for u in users]
        for name in names:
            if names.count(name) > 1:
                raise c.fail("users", f"user {name!r} is listed twice")
        kw["users"] = users
    return kw


def _user(c: Checker, key: str, table: dict[str, Any]) -> User:
    c.unknown(table, {"name", "password_hash", "ssh_keys", "sudo", "sudo_nopasswd", "groups"}, key)
    if "name" not in table:
        raise c.fail(f"{key}.name", "is missing")
    name = c.pattern(f"{key}.name", table["name"], USER_RE, "a valid user name")
    password_hash = None
    if "password_hash" in table:
        password_hash = c.pattern(f"{key}.password_hash", table["password_hash"], HASH_RE,
                                  "a crypt(3) hash (make one with: mkpasswd -m yescrypt, or openssl passwd -6); "
                                  "plain passwords are refused", secret=True)
    keys: tuple[str, ...] = ()
    if "ssh_keys" in table:
        keys = c.strings(f"{key}.ssh_keys", table["ssh_keys"])
        for i, k in enumerate(keys):
            c.pattern(f"{key}.ssh_keys[{i}]", k, SSH_KEY_RE, "an OpenSSH public key line (the content of "
                      "~/.ssh/id_ed25519.pub)")
    sudo = c.boolean(f"{key}.sudo", table["sudo"]) if "sudo" in table else False
    nopasswd = c.boolean(f"{key}.sudo_nopasswd", table["sudo_nopasswd"]) if "sudo_nopasswd" in table else False
    if nopasswd and "sudo" in table and not sudo:
        raise c.fail(f"{key}.sudo_nopasswd", "needs sudo: remove sudo = false, or set sudo_nopasswd = false")
    groups: list[str] = []
    for i, group in enumerate(c.strings(f"{key}.groups", table["groups"]) if "groups" in table else ()):
        c.pattern(f"{key}.groups[{i}]", group, USER_RE, "a valid group name")
        if group == "sudo":
            sudo = True  # the sudo group is what sudo = true gives
        elif group not in groups:
            groups.append(group)
    return User(name=name, password_hash=password_hash, ssh_keys=keys, sudo=sudo or nopasswd, sudo_nopasswd=nopasswd,
                groups=tuple(groups))


def _wifi(c: Checker, table: dict[str, Any]) -> Wifi:
    c.unknown(table, {"country", "ssid", "passphrase", "psk", "hidden"}, "wifi")
    if "country" not in table:
        raise c.fail("wifi.country", "is missing")
    country = c.pattern("wifi.country", table["country"], COUNTRY_RE,
                        "a two-letter country code in capitals, like \"DE\" or \"GB\" (it sets the radio rules)")
    if "ssid" not in table:
        for key in ("passphrase", "psk", "hidden"):
            if key in table:
                raise c.fail("wifi.ssid", f"is missing: {key} is for a network (without ssid, [wifi] sets the "
                             "country only)")
        return Wifi(country=country, ssid=None)
    ssid = c.string("wifi.ssid", table["ssid"])
    if not 1 <= len(ssid.encode()) <= 32 or any(ord(ch) < 32 or ord(ch) == 127 for ch in ssid):
        raise c.fail("wifi.ssid", f"{ssid!r} is not a network name (1 to 32 bytes, no control characters)")
    passphrase = None
    if "passphrase" in table:
        passphrase = c.string("wifi.passphrase", table["passphrase"])
        if passphrase and not (8 <= len(passphrase) <= 63 and all(32 <= ord(ch) < 127 for ch in passphrase)):
            raise c.fail("wifi.passphrase", "must be 8 to 63 printable ASCII characters (WPA2/WPA3 personal), "
                         "or \"\" for an open network")
    psk = None
    if "psk" in table:
        if passphrase is not None:
            raise c.fail("wifi.psk", "give the passphrase or the key (psk), not both")
        psk = c.pattern("wifi.psk", table["psk"], PSK_RE, "a WPA key (64 hexadecimal digits, as wpa_passphrase "
                        "prints it); for the passphrase itself use wifi.passphrase", secret=True).lower()
    hidden = c.boolean("wifi.hidden", table["hidden"]) if "hidden" in table else False
    return Wifi(country=country, ssid=ssid, passphrase=passphrase, hidden=hidden, psk=psk)


def parse(data: dict[str, Any], path: str) -> Settings:
    c = Checker(path)
    c.unknown(data, KEYS, "")
    return Settings(**parse_fields(c, data))


def decode(text: str, path: str) -> dict[str, Any]:
    # Editors on other systems may save a byte-order mark; TOML does not allow one.
    try:
        return tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None


def loads(text: str, path: str) -> Settings:
    return parse(decode(text, path), path)


# Removing the secrets from the file on p1.

def without_secrets(data: dict[str, Any]) -> dict[str, Any]:
    """The decoded document without the secret keys, at any depth."""
    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in SECRET_KEYS}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value
    result: dict[str, Any] = clean(data)
    return result


def has_secrets(data: dict[str, Any]) -> bool:
    return without_secrets(data) != data


_SECRET_LINE = re.compile(r"^(\s*)(" + "|".join(SECRET_KEYS) + r")\s*=.*$")


def redact(text: str, note: str) -> str:
    """``text`` without its secrets, as a TOML text that decodes to ``without_secrets`` of the original.

    Each secret line becomes a comment (``note`` says when it was applied), so the owner's comments and
    layout stay. Where a secret is not on a line of its own (an inline table, a multi-line string),
    the whole file is written anew from the decoded document instead. Either way the result is
    checked by decoding it again.
    """
    data = decode(text, "settings")
    wanted = without_secrets(data)
    lines = []
    for line in text.removeprefix("\ufeff").splitlines():
        m = _SECRET_LINE.match(line)
        lines.append(f"{m.group(1)}# {m.group(2)}: {note}" if m else line)
    candidate = "\n".join(lines) + "\n"
    try:
        if tomllib.loads(candidate) == wanted:
            return candidate
    except tomllib.TOMLDecodeError:
        pass
    candidate = f"# liveng: written anew without its secrets ({note}).\n" + dump(wanted)
    if tomllib.loads(candidate) != wanted:
        raise SettingsError("cannot write the settings file without its secrets")
    return candidate


def _quote(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, list) and all(not isinstance(v, dict) for v in value):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_quote(k)} = {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise SettingsError(f"cannot write {kind(value)} as TOML")


def dump(data: dict[str, Any]) -> str:
    """A TOML text for a decoded document (scalars, lists, tables and arrays of tables, as settings have)."""
    head, tail = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tail.append(f"\n[{_quote(key)}]")
            tail += [f"{_quote(k)} = {_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                tail.append(f"\n[[{_quote(key)}]]")
                tail += [f"{_quote(k)} = {_value(v)}" for k, v in item.items()]
        else:
            head.append(f"{_quote(key)} = {_value(value)}")
    return "\n".join(head + tail) + "\n"


def ssh_wanted(s: Settings) -> bool | None:
    """Whether SSH should run: the explicit setting, else on when the settings give someone a key."""
    if s.ssh is not None and s.ssh.enabled is not None:
        return s.ssh.enabled
    if any(u.ssh_keys for u in s.users):
        return True
    return None


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
