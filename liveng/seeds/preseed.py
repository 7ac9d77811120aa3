"""Raspberry Pi's rpi-preseed.toml (Raspberry Pi Imager 2.0.11 on, for images whose init_format is
"rpi-preseed") in liveng's terms.

Keys mean what rpi-preseed(5) says (config_version 1.x); where that needs a reading:

- ``[user]`` renames Raspberry Pi OS's first account (UID 1000) there; liveng images have no such account,
  so ``[user]`` needs ``name`` and makes that user. Without a name, ``[user]`` and ``[ssh] authorized_keys``
  are ignored.
- ``password`` is a crypt(3) hash only with ``password_encrypted = true`` (what Imager writes); a plain
  one (rpi-preseed's default) is not applied. ``groups`` become the user's groups (``sudo`` among them gives
  ``sudo = true``); ``passwordless_sudo`` is ``sudo_nopasswd``.
- ``[ssh]`` is on when ``enabled`` says so, else when it gives keys (rpi-preseed's default).
- ``[wlan]``: ``ssid_hex`` wins over ``ssid``; without ``key_mgmt`` a password means WPA, none an open
  network. A 64-hex ``password`` is the WPA key (liveng's ``psk``), not a passphrase.
- ``[locale]``: ``keymap`` and ``keymap_variant`` become ``keyboard``, ``lang`` becomes ``locale``.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

from liveng.seeds import network
from liveng.seeds.common import MAX_BYTES, REMOVED, Builder, Path, Seed, SeedError, Translation, add_keys

_VERSION = re.compile(r"(\d+)\.(\d+)")
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_NO_NAME = "no user.name: rpi-preseed would change Raspberry Pi OS's first account, which liveng images do not have"


def from_preseed(text: str, cmdline: str | None = None, *, path: str = "rpi-preseed.toml",
                 cmdline_path: str = "cmdline.txt") -> Translation:
    """Translate an rpi-preseed.toml; ``cmdline`` (cmdline.txt) gives the Wi-Fi country when [wlan] does not."""
    if len(text) > MAX_BYTES:
        raise SeedError(path, None, f"larger than {MAX_BYTES} bytes, more than such a file can be")
    try:
        doc = tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:
        raise SeedError(path, None, f"not valid TOML: {exc}") from None
    b = Builder()
    seed = Seed(b, path)
    boot = network.kernel(cmdline, cmdline_path)
    version = doc.get("config_version")
    m = _VERSION.fullmatch(version) if isinstance(version, str) else None
    if m is None:
        raise seed.fail(("config_version",), "is missing or not \"MAJOR.MINOR\" (Imager writes \"1.0\")")
    if m.group(1) != "1":
        raise seed.fail(("config_version",), f"{version!r}: liveng reads rpi-preseed version 1.x")
    user = _user(b, seed, seed.table(("user",), doc.get("user", {})))
    _ssh(b, seed, seed.table(("ssh",), doc.get("ssh", {})), user)
    if user is not None:
        table, where = user
        b.data["users"] = [table]
        b.sources["users[0]"] = path
        for key, origin in where.items():
            b.where[f"users[0]{'.' + key if key else ''}"] = seed.at(origin)
    system = seed.table(("system",), doc.get("system", {}))
    for key, value in system.items():
        if key == "hostname":
            name, _, domain = seed.text(("system", key), value).strip().lower().partition(".")
            if domain:
                b.note(f"{path}: system.hostname: only the host name {name!r} is applied: liveng sets no domain")
            b.data["hostname"], b.sources["hostname"], b.where["hostname"] = name, path, seed.at(("system", key))
        else:
            seed.ignore(("system", key))
    if "wlan" in doc:
        _wlan(b, seed, seed.table(("wlan",), doc["wlan"]), boot)
    network.country_only(b, boot)
    _locale(b, seed, seed.table(("locale",), doc.get("locale", {})))
    if isinstance(doc.get("connect"), dict) and "token" in doc["connect"]:
        seed.secret(("connect", "token"))
    for key in doc:
        if key not in ("config_version", "system", "user", "ssh", "wlan", "locale"):
            seed.ignore((key,))
    return b.finish([(path, text), (cmdline_path, " ".join(boot.relevant) or None)])


def _user(b: Builder, seed: Seed, user: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Path]] | None:
    if "password" in user:
        seed.secret(("user", "password"))
    if "name" not in user:
        for key in user:
            seed.ignore(("user", key), _NO_NAME)
        return None
    table: dict[str, Any] = {"name": seed.text(("user", "name"), user["name"])}
    where: dict[str, Path] = {"": ("user",), "name": ("user", "name")}
    for key, value in user.items():
        here = ("user", key)
        if key == "password":
            if value == REMOVED:
                continue  # applied before: the account has it
            if seed.flag(("user", "password_encrypted"), user.get("password_encrypted", False)):
                table["password_hash"], where["password_hash"] = seed.text(here, value), here
            else:
                seed.ignore(here, "a plain-text password: liveng takes crypt(3) hashes only (mkpasswd -m yescrypt)")
        elif key == "groups":
            groups = [seed.text((*here, i), g) for i, g in enumerate(seed.items(here, value))]
            if "sudo" in groups:
                table["sudo"] = True
            if any(g != "sudo" for g in groups):
                table["groups"], where["groups"] = [g for g in groups if g != "sudo"], here
        elif key == "passwordless_sudo":
            if seed.flag(here, value):
                table["sudo_nopasswd"], where["sudo_nopasswd"] = True, here
        elif key not in ("name", "password_encrypted"):
            seed.ignore(here)
    return table, where


def _ssh(b: Builder, seed: Seed, ssh: dict[str, Any], user: tuple[dict[str, Any], dict[str, Path]] | None) -> None:
    out: dict[str, bool] = {}
    for key, value in ssh.items():
        here = ("ssh", key)
        if key in ("enabled", "password_authentication"):
            out[key] = seed.flag(here, value)
            b.where[f"ssh.{key}"] = seed.at(here)
        elif key == "authorized_keys":
            if user is None:
                seed.ignore(here, _NO_NAME)
            else:
                add_keys(seed, here, value, *user)
        else:
            seed.ignore(here)
    if "enabled" not in out and (ssh.get("authorized_keys") or ssh.get("ssh_import_id")):
        out["enabled"] = True
    if out:
        b.data["ssh"], b.sources["ssh"], b.where["ssh"] = out, seed.file, seed.at(("ssh",))


def _wlan(b: Builder, seed: Seed, wlan: dict[str, Any], boot: network.Kernel) -> None:
    if "password" in wlan:
        seed.secret(("wlan", "password"))
    if "ssid" not in wlan and "ssid_hex" not in wlan and "country" in wlan:
        b.data["wifi"] = {"country": network.country(seed, ("wlan", "country"), wlan["country"])}
        b.sources["wifi"], b.where["wifi.country"] = seed.file, seed.at(("wlan", "country"))
        for key in wlan:
            if key != "country":
                seed.ignore(("wlan", key), "no network (ssid) is given")
        return
    if "ssid_hex" in wlan:
        raw = seed.text(("wlan", "ssid_hex"), wlan["ssid_hex"])
        try:
            ssid = bytes.fromhex(raw).decode("utf-8")
        except ValueError:
            seed.ignore(("wlan",), "a network name that is not UTF-8 text: liveng's settings cannot hold it")
            return
        where: Path = ("wlan", "ssid_hex")
        if "ssid" in wlan:
            seed.ignore(("wlan", "ssid"), "ssid_hex is used")
    else:
        where = ("wlan", "ssid")
        ssid = seed.text(where, wlan.get("ssid"))
    password = seed.text(("wlan", "password"), wlan["password"]) if "password" in wlan else None
    removed = password == REMOVED  # applied before: the device joins with the key it kept
    method = wlan.get("key_mgmt") or ("wpa-psk" if password is not None else "none")
    if method == "owe":
        seed.ignore(("wlan",), "WPA3 Enhanced Open (owe) is not in liveng's settings")
        return
    if method not in ("none", "wpa-psk", "sae"):
        raise seed.fail(("wlan", "key_mgmt"), f"{method!r} is not one of none, owe, wpa-psk, sae")
    if method == "none" and password is not None:
        raise seed.fail(("wlan", "password"), "an open network (key_mgmt \"none\") takes no password")
    if method != "none" and not password:
        raise seed.fail(("wlan", "password"), f"is missing: key_mgmt {method!r} needs one")
    if method == "sae":
        seed.ignore(("wlan", "key_mgmt"), "liveng's Wi-Fi is WPA2 with WPA3 where the network offers both; a "
                    "WPA3-only network may not connect")
    table: dict[str, Any] = {}
    if "country" in wlan:
        table["country"] = network.country(seed, ("wlan", "country"), wlan["country"])
        b.where["wifi.country"] = seed.at(("wlan", "country"))
    elif boot.regdom is not None:
        table["country"] = boot.regdom.strip().upper()
        b.where["wifi.country"] = boot.where["regdom"]
    else:
        table["country"] = network.WORLD
        b.note(f"{seed.file}: wlan: no country given: the radio uses the world rules ({network.WORLD}), which "
               "allow fewer channels")
    table["ssid"] = ssid
    if seed.flag(("wlan", "hidden"), wlan.get("hidden", False)):
        table["hidden"] = True
    b.where["wifi"] = b.where["wifi.ssid"] = seed.at(where)
    for key in wlan:
        if key not in ("ssid", "ssid_hex", "password", "password_encrypted", "hidden", "country", "key_mgmt"):
            seed.ignore(("wlan", key))
    b.sources["wifi"] = seed.file
    if password is not None and _HEX_KEY.fullmatch(password):
        table["psk"] = password.lower()
        b.where["wifi.psk"] = seed.at(("wlan", "password"))
    elif not removed:
        table["passphrase"] = password or ""
        b.where["wifi.passphrase"] = seed.at(("wlan", "password"))
    b.data["wifi"] = table


def _locale(b: Builder, seed: Seed, locale: dict[str, Any]) -> None:
    for key, value in locale.items():
        here = ("locale", key)
        if key == "keymap":
            keyboard = seed.text(here, value)
            if locale.get("keymap_variant"):
                keyboard += f"({seed.text(('locale', 'keymap_variant'), locale['keymap_variant'])})"
            b.data["keyboard"], b.sources["keyboard"], b.where["keyboard"] = keyboard, seed.file, seed.at(here)
        elif key in ("timezone", "lang"):
            name = "locale" if key == "lang" else key
            b.data[name], b.sources[name], b.where[name] = seed.text(here, value), seed.file, seed.at(here)
        elif key == "locales":
            if any(x != locale.get("lang") for x in seed.items(here, value)):
                seed.ignore(here, "liveng makes only the locale it sets (lang)")
        elif key == "keymap_model":
            if value != "pc105":
                seed.ignore(here, "liveng's keyboard model is pc105")
        elif key == "keymap_variant" and "keymap" in locale:
            continue
        elif not (key == "keymap_options" and value == []):
            seed.ignore(here)
