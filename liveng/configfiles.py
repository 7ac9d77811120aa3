"""What a setting becomes in the system: the files' paths (relative to the root) and contents.

Standard library only, shared by the host (the recipe's settings, baked in at build time by
liveng/host/customize.py) and the device (p1's file, applied by liveng/device/firstboot.py), so that
a setting writes the same files whichever side applies it.
"""

from __future__ import annotations

import hashlib
import re

from liveng.settings import KEYBOARD_RE, SettingsError, Wifi

# The configuration files a setting becomes; paths relative to the root of the system.

HOSTNAME_PATH = "etc/hostname"
HOSTS_PATH = "etc/hosts"
TIMEZONE_PATH = "etc/timezone"
LOCALTIME_PATH = "etc/localtime"
ZONEINFO_DIR = "usr/share/zoneinfo"
LOCALE_PATH = "etc/default/locale"
LOCALE_GEN_PATH = "etc/locale.gen"
SUPPORTED_LOCALES_PATH = "usr/share/i18n/SUPPORTED"
KEYBOARD_PATH = "etc/default/keyboard"
# One wpa_supplicant configuration for every Wi-Fi interface, whatever its name (wlan0 on the Pi,
# wlx<MAC> for a USB stick): a drop-in points Debian's wpa_supplicant@.service at it.
WIFI_CONF_PATH = "etc/wpa_supplicant/liveng-wifi.conf"
SSHD_DROPIN_PATH = "etc/ssh/sshd_config.d/liveng.conf"
# The Wi-Fi country as the kernel's regulatory domain when cfg80211 loads (wpa_supplicant's country= sets it
# again when it starts): the Pi's firmware puts cmdline.txt's cfg80211.ieee80211_regdom= on the kernel command
# line, but liveng boots through U-Boot and GRUB, which never read cmdline.txt.
REGDOM_PATH = "etc/modprobe.d/liveng-wifi-country.conf"
SUDOERS_DIR = "etc/sudoers.d"
SSH_UNIT = "ssh.service"
# What `systemctl enable ssh.service` links: the unit into multi-user.target and its alias sshd.service.
SSH_ENABLED_LINKS = ("etc/systemd/system/multi-user.target.wants/ssh.service", "etc/systemd/system/sshd.service")


def hosts_text(old: str | None, name: str) -> str:
    """/etc/hosts with ``name`` on 127.0.1.1 (Debian's place for the host name); other lines kept."""
    if old is None:
        return (f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n\n"
                "::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n")
    lines = old.splitlines()
    for i, line in enumerate(lines):
        if line.split()[:1] == ["127.0.1.1"]:
            lines[i] = f"127.0.1.1\t{name}"
            break
    else:
        at = next((i + 1 for i, line in enumerate(lines) if line.split()[:1] == ["127.0.0.1"]), 0)
        lines.insert(at, f"127.0.1.1\t{name}")
    return "\n".join(lines) + "\n"


def locale_text(locale: str) -> str:
    return f"# Written by liveng from its settings.\nLANG={locale}\n"


def keyboard_text(keyboard: str) -> str:
    m = KEYBOARD_RE.fullmatch(keyboard)
    if not m:
        raise SettingsError(f"keyboard {keyboard!r} is not an XKB layout")
    layout, variant = m.group(1), m.group(3) or ""
    # The format of keyboard-configuration (console-setup reads it; so do X and Wayland sessions).
    return (f'# Written by liveng from its settings; see keyboard(5).\nXKBMODEL="pc105"\nXKBLAYOUT="{layout}"\n'
            f'XKBVARIANT="{variant}"\nXKBOPTIONS=""\n\nBACKSPACE="guess"\n')


def regdom_text(country: str) -> str:
    return f"# Written by liveng from its settings (wifi.country).\noptions cfg80211 ieee80211_regdom={country}\n"


def nopasswd_path(user: str) -> str:
    """The sudoers drop-in of a user with sudo_nopasswd (user names have no '.', which sudo would skip)."""
    return f"{SUDOERS_DIR}/liveng-nopasswd-{user}"


