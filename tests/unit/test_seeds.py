"""Seeds from Raspberry Pi Imager and cloud-init NoCloud, translated into liveng's settings (liveng.seeds).

The fixtures under data/seeds/ are written by hand in the exact shape Imager writes them (its
customization_generator.cpp for 2.x, OptionsPopup.qml for 1.8): every translation must pass settings.parse.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from liveng import configfiles, settings
from liveng.seeds import NoCloud, SeedError, Translation, decode, from_cloud_init, from_preseed, gather, merge, native

DATA = Path(__file__).parent / "data" / "seeds"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJcSWeJEDkPpgBEfCscFV2lnCSLf7HI5bt+D0dHPALOd me@laptop"
HASH = "$y$j9T$Ve0bzkdrXr3Wm5uWNb0PK/$nQFXboIT4XJ.iccfiOrPoy93CM4ep7tktvfhNGihny4"
# What Imager derives from the passphrase "correct horse battery staple" for HomeNet (checked below).
PSK = "55b39d90a2105b229568d5b9c38f4aa08198bff015e98afc8d16fe75759732a2"
PI = {"name": "pi", "password_hash": HASH, "ssh_keys": [KEY], "sudo": True, "sudo_nopasswd": True}
GROUPS_1_8 = ["users", "adm", "dialout", "audio", "netdev", "video", "plugdev", "cdrom", "games", "input", "gpio",
              "spi", "i2c", "render"]
HOME = {"country": "DE", "ssid": "HomeNet", "psk": PSK}
UD = "#cloud-config\n"


def starts(text: str) -> str:
    return "^" + re.escape(text)


def read(case: str, name: str) -> str | None:
    path = DATA / case / name
    return path.read_text() if path.exists() else None


def nocloud(case: str) -> Translation:
    return from_cloud_init(read(case, "user-data"), read(case, "network-config"), read(case, "meta-data"),
                           read(case, "cmdline.txt"))


def valid(t: Translation) -> settings.Settings:
    return settings.parse(t.data, "translated")


def test_fixture_psk_is_what_imager_derives() -> None:
    assert configfiles.wifi_psk("HomeNet", "correct horse battery staple") == PSK


# Fixtures: what each Imager version writes.

def test_imager_2x_user_form() -> None:
    t = nocloud("imager-2.x")
    assert t.data == {"hostname": "liveng-pi", "timezone": "Europe/Berlin", "keyboard": "de", "users": [PI],
                      "ssh": {"enabled": True, "password_authentication": False}, "wifi": HOME}
    # runcmd[1] and [2] write and chmod Imager's NOPASSWD sudoers file: liveng writes its own.
    assert t.ignored == ["user-data: apt", "user-data: packages"]
    assert t.instance_id == "rpi-imager-1755443964123"
    assert t.secrets == ["network-config: network.wifis.wlan0.access-points.HomeNet.password",
                         "user-data: user.passwd"]
    assert t.sources == {"hostname": "user-data", "timezone": "user-data", "keyboard": "user-data",
                         "users[0]": "user-data", "ssh": "user-data", "wifi": "network-config"}
    s = valid(t)
    assert s.users == (settings.User("pi", HASH, (KEY,), True, True),) and settings.ssh_wanted(s) is True
    assert s.wifi == settings.Wifi("DE", "HomeNet", psk=PSK)


def test_imager_1_8_users_list() -> None:
    t = nocloud("imager-1.8")
    # The country from cmdline.txt: 1.8 puts none in network-config.
    assert t.data == {"hostname": "liveng-pi", "timezone": "Europe/Berlin", "keyboard": "de",
                      "users": [{**PI, "groups": GROUPS_1_8}], "wifi": HOME}
    assert t.ignored == ["user-data: apt", "user-data: packages"]
    assert t.instance_id is None and len(t.digest) == 64  # 1.8 writes no meta-data
    assert settings.ssh_wanted(valid(t)) is True  # the key switches SSH on


def test_imager_2_0_8_users_list_enable_ssh_open_hidden_network() -> None:
    t = nocloud("imager-2.0.8")
    admin = {"name": "admin", "password_hash": HASH}  # 2.0.8 wrote no groups: no sudo (Imager issue 1601)
    assert t.data == {"hostname": "workshop-pi", "timezone": "Europe/London", "keyboard": "gb", "users": [admin],
                      "ssh": {"enabled": True, "password_authentication": True},
                      "wifi": {"country": "GB", "ssid": "Café Gäste", "passphrase": "", "hidden": True}}
    assert t.ignored == ["user-data: apt", "user-data: packages"]
    assert t.secrets == ["user-data: users[0].passwd"]
    assert valid(t).wifi == settings.Wifi("GB", "Café Gäste", "", True)


def test_rpi_preseed() -> None:
    t = from_preseed(read("preseed", "rpi-preseed.toml") or "", read("preseed", "cmdline.txt"))
    assert t.data == {"hostname": "liveng-pi", "timezone": "Europe/Berlin", "keyboard": "de", "users": [PI],
                      "ssh": {"enabled": True, "password_authentication": False}, "wifi": HOME}
    assert t.ignored == []
    assert t.secrets == ["rpi-preseed.toml: user.password", "rpi-preseed.toml: wlan.password"]
    assert t.secret_paths == [("rpi-preseed.toml", ("user", "password")), ("rpi-preseed.toml", ("wlan", "password"))]
    assert t.instance_id is None
    valid(t)


def test_cloud_localds_seed_with_extras() -> None:
    t = nocloud("cidata")
    rsa = (DATA / "cidata" / "user-data").read_text().split(">-\n", 1)[1].split("\n", 1)[0].strip()
    admin = {"name": "admin", "sudo": True, "sudo_nopasswd": True, "groups": ["video"],
             "password_hash": "$6$rounds=4096$q7NwT3aVbXk2Lm9z$U5MdmWHRQhW2Gs/tYbj9zOb5vZxIiebfxw9PgQ1atr0R0yE8DYeSjmu"
                              "NAIwqTaEyOwRUXvf70hiVKetSMRgiS0",
             "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAQvTsRQkd8UQlt13yI0MJYkS55IOLHWvaDr2MDg4QvN "
                          "admin@example", rsa]}
    kiosk = {"name": "kiosk", "password_hash": "$6$Hc4mJ0pZtR8sWx1e$Yjg3Nm455zzwOxyAjzol.4b4ZsAaBiLlF310zHjCPSi8sc3A9Za"
             "FzkFMl14/E53sX/IMaDLRD7f5mgx33pkZH/"}
    assert t.data == {"hostname": "kiosk-7", "locale": "de_DE.UTF-8", "timezone": "Europe/Berlin",
                      "keyboard": "de(nodeadkeys)", "users": [admin, kiosk],
                      "ssh": {"enabled": True, "password_authentication": False},
                      "wifi": {"country": "DE", "ssid": "Office Net", "passphrase": "correct horse battery staple"}}
    assert t.ignored == [
        "network-config: ethernets.eth0.addresses", "network-config: ethernets.eth0.dhcp4",
        "network-config: ethernets.eth0.nameservers", "network-config: ethernets.eth0.routes",
        "user-data: bootcmd", "user-data: final_message", "user-data: fqdn", "user-data: package_update",
        "user-data: packages", "user-data: runcmd[1]", "user-data: runcmd[2]", "user-data: users[0]",
        "user-data: users[1].gecos", "user-data: users[2].ssh_import_id", "user-data: write_files"]
    assert t.secrets == ['network-config: wifis.wlan0.access-points."Office Net".password',
                         "user-data: chpasswd.users[0].password", "user-data: users[1].hashed_passwd"]
    assert t.instance_id == "kiosk-7-2024-05-01"
    assert len(valid(t).users) == 2


# user-data: choices and errors.

def ud(text: str, **kwargs: Any) -> Translation:
    return from_cloud_init(UD + text, **kwargs)


@pytest.mark.parametrize(("text", "what"), [
    ("#!/bin/sh\necho hi\n", "a shell script"), ("## template: jinja\n#cloud-config\n", "a Jinja template"),
    ("Content-Type: multipart/mixed\n", "a MIME multi-part message"), ("#include\nhttp://x\n", "an #include list")])
def test_other_user_data_types_are_refused(text: str, what: str) -> None:
    with pytest.raises(SeedError, match=starts(f"/boot/firmware/user-data:1: {what} is not supported")) as err:
        from_cloud_init(text, prefix="/boot/firmware/")
    assert "use an image with real cloud-init" in str(err.value)


def test_user_data_needs_its_header_and_a_mapping() -> None:
    with pytest.raises(SeedError, match=starts("user-data:1: user-data must start with the line '#cloud-config'")):
        from_cloud_init("hostname: x\n")
    with pytest.raises(SeedError, match=starts("user-data:2: the cloud-config is not a mapping")):
        from_cloud_init(UD + "- a\n")
    assert from_cloud_init("").data == {} and from_cloud_init(UD).data == {}


@pytest.mark.parametrize(("text", "where"), [
    ("hostname: bad_host\n", "user-data:2: hostname: 'bad_host' is not a valid host name"),
    ("users:\n- name: pi\n- name: Bob\n", "user-data:4: users[1].name: 'Bob' is not a valid user name"),
    ("users:\n- default\n- Bob\n", "user-data:4: users[1]: 'Bob' is not a valid user name"),
    ("user:\n  name: pi\n  ssh_authorized_keys: [ssh-ed25519 AAAA, 'not a key']\n",
     "user-data:4: user.ssh_authorized_keys[1]: 'not a key' is not an OpenSSH public key line"),
    # A "hash" that is not one may be the password itself: liveng's settings never repeat it.
    ("users:\n- name: pi\n  lock_passwd: false\n  passwd: secret\n", "user-data:5: users[0].passwd: the value (not "
     "shown: it may be a password) is not a crypt(3) hash"),
    ("timezone: Europe/Ber lin\n", "user-data:2: timezone:"), ("ssh_pwauth: maybe\n", "user-data:2: ssh_pwauth: must"),
    ("users: pi, bob\n", "user-data:2: users: must be a list"),
])
def test_values_liveng_refuses_are_reported_at_their_line(text: str, where: str) -> None:
    with pytest.raises(SeedError) as err:
        ud(text)
    assert str(err.value).startswith(where)
    assert "secret" not in str(err.value)


def test_passwords_locked_plain_and_chpasswd() -> None:
    t = ud(f"users:\n- name: a\n  passwd: '{HASH}'\n- name: b\n  plain_text_passwd: pw\n- c\n"
           f"chpasswd:\n  list: |\n    c:{HASH}\n    root:{HASH}\n    b:pw2\n    nobody:{HASH}\n")
    assert t.data["users"] == [{"name": "a"}, {"name": "b"}, {"name": "c", "password_hash": HASH},
                               {"name": "root", "password_hash": HASH}]
    assert t.ignored == ["user-data: chpasswd.expire", "user-data: chpasswd.list", "user-data: users[0].passwd",
                         "user-data: users[1].plain_text_passwd"]
    assert t.secrets == ["user-data: chpasswd.list", "user-data: users[0].passwd",
                         "user-data: users[1].plain_text_passwd"]
    valid(t)


def test_sudo_rules_groups_and_key_options() -> None:
    t = ud("users:\n- name: a\n  sudo: 'ALL=(ALL:ALL) ALL'\n- name: b\n  sudo: 'ALL=(ALL) /usr/bin/apt'\n"
           f"  groups: [video]\n- name: c\n  groups: 'adm, sudo'\n  shell: /bin/zsh\n"
           f"  ssh_authorized_keys: ['no-pty,command=\"x\" {KEY}', '{KEY}']\n")
    assert t.data["users"] == [{"name": "a", "sudo": True}, {"name": "b", "groups": ["video"]},
                               {"name": "c", "groups": ["adm"], "sudo": True, "ssh_keys": [KEY]}]
    assert t.ignored == ["user-data: users[1].sudo", "user-data: users[2].shell",
                         "user-data: users[2].ssh_authorized_keys[0]"]


def test_default_user_form() -> None:
    t = ud(f"user: pi\nssh_authorized_keys: ['{KEY}']\nusers: [default, {{name: x, groups: [sudo]}}]\n")
    assert t.data["users"] == [{"name": "pi", "sudo": True, "ssh_keys": [KEY]}, {"name": "x", "sudo": True}]
    assert ud("user:\n  name: pi\n  groups: [video]\n").data["users"] == [{"name": "pi", "groups": ["video"]}]
    assert ud(f"ssh_authorized_keys: ['{KEY}']\n").ignored == ["user-data: ssh_authorized_keys"]


@pytest.mark.parametrize(("text", "ssh", "ignored"), [
    ("runcmd:\n- systemctl enable ssh && systemctl start ssh\n- service ssh restart\n", {"enabled": True}, []),
    ("runcmd:\n- [systemctl, enable, --now, ssh, nginx]\n- systemctl enable ssh > /dev/null\n", None,
     ["user-data: runcmd[0]", "user-data: runcmd[1]"]),
    ("ssh_pwauth: unchanged\nenable_ssh: false\n", {"enabled": False}, []),
    ("ssh_pwauth: 'yes'\n", {"enabled": True, "password_authentication": True}, []),
])
def test_ssh(text: str, ssh: dict[str, bool] | None, ignored: list[str]) -> None:
    t = ud(text)
    assert t.data.get("ssh") == ssh and t.ignored == ignored


def test_keyboard_from_runcmd_or_key() -> None:
    t = ud("runcmd:\n- localectl set-x11-keymap de pc105 nodeadkeys\n- setupcon -k --force || true\n")
    assert t.data == {"keyboard": "de(nodeadkeys)"} and t.ignored == []
    t = ud("keyboard: {layout: fr, model: pc104, options: 'ctrl:nocaps'}\nruncmd:\n- localectl set-x11-keymap de\n")
    assert t.data == {"keyboard": "fr"}
    assert t.ignored == ["user-data: keyboard.model", "user-data: keyboard.options", "user-data: runcmd[0]"]
    assert ud("keyboard: {layout: 'us,de'}\n").ignored == ["user-data: keyboard"]


def test_hostname_sources() -> None:
    assert ud("fqdn: Kiosk.Example.org\n").data == {"hostname": "kiosk"}
    assert ud("hostname: a\npreserve_hostname: true\n").ignored == ["user-data: hostname"]
    t = from_cloud_init(None, None, "instance-id: i-1\nlocal-hostname: from-meta\npublic-keys: [k]\n")
    assert t.data == {"hostname": "from-meta"} and t.instance_id == "i-1" and t.ignored == ["meta-data: public-keys"]
    t = from_cloud_init(UD, cmdline="quiet ds=nocloud;h=from-cmdline;i=iid-7")
    assert t.data == {"hostname": "from-cmdline"} and t.instance_id == "iid-7"


# network-config.

def net(text: str, cmdline: str | None = None) -> Translation:
    return from_cloud_init(None, text, None, cmdline)


def test_network_country_from_cmdline_or_world_rules() -> None:
    t = net('version: 2\nwifis:\n  w:\n    access-points:\n      "N": {password: "12345678"}\n',
            "cfg80211.ieee80211_regdom=gb")
    assert t.data == {"wifi": {"country": "GB", "ssid": "N", "passphrase": "12345678"}}
    t = net('version: 2\nwifis:\n  w:\n    access-points:\n      "N": {}\n')
    assert t.data["wifi"] == {"country": "00", "ssid": "N", "passphrase": ""} and "world rules" in t.notes[0]
    valid(t)


def test_network_imager_escaped_ssid_and_more_networks() -> None:
    t = net('network:\n  version: 2\n  wifis:\n    wlan0:\n      regulatory-domain: "FR"\n      access-points:\n'
            '        "Caf\\xc3\\xa9":\n          password: "passphrase"\n        "Second": {}\n'
            '      addresses: [10.0.0.2/24]\n  bonds: {}\n')
    assert t.data["wifi"] == {"country": "FR", "ssid": "Café", "passphrase": "passphrase"}
    assert t.ignored == ["network-config: network.bonds", "network-config: network.wifis.wlan0.access-points.Second",
                         "network-config: network.wifis.wlan0.addresses"]


def test_network_auth_forms() -> None:
    base = "version: 2\nwifis:\n  w:\n    regulatory-domain: DE\n    access-points:\n      N:\n"
    t = net(base + "        auth: {key-management: sae, password: 'long enough'}\n")
    assert t.data["wifi"]["passphrase"] == "long enough"
    assert t.ignored == ["network-config: wifis.w.access-points.N.auth.key-management"]
    t = net(base + "        auth: {key-management: eap, method: peap, identity: me, password: pw}\n")
    assert "wifi" not in t.data and t.ignored == ["network-config: wifis.w.access-points.N"]
    assert t.secrets == ["network-config: wifis.w.access-points.N.auth.password"]
    t = net(base + "        password: x\n        auth: {key-management: none}\n")
    assert t.data["wifi"]["passphrase"] == "" and t.ignored == ["network-config: wifis.w.access-points.N.password"]
    with pytest.raises(SeedError, match=r"^network-config:7: wifis.w.access-points.N.password: YAML reads this "):
        net(base + "        password: 12345678\n")
    with pytest.raises(SeedError, match=r"^network-config:7: wifis.w.access-points.N.password: must be 8 to 63"):
        net(base + "        password: short\n")


def test_network_versions() -> None:
    assert net("network:\n  version: 1\n  config: []\n").ignored == ["network-config: network.config"]
    with pytest.raises(SeedError, match=starts("network-config: version: must be 2")):
        net("ethernets: {}\n")


# rpi-preseed.toml.

def preseed(text: str, cmdline: str | None = None) -> Translation:
    return from_preseed('config_version = "1.1"\n' + text, cmdline)


def test_preseed_plain_password_open_network_locale() -> None:
    t = preseed('[user]\nname = "alice"\npassword = "changeme"\ngroups = ["sudo", "gpio"]\n'
                '[wlan]\nssid = "Open"\n[locale]\nkeymap = "de"\nkeymap_variant = "nodeadkeys"\nlang = "de_DE.UTF-8"\n'
                'locales = ["de_DE.UTF-8", "en_GB.UTF-8"]\nkeymap_model = "pc105"\nlc_time = "en_GB.UTF-8"\n'
                '[connect]\nenabled = true\nmode = "token"\ntoken = "t"\n', "cfg80211.ieee80211_regdom=AT")
    assert t.data == {"users": [{"name": "alice", "sudo": True, "groups": ["gpio"]}], "keyboard": "de(nodeadkeys)",
                      "locale": "de_DE.UTF-8", "wifi": {"country": "AT", "ssid": "Open", "passphrase": ""}}
    assert t.ignored == ["rpi-preseed.toml: connect", "rpi-preseed.toml: locale.lc_time",
                         "rpi-preseed.toml: locale.locales", "rpi-preseed.toml: user.password"]
    assert t.secrets == ["rpi-preseed.toml: connect.token", "rpi-preseed.toml: user.password"]
    valid(t)


def test_preseed_wlan_forms() -> None:
    t = preseed('[wlan]\nssid_hex = "436166c3a9"\npassword = "passphrase"\ncountry = "fr"\nkey_mgmt = "sae"\n')
    assert t.data == {"wifi": {"country": "FR", "ssid": "Café", "passphrase": "passphrase"}}
    assert t.ignored == ["rpi-preseed.toml: wlan.key_mgmt"]
    assert preseed('[wlan]\nssid = "x"\nkey_mgmt = "owe"\n').ignored == ["rpi-preseed.toml: wlan"]
    assert preseed('[wlan]\nssid_hex = "ff00"\n').ignored == ["rpi-preseed.toml: wlan"]
    with pytest.raises(SeedError, match=starts("rpi-preseed.toml: wlan.password: an open network")):
        preseed('[wlan]\nssid = "x"\nkey_mgmt = "none"\npassword = "12345678"\n')


def test_preseed_without_user_name_and_errors() -> None:
    t = preseed(f'[user]\npassword = "{HASH}"\npassword_encrypted = true\n[ssh]\nauthorized_keys = ["{KEY}"]\n')
    assert t.data == {"ssh": {"enabled": True}}
    assert t.ignored == ["rpi-preseed.toml: ssh.authorized_keys", "rpi-preseed.toml: user.password",
                         "rpi-preseed.toml: user.password_encrypted"]
    for text, message in [("", "config_version: is missing"),
                          ('config_version = "2.0"', "config_version: '2.0': liveng reads rpi-preseed version 1.x"),
                          ("config_version = ", "not valid TOML"),
                          ('config_version = "1.0"\n[system]\nhostname = "No_Good.lan"', "system.hostname: 'no_good' "
                           "is not a valid host name")]:
        with pytest.raises(SeedError, match=starts(f"/boot/firmware/rpi-preseed.toml: {message}")):
            from_preseed(text, path="/boot/firmware/rpi-preseed.toml")


# Several sources.

def test_gather_precedence_and_sources() -> None:
    t = gather(preseed='config_version = "1.0"\n[system]\nhostname = "from-preseed"\n[user]\nname = "pi"\n',
               p1=NoCloud(UD + "hostname: from-p1\ntimezone: Europe/Paris\nusers: [pi, bob]\n", None,
                          "instance-id: p1-id\n", prefix="/boot/firmware/"),
               seed_disk=NoCloud(UD + "timezone: UTC\nlocale: C.UTF-8\npackages: [x]\n",
                                 "version: 2\nwifis: {w: {access-points: {N: {password: 'a passphrase'}}}}\n",
                                 "instance-id: disk-id\n", prefix="CIDATA:"),
               cmdline="cfg80211.ieee80211_regdom=NL ds=nocloud;i=p1-id")
    assert t.data == {"hostname": "from-preseed", "timezone": "Europe/Paris", "locale": "C.UTF-8",
                      "users": [{"name": "pi"}, {"name": "bob"}],
                      "wifi": {"country": "NL", "ssid": "N", "passphrase": "a passphrase"}}
    assert t.sources == {"hostname": "rpi-preseed.toml", "timezone": "/boot/firmware/user-data",
                         "locale": "CIDATA:user-data", "users[0]": "rpi-preseed.toml",
                         "users[1]": "/boot/firmware/user-data", "wifi": "CIDATA:network-config"}
    assert t.ignored == ["CIDATA:user-data: packages"] and t.instance_id == "p1-id"
    valid(t)


def test_merge_native_first() -> None:
    mine = native({"hostname": "mine", "users": [{"name": "pi", "sudo": True}]}, "liveng-settings.toml")
    seed = nocloud("imager-2.x")
    disk = net("version: 2\nwifis: {w: {regulatory-domain: DE, access-points: {Other: {}}}}\n")
    t = merge([mine, seed, disk])
    assert t.data["hostname"] == "mine" and t.data["users"] == [{"name": "pi", "sudo": True}]
    assert t.data["wifi"] == HOME and t.sources["wifi"] == "network-config"
    assert t.sources["users[0]"] == "liveng-settings.toml" and t.sources["keyboard"] == "user-data"
    assert t.digest != merge([seed]).digest
    valid(t)


# Reading the files.

def test_decode() -> None:
    assert decode(b"\xef\xbb\xbf#cloud-config\n", "user-data") == "#cloud-config\n"
    with pytest.raises(SeedError, match=starts("user-data: not UTF-8 text")):
        decode(b"a: \xff\n", "user-data")
    with pytest.raises(SeedError, match=starts("user-data: gzip-compressed")):
        decode(b"\x1f\x8b\x08\x00", "user-data")


def test_the_package_stays_within_the_standard_library() -> None:
    # It is installed in the image with the device tool: the standard library and liveng's shared modules only.
    package = Path(__file__).resolve().parents[2] / "liveng" / "seeds"
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top == "__future__" or name in (
                    "liveng", "liveng.settings") or name.startswith("liveng.seeds"), f"{path.name} imports {name}"


def test_a_country_without_a_network() -> None:
    """Imager puts the country on cmdline.txt alone when the customisation names no network."""
    t = from_cloud_init(UD + "hostname: a\n", None, "instance-id: i\n", "quiet cfg80211.ieee80211_regdom=gb")
    assert t.data["wifi"] == {"country": "GB"} and t.sources["wifi"] == "cmdline.txt"
    assert valid(t).wifi == settings.Wifi("GB", None)
    assert preseed('[wlan]\ncountry = "fr"\nhidden = false\n').data["wifi"] == {"country": "FR"}
    assert preseed("", "cfg80211.ieee80211_regdom=AT").data["wifi"] == {"country": "AT"}
    # A lower source's network is still joined, under the higher source's country.
    network = f"version: 2\nwifis: {{w: {{regulatory-domain: DE, access-points: {{N: {{password: '{PSK}'}}}}}}}}\n"
    t = merge([preseed("", "cfg80211.ieee80211_regdom=AT"), net(network)])
    assert t.data["wifi"] == {"country": "AT", "ssid": "N", "psk": PSK}
