"""The settings schema (recipe and p1 file), removing secrets, and the files the settings become."""

from __future__ import annotations

import hashlib
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from liveng import configfiles, settings
from liveng.host import recipe
from liveng.host.errors import RecipeError
from liveng.settings import SettingsError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRlc3RrZXl0ZXN0a2V5dGVzdGtleXRlc3RrZXk me@host"
FULL = f"""
hostname = "kiosk-1"
timezone = "Europe/Berlin"
locale = "de_DE.UTF-8"
keyboard = "de(nodeadkeys)"

# the owner's own comment
[[users]]
name = "pi"
password_hash = "$y$j9T$abc$def"
ssh_keys = ["{KEY}"]
sudo = true

[ssh]
enabled = true
password_authentication = false

[wifi]
country = "DE"
ssid = "My \\"Net\\""
passphrase = "correct horse"
hidden = true
"""


def test_full_file() -> None:
    s = settings.loads(FULL, "p1.toml")
    assert s.hostname == "kiosk-1" and s.timezone == "Europe/Berlin" and s.locale == "de_DE.UTF-8"
    assert s.keyboard == "de(nodeadkeys)"
    assert s.users == (settings.User("pi", "$y$j9T$abc$def", (KEY,), True),)
    assert s.ssh == settings.Ssh(enabled=True, password_authentication=False)
    assert s.wifi == settings.Wifi("DE", 'My "Net"', "correct horse", True)
    assert settings.ssh_wanted(s) is True