def nopasswd_text(user: str) -> str:
    return f"# Written by liveng from its settings (sudo_nopasswd).\n{user} ALL=(ALL:ALL) NOPASSWD: ALL\n"


def wifi_key(wifi: Wifi) -> str | None:
    """The WPA key the settings give (the psk itself, or derived from the passphrase); None: open or not given."""
    if wifi.psk is not None:
        return wifi.psk
    return wifi_psk(wifi.ssid, wifi.passphrase) if wifi.passphrase and wifi.ssid is not None else None


def wifi_psk(ssid: str, passphrase: str) -> str:
    """WPA's pre-shared key (what wpa_passphrase prints): the passphrase itself is not stored."""
    return hashlib.pbkdf2_hmac("sha1", passphrase.encode(), ssid.encode(), 4096, 32).hex()


def wifi_text(wifi: Wifi, psk: str | None) -> str:
    """wpa_supplicant's configuration. ``psk``: 64 hex digits, or None for an open network (or none at all:
    a Wifi without ssid gives the country only)."""
    lines = ["# Written by liveng from its settings. The passphrase is stored only as its WPA key.",
             "ctrl_interface=DIR=/run/wpa_supplicant GROUP=netdev", "update_config=0", f"country={wifi.country}"]
    if wifi.ssid is None:
        return "\n".join(lines) + "\n"
    lines += ["", "network={",
             # Hex: any network name, quotes and all, without escaping rules.
             f"\tssid={wifi.ssid.encode().hex()}"]
    if wifi.hidden:
        lines.append("\tscan_ssid=1")
    if psk is None:
        lines.append("\tkey_mgmt=NONE")
    else:
        # WPA2 personal, and WPA3 (SAE) where the driver and the network have it.
        lines += ["\tkey_mgmt=WPA-PSK WPA-PSK-SHA256 SAE", "\tieee80211w=1", f"\tpsk={psk}"]
    lines.append("}")
    return "\n".join(lines) + "\n"


_PSK_LINE = re.compile(r"^\s*psk=([0-9a-f]{64})\s*$", re.M)
_SSID_LINE = re.compile(r"^\s*ssid=([0-9a-f]+)\s*$", re.M)


_COUNTRY_LINE = re.compile(r"^country=.*$", re.M)


def with_country(conf: str, country: str) -> str:
    """A configuration written by wifi_text with another country, its network kept."""
    return _COUNTRY_LINE.sub(f"country={country}", conf, count=1)


def existing_psk(conf: str, ssid: str) -> str | None:
    """The key a configuration written by wifi_text holds for ``ssid``, if it is that network's."""
    s, p = _SSID_LINE.search(conf), _PSK_LINE.search(conf)
    if s and p and s.group(1) == ssid.encode().hex():
        return p.group(1)
    return None


def sshd_text(password_authentication: bool) -> str:
    pw = "yes" if password_authentication else "no"
    return ("# Written by liveng. Root never logs in with a password over SSH (keys only); other users\n"
            "# with a password only when the settings say ssh.password_authentication = true.\n"
            f"PermitRootLogin prohibit-password\nPasswordAuthentication {pw}\nKbdInteractiveAuthentication no\n"
            "PermitEmptyPasswords no\n")


def locale_gen_text(old: str, line: str) -> str:
    """/etc/locale.gen with ``line`` (as in SUPPORTED: "de_DE.UTF-8 UTF-8") enabled."""
    lines = old.splitlines()
    for i, current in enumerate(lines):
        if current.lstrip("# ").strip() == line:
            lines[i] = line
            break
    else:
        lines.append(line)
    return "\n".join(lines) + "\n"


def locale_available_name(locale: str) -> str:
    """How `locale -a` lists a locale: de_DE.UTF-8 -> de_DE.utf8."""
    name, dot, rest = locale.partition(".")
    if not dot:
        return locale
    codeset, at, modifier = rest.partition("@")
    return f"{name}.{codeset.lower().replace('-', '')}{at}{modifier}"
