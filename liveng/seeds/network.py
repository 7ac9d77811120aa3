"""NoCloud's network-config (netplan version 2, as cloud-init passes it on) and the kernel command line
Raspberry Pi Imager appends to (``cfg80211.ieee80211_regdom=XX``, ``ds=nocloud;i=ID``), in liveng's terms.

liveng joins one Wi-Fi network and does DHCP (IPv4 and IPv6) on every wired and Wi-Fi interface, whatever
its name; so an interface name is no setting, DHCP switched on is what liveng does anyway, and anything
else (static addresses, routes, a second network) is ignored, and said so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from liveng.seeds.common import REMOVED, Builder, Path, Seed, Where, dotted

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_ENTERPRISE = ("eap", "eap-sha256", "eap-suite-b-192", "802.1x")
_SILENT_DHCP = ("dhcp4", "dhcp6")
# The world regulatory domain: what the kernel uses when told nothing, legal everywhere (fewer channels).
WORLD = "00"


@dataclass
class Kernel:
    """What the kernel command line says to a seed; ``where`` locates each value for messages."""

    regdom: str | None = None
    instance_id: str | None = None
    hostname: str | None = None
    where: dict[str, Where] = field(default_factory=dict)
    relevant: list[str] = field(default_factory=list)  # the arguments that matter, for the seed's digest


def kernel(cmdline: str | None, file: str) -> Kernel:
    out = Kernel()
    for arg in (cmdline or "").split():
        if arg.startswith("cfg80211.ieee80211_regdom="):
            out.regdom = arg.partition("=")[2]
            out.where["regdom"] = (file, None, "cfg80211.ieee80211_regdom")
            out.relevant.append(arg)
        elif arg.startswith(("ds=nocloud;", "ds=nocloud-net;")):
            out.relevant.append(arg)
            for item in arg.split(";")[1:]:
                key, _, value = item.partition("=")
                if key in ("i", "instance-id"):
                    out.instance_id = value
                elif key in ("h", "local-hostname"):
                    out.hostname = value
                    out.where["hostname"] = (file, None, f"ds=nocloud;{key}")
    return out


def country_only(b: Builder, boot: Kernel) -> None:
    """Without a Wi-Fi network, cmdline.txt's regulatory domain is the country alone (Imager writes it so when the
    customisation names a country but no network)."""
    if "wifi" not in b.data and boot.regdom is not None:
        b.data["wifi"] = {"country": boot.regdom.strip().upper()}
        b.sources["wifi"] = boot.where["regdom"][0]
        b.where["wifi"] = b.where["wifi.country"] = boot.where["regdom"]


def country(seed: Seed, path: Path, value: Any) -> str:
    # Imager writes the code as the user picked it, also in lower case on the kernel command line.
    return seed.text(path, value).strip().upper()


def translate(b: Builder, seed: Seed, root: Any, boot: Kernel) -> None:
    """network-config: the Wi-Fi network goes to ``wifi``, the rest is ignored."""
    if root is None:
        return
    net = seed.table((), root)
    base: Path = ()
    if "network" in net:
        for key in net:
            if key != "network":
                seed.ignore((key,))
        net = seed.table(("network",), net["network"])
        base = ("network",)
    version = net.get("version")
    if version == 1:
        for key in net:
            if key != "version":
                seed.ignore((*base, key), "network-config version 1 has no Wi-Fi; liveng does DHCP on every wired "
                            "interface")
        return
    if version != 2:
        raise seed.fail((*base, "version"), "must be 2 (netplan's format, which Raspberry Pi Imager writes) or 1")
    for key, value in net.items():
        path = (*base, key)
        if key in ("version", "renderer"):
            continue  # liveng has one renderer (systemd-networkd with wpa_supplicant)
        if key == "ethernets":
            _ethernets(seed, path, value)
        elif key == "wifis":
            _wifis(b, seed, path, value, boot)
        else:
            seed.ignore(path)


def _dhcp_only(seed: Seed, path: Path, config: dict[str, Any], extra: tuple[str, ...]) -> None:
    for key, value in config.items():
        if (key in _SILENT_DHCP and value is True) or key == "optional" or key in extra:
            continue
        seed.ignore((*path, key), "liveng does DHCP on every interface" if key in _SILENT_DHCP else None)


def _ethernets(seed: Seed, path: Path, value: Any) -> None:
    for name, config in seed.table(path, value).items():
        _dhcp_only(seed, (*path, name), seed.table((*path, name), config or {}), ())


def _wifis(b: Builder, seed: Seed, path: Path, value: Any, boot: Kernel) -> None:
    chosen = False
    for name, config in seed.table(path, value).items():
        here = (*path, name)
        if name == "renderer" and isinstance(config, str):
            continue  # Raspberry Pi Imager 1.8 writes the renderer inside wifis; it chooses nothing here
        config = seed.table(here, config or {})
        _dhcp_only(seed, here, config, ("regulatory-domain", "access-points"))
        points = seed.table((*here, "access-points"), config.get("access-points") or {})
        for ssid, point in points.items():
            ap = (*here, "access-points", ssid)
            if chosen:
                seed.ignore(ap, "liveng joins one Wi-Fi network: the first one given")
                continue
            chosen = _access_point(b, seed, ap, ssid, point, config, boot)


def _access_point(b: Builder, seed: Seed, path: Path, ssid: str, point: Any, interface: dict[str, Any],
                  boot: Kernel) -> bool:
    """One network; False if liveng cannot join it (it is then ignored whole)."""
    point = seed.table(path, point or {})
    auth = seed.table((*path, "auth"), point.get("auth") or {})
    password_path: Path | None = None
    password: Any = None
    for holder, where in ((point, (*path, "password")), (auth, (*path, "auth", "password"))):
        if "password" in holder:
            seed.secret(where)  # also for a network liveng cannot join: the caller removes it all the same
            password_path, password = where, holder["password"]
    method = auth.get("key-management")
    if method in _ENTERPRISE or point.get("mode", "infrastructure") != "infrastructure":
        why = "enterprise (EAP) networks" if method in _ENTERPRISE else f"mode {point.get('mode')!r}"
        seed.ignore(path, f"liveng's settings do not cover {why}")
        return False
    if password_path is not None and password == REMOVED:
        password_path = password = None  # applied before: the device joins with the key it kept
        removed = True
    else:
        removed = False
    if password_path is not None:
        if isinstance(password, int | float) and not isinstance(password, bool):
            raise seed.fail(password_path, "YAML reads this password as a number: put it in quotes")
        password = seed.text(password_path, password)
    if method not in (None, "none", "psk", "sae"):
        raise seed.fail((*path, "auth", "key-management"), f"{method!r} is not a key management netplan knows")
    if method == "none" and removed:
        removed = False
    if method == "none" and password_path is not None:
        seed.ignore(password_path, "the network is open (key-management: none)")
        password = None
    if method == "sae":
        seed.ignore((*path, "auth", "key-management"), "liveng's Wi-Fi is WPA2 with WPA3 where the network offers "
                    "both; a WPA3-only network may not connect")
    for key in auth:
        if key not in ("key-management", "password"):
            seed.ignore((*path, "auth", key))
    for key in point:
        if key not in ("password", "hidden", "auth", "mode"):
            seed.ignore((*path, key))
    hidden = seed.flag((*path, "hidden"), point["hidden"]) if "hidden" in point else False

    regdom_path = (*path[:-2], "regulatory-domain")
    table: dict[str, Any] = {}
    if "regulatory-domain" in interface:
        table["country"] = country(seed, regdom_path, interface["regulatory-domain"])
        b.where["wifi.country"] = seed.at(regdom_path)
    elif boot.regdom is not None:
        table["country"] = boot.regdom.strip().upper()
        b.where["wifi.country"] = boot.where["regdom"]
    else:
        table["country"] = WORLD
        b.note(f"{seed.file}: {dotted(path)}: no country given (regulatory-domain, or cfg80211.ieee80211_regdom= "
               f"in cmdline.txt): the radio uses the world rules ({WORLD}), which allow fewer channels")
    table["ssid"] = imager_ssid(ssid)
    if hidden:
        table["hidden"] = True
    b.where["wifi"] = b.where["wifi.ssid"] = b.where["wifi.hidden"] = seed.at(path)
    if password_path is not None and password is not None and _HEX_KEY.fullmatch(password):
        table["psk"] = password.lower()  # Raspberry Pi Imager writes the key, derived from the passphrase
        b.where["wifi.psk"] = seed.at(password_path)
    elif not removed:
        table["passphrase"] = password or ""
        if password_path is not None:
            b.where["wifi.passphrase"] = seed.at(password_path)
    b.data["wifi"] = table
    b.sources["wifi"] = seed.file
    return True


def imager_ssid(ssid: str) -> str:
    """The network name Raspberry Pi Imager meant.

    Imager 2.0.10 on writes each byte of a non-ASCII SSID as a ``\\xHH`` escape in a double-quoted YAML string; YAML
    reads each escape as one character (U+0080-U+00FF), not as a byte, so "Café" arrives as "CafÃ©". When every
    character is below U+0100 and, read as bytes, they are UTF-8, that is what was meant. (A real name made
    only of such characters that also happens to be valid UTF-8 as bytes is all but impossible.)
    """
    if any(ord(ch) > 0x7F for ch in ssid) and all(ord(ch) < 0x100 for ch in ssid):
        try:
            return ssid.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            return ssid
    return ssid