def test_empty_and_example_files_are_valid() -> None:
    assert settings.loads("", "x").empty
    example = resources.files("liveng.host").joinpath("data/liveng-settings.toml").read_text()
    assert settings.loads(example, "example").empty
    # Every commented key of the example, uncommented, is a valid file too.
    lines = [line[2:] for line in example.splitlines() if line.startswith("# ") and ("=" in line or "[" in line[2:3])]
    text = "\n".join(lines).replace("ssh-ed25519 AAAA... you@example", KEY) + "\n"  # the placeholder key
    uncommented = settings.loads(text, "example")
    assert uncommented.hostname == "liveng" and uncommented.wifi is not None and uncommented.users[0].sudo


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('colour = "red"', "colour: unknown key"),
        ('hostname = "Bad_Host"', "hostname: 'Bad_Host' is not a valid host name"),
        ('timezone = "../../etc/passwd"', "timezone: '../../etc/passwd' is not a time zone name"),
        ('locale = "german"', "locale: 'german' is not a locale name"),
        ('keyboard = "DE"', "keyboard: 'DE' is not an XKB keyboard layout"),
        ("ssh = true", "ssh: must be a table, not a boolean"),
        ("[ssh]\nenabled = 1", "ssh.enabled: must be true or false, not an integer"),
        ("[ssh]\nroot = true", "ssh.root: unknown key"),
        ('[wifi]\nssid = "x"', "wifi.country: is missing"),
        ('[wifi]\ncountry = "de"\nssid = "x"', "wifi.country: 'de' is not a two-letter country code"),
        ('[wifi]\ncountry = "DE"\nssid = ""', "wifi.ssid: '' is not a network name"),
        ('[wifi]\ncountry = "DE"\nssid = "' + "x" * 33 + '"', "is not a network name"),
        ('[wifi]\ncountry = "DE"\nssid = "x"\npassphrase = "short"', "wifi.passphrase: must be 8 to 63"),
        ('[wifi]\ncountry = "DE"\nssid = "x"\npsk = "00"', "wifi.psk: the value (not shown: it may be a password) "
         "is not a WPA key"),
        ('[wifi]\ncountry = "DE"\nssid = "x"\npassphrase = "12345678"\npsk = "' + "a" * 64 + '"',
         "wifi.psk: give the passphrase or the key (psk), not both"),
        ('[[users]]\nname = "pi"\nsudo = false\nsudo_nopasswd = true', "users[0].sudo_nopasswd: needs sudo"),
        ('[[users]]\nname = "pi"\ngroups = ["Video"]', "users[0].groups[0]: 'Video' is not a valid group name"),
        ('[[users]]\nname = "pi"\npassword_hash = "raspberry"', "plain passwords are refused"),
        ('[[users]]\nname = "pi"\npassword = "raspberry"', "users[0].password: unknown key"),
        ('[[users]]\nname = "pi"\nssh_keys = "ssh-ed25519 AAAA"', "users[0].ssh_keys: must be a list"),
        ('[[users]]\nname = "pi"\n[[users]]\nname = "pi"', "user 'pi' is listed twice"),
        ("hostname = ", "p1.toml: not valid TOML"),
    ],
)
def test_errors_name_file_and_key(text: str, needle: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings.loads(text, "p1.toml")
    assert str(info.value).startswith("p1.toml: ")
    assert needle in str(info.value)


def test_byte_order_mark_is_accepted() -> None:
    assert settings.loads('\ufeffhostname = "a"\n', "x").hostname == "a"


def test_recipe_takes_the_same_settings() -> None:
    r = recipe.loads('target = "pc"\n' + FULL, "r.toml", None)
    assert r.settings == settings.loads(FULL, "p1")
    assert r.timezone == "Europe/Berlin" and r.wifi is not None and r.wifi.hidden
    with pytest.raises(RecipeError, match=r"^r\.toml: keyboard: "):
        recipe.loads('keyboard = "DE"', "r.toml", None)
    # A recipe has nothing to keep: its Wi-Fi needs the passphrase.
    with pytest.raises(RecipeError, match=r"wifi\.passphrase: is missing"):
        recipe.loads('[wifi]\ncountry = "DE"\nssid = "x"', "r.toml", None)


def test_default_recipe_documents_every_settings_key() -> None:
    text = resources.files("liveng.host").joinpath("data/default.toml").read_text()
    for key in settings.KEYS:
        assert f"{key} " in text or f"[{key}]" in text or f"[[{key}]]" in text, key


def test_redact_keeps_comments_and_removes_secrets() -> None:
    out = settings.redact(FULL, "applied 2026-01-01")
    assert "$y$j9T$abc$def" not in out and "correct horse" not in out
    assert "# the owner's own comment" in out
    assert "# password_hash: applied 2026-01-01" in out and "# passphrase: applied 2026-01-01" in out
    data = tomllib.loads(out)
    assert data == settings.without_secrets(tomllib.loads(FULL))
    assert not settings.has_secrets(data) and settings.has_secrets(tomllib.loads(FULL))


def test_redact_rewrites_when_secrets_are_not_on_lines_of_their_own() -> None:
    text = ('hostname = "a"  # mine\nusers = [{name = "pi", password_hash = "$6$x$y", ssh_keys = []}]\n'
            'wifi = {country = "DE", ssid = "n\\u00e9t \\"x\\"", passphrase = """\nlongsecret1"""}\n')
    out = settings.redact(text, "applied")
    assert "$6$x$y" not in out and "longsecret1" not in out
    assert out.startswith("# liveng: written anew")
    assert tomllib.loads(out) == settings.without_secrets(tomllib.loads(text))


def test_files_the_settings_become() -> None:
    assert configfiles.keyboard_text("de(nodeadkeys)").count('XKBLAYOUT="de"') == 1
    assert 'XKBVARIANT="nodeadkeys"' in configfiles.keyboard_text("de(nodeadkeys)")
    assert configfiles.locale_text("de_DE.UTF-8").endswith("LANG=de_DE.UTF-8\n")
    assert configfiles.locale_available_name("de_DE.UTF-8") == "de_DE.utf8"
    gen = configfiles.locale_gen_text("# de_DE.UTF-8 UTF-8\n# en_GB.UTF-8 UTF-8\n", "de_DE.UTF-8 UTF-8")
    assert gen == "de_DE.UTF-8 UTF-8\n# en_GB.UTF-8 UTF-8\n"
    hosts = configfiles.hosts_text("127.0.0.1\tlocalhost\n127.0.1.1\told\n10.0.0.2 printer\n", "new")
    assert hosts == "127.0.0.1\tlocalhost\n127.0.1.1\tnew\n10.0.0.2 printer\n"
    assert "127.0.1.1\tnew" in configfiles.hosts_text("127.0.0.1 localhost\n", "new")
    sshd = configfiles.sshd_text(False)
    assert "PermitRootLogin prohibit-password" in sshd and "PasswordAuthentication no" in sshd
    assert "PasswordAuthentication yes" in configfiles.sshd_text(True)


def test_wifi_configuration() -> None:
    # The PSK is wpa_passphrase's: PBKDF2-HMAC-SHA1 over the SSID, 4096 rounds (IEEE 802.11i test vector).
    assert configfiles.wifi_psk("IEEE", "password") == \
        "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"
    wifi = settings.Wifi("DE", 'My "Net"', "correct horse", hidden=True)
    psk = configfiles.wifi_psk('My "Net"', "correct horse")
    conf = configfiles.wifi_text(wifi, psk)
    assert "country=DE" in conf and "ssid=" + b'My "Net"'.hex() in conf and "scan_ssid=1" in conf
    assert f"psk={psk}" in conf and "correct horse" not in conf
    assert configfiles.existing_psk(conf, 'My "Net"') == psk and configfiles.existing_psk(conf, "other") is None
    assert psk == hashlib.pbkdf2_hmac("sha1", b"correct horse", b'My "Net"', 4096, 32).hex()
    open_net = configfiles.wifi_text(settings.Wifi("GB", "cafe", ""), None)
    assert "key_mgmt=NONE" in open_net and "psk=" not in open_net


def test_readme_example_is_valid() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    start = readme.index("```toml\n# liveng-settings.toml") + len("```toml\n")
    example = readme[start:readme.index("```", start)]
    s = settings.loads(example, "README")
    assert s.users and s.wifi is not None and s.ssh is not None


def test_host_checks_a_settings_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from liveng.host.cli import main

    good = tmp_path / "liveng-settings.toml"
    good.write_text(FULL)
    assert main(["settings", "check", str(good)]) == 0
    assert "valid" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[wifi]\ncountry = "de"\nssid = "x"\n')
    assert main(["settings", "check", str(bad)]) == 2
    assert f"{bad}: wifi.country: 'de' is not" in capsys.readouterr().err


def test_a_malformed_password_hash_is_not_repeated_in_the_error() -> None:
    """Such a "hash" is often the plain password; the error goes to the console, the journal and p1."""
    text = '[[users]]\nname = "pi"\npassword_hash = "Tr0ub4dor&3-secret"\n'
    with pytest.raises(SettingsError) as err:
        settings.loads(text, "liveng-settings.toml")
    assert "users[0].password_hash" in str(err.value) and "not shown" in str(err.value)
    assert "Tr0ub4dor" not in str(err.value)


def test_what_raspberry_pi_imager_writes_fits_the_schema() -> None:
    """The WPA key instead of the passphrase, passwordless sudo, more groups (issue 16)."""
    psk = configfiles.wifi_psk("HomeNet", "correct horse battery staple")
    s = settings.loads(f'[[users]]\nname = "pi"\nsudo_nopasswd = true\ngroups = ["video", "sudo", "video", "adm"]\n'
                       f'[wifi]\ncountry = "DE"\nssid = "HomeNet"\npsk = "{psk.upper()}"\n', "p1")
    assert s.users == (settings.User("pi", sudo=True, sudo_nopasswd=True, groups=("video", "adm")),)
    assert s.wifi == settings.Wifi("DE", "HomeNet", None, psk=psk) and s.wifi.key_given
    assert configfiles.wifi_key(s.wifi) == psk
    assert configfiles.wifi_key(settings.Wifi("DE", "HomeNet", "correct horse battery staple")) == psk
    assert configfiles.wifi_key(settings.Wifi("DE", "open", "")) is None
    assert not settings.Wifi("DE", "kept").key_given  # after the secret left p1: the kept key is used
    assert settings.loads('[[users]]\nname = "a"\ngroups = ["sudo"]', "p1").users[0].sudo
    # The key is a secret like the passphrase: removed from p1 once applied.
    text = f'[wifi]\ncountry = "DE"\nssid = "HomeNet"\npsk = "{psk}"\n'
    out = settings.redact(text, "applied")
    assert psk not in out and "# psk: applied" in out
    assert configfiles.regdom_text("DE").endswith("options cfg80211 ieee80211_regdom=DE\n")
    assert configfiles.nopasswd_path("pi") == "etc/sudoers.d/liveng-nopasswd-pi"
    assert "pi ALL=(ALL:ALL) NOPASSWD: ALL" in configfiles.nopasswd_text("pi")
    r = recipe.loads(f'target = "pc"\n{text}', "r.toml", None)
    assert r.wifi is not None and r.wifi.psk == psk
