"""liveng settings apply on a stand-in root and p1: checks, what is written, once, secrets, errors."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from liveng import configfiles, layout, settings
from liveng.device import bootstate, firstboot, seedfiles
from liveng.settings import SettingsError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRlc3RrZXl0ZXN0a2V5dGVzdGtleXRlc3RrZXk me@host"
GOOD = f"""# my settings
hostname = "kiosk"
timezone = "Europe/Berlin"
keyboard = "de"

[[users]]
name = "pi"
password_hash = "$6$salt$hash"
ssh_keys = ["{KEY}"]
sudo = true

[wifi]
country = "DE"
ssid = "home"
passphrase = "very secret"
"""


class Recorder:
    """Stands in for useradd and friends: records each command, and useradd adds the passwd line."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[list[str], str | None]] = []

    def __call__(self, argv: list[str], input_text: str | None) -> str:
        self.calls.append((argv, input_text))
        if argv[0] == "useradd":
            name = argv[-1]
            with open(self.root / "etc/passwd", "a") as f:
                f.write(f"{name}:x:{os.getuid()}:{os.getgid()}::/home/{name}:/bin/bash\n")
        return ""

    def commands(self) -> list[str]:
        return [" ".join(argv) for argv, _ in self.calls]


def make_root(tmp: Path, wifi: bool = True) -> Path:
    root = tmp / "root"
    for d in ("etc/ssh/sshd_config.d", "usr/sbin", "usr/share/zoneinfo/Europe", "var/lib", "home"):
        (root / d).mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n")
    (root / "etc/group").write_text("root:x:0:\nsudo:x:27:\n")
    (root / "etc/hostname").write_text("liveng\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tliveng\n")
    (root / "usr/share/zoneinfo/Europe/Berlin").write_bytes(b"TZif")
    (root / "usr/sbin/sshd").touch()
    if wifi:
        (root / "usr/sbin/wpa_supplicant").touch()
    return root


def system(root: Path) -> tuple[firstboot.System, Recorder]:
    rec = Recorder(root)
    return firstboot.System(root=root, run=rec, live=False), rec


def test_apply_writes_everything(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    sys_, rec = system(root)
    s = settings.loads(GOOD, "f")
    firstboot.check(s, sys_, "f")
    changes = firstboot.apply(s, sys_)
    assert (root / "etc/hostname").read_text() == "kiosk\n"
    assert "127.0.1.1\tkiosk" in (root / "etc/hosts").read_text()
    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/Europe/Berlin"
    assert (root / "etc/timezone").read_text() == "Europe/Berlin\n"
    assert 'XKBLAYOUT="de"' in (root / "etc/default/keyboard").read_text()
    conf = root / configfiles.WIFI_CONF_PATH
    assert conf.stat().st_mode & 0o777 == 0o600 and "very secret" not in conf.read_text()
    assert f"psk={configfiles.wifi_psk('home', 'very secret')}" in conf.read_text()
    keys = root / "home/pi/.ssh/authorized_keys"
    assert keys.read_text() == KEY + "\n" and keys.stat().st_mode & 0o777 == 0o600
    assert (root / "home/pi/.ssh").stat().st_mode & 0o777 == 0o700
    assert rec.commands()[:2] == ["useradd --create-home --shell /bin/bash --user-group --groups sudo pi",
                                  "chpasswd --encrypted"]
    assert rec.calls[1][1] == "pi:$6$salt$hash\n"  # the hash goes on stdin, not the command line
    assert "systemctl enable --no-reload ssh.service" in rec.commands()  # a key: SSH on
    assert "user pi added" in changes and "ssh on" in changes
    # Again: nothing left to change in the files; keys are not doubled.
    sys2, rec2 = system(root)
    firstboot.apply(settings.loads(GOOD, "f"), sys2)
    assert keys.read_text() == KEY + "\n"
    assert not [c for c in sys2.changes if c.startswith("/")]
    assert not [c for c in rec2.commands() if c.startswith("useradd")]


def test_checks_against_the_system(tmp_path: Path) -> None:
    root = make_root(tmp_path, wifi=False)
    sys_, rec = system(root)
    cases = {
        'timezone = "Mars/Olympus"': "timezone: 'Mars/Olympus' is not a time zone this system knows",
        'locale = "de_DE.UTF-8"': "locale: 'de_DE.UTF-8' needs the locales package",
        '[wifi]\ncountry = "DE"\nssid = "x"\npassphrase = "12345678"': "wifi: this image has no Wi-Fi support",
        '[[users]]\nname = "daemon"': "users[0].name: 'daemon' is a system account",
        '[[users]]\nname = "sudo"': "users[0].name: 'sudo' is the name of a group on this system",
    }
    for text, needle in cases.items():
        with pytest.raises(SettingsError, match=r"^f: ") as info:
            firstboot.check(settings.loads(text, "f"), sys_, "f")
        assert needle in str(info.value)
    (root / "usr/sbin/wpa_supplicant").touch()
    with pytest.raises(SettingsError, match=r"wifi\.passphrase: is missing for the network 'x'"):
        firstboot.check(settings.loads('[wifi]\ncountry = "DE"\nssid = "x"', "f"), sys_, "f")
    (root / "etc/group").write_text("root:x:0:\n")
    with pytest.raises(SettingsError, match=r"users\[0\]\.sudo: this image has no sudo"):
        firstboot.check(settings.loads('[[users]]\nname = "pi"\nsudo = true', "f"), sys_, "f")
    assert rec.calls == []


@dataclass
class BootPartition:
    """A directory standing in for the mounted boot partition; how it was mounted, in order."""

    path: Path
    writable: list[bool] = field(default_factory=list)
    seed_disk: dict[str, bytes] | None = None  # the files of a CIDATA disk, if one is attached


@pytest.fixture()
def p1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BootPartition:
    boot = BootPartition(tmp_path / "p1")
    boot.path.mkdir()

    @contextlib.contextmanager
    def mounted(role: layout.Role, fstype: str, writable: bool = False) -> Iterator[Path]:
        assert role is layout.Role.BOOT and fstype == "vfat"
        boot.writable.append(writable)
        yield boot.path

    monkeypatch.setattr(bootstate, "mounted", mounted)
    monkeypatch.setattr(firstboot, "_wait_for_boot_partition", lambda: None)
    monkeypatch.setattr(seedfiles, "read_seed_disk", lambda: boot.seed_disk)
    return boot


def test_boot_flow_once_secrets_removed_and_edits_applied_again(tmp_path: Path, p1: BootPartition) -> None:
    root = make_root(tmp_path)
    sys_, _ = system(root)
    assert not firstboot.apply_boot_partition(system=sys_).applied  # no file: nothing
    (p1.path / layout.SETTINGS_PATH).write_text(GOOD)
    p1.writable.clear()
    outcome = firstboot.apply_boot_partition(system=sys_)
    assert outcome.applied and "user pi added" in outcome.message
    assert p1.writable == [False, True]  # read, then written without its secrets
    left = (p1.path / layout.SETTINGS_PATH).read_text()
    assert "$6$salt$hash" not in left and "very secret" not in left
    assert "# my settings" in left and 'hostname = "kiosk"' in left and KEY in left
    state = firstboot.read_state(sys_)
    assert state["digest"] == settings.digest(left.encode())
    # The next boot: unchanged, nothing run, p1 not mounted writable.
    p1.writable.clear()
    sys2, rec2 = system(root)
    outcome = firstboot.apply_boot_partition(system=sys2)
    assert not outcome.applied and "unchanged" in outcome.message and rec2.calls == []
    assert p1.writable == [False]
    # The owner edits the file (the secrets are gone from it): applied again, the Wi-Fi keeps its key.
    psk_before = (root / configfiles.WIFI_CONF_PATH).read_text()
    (p1.path / layout.SETTINGS_PATH).write_text(left.replace('"kiosk"', '"kiosk-2"'))
    sys3, rec3 = system(root)
    p1.writable.clear()
    assert firstboot.apply_boot_partition(system=sys3).applied
    assert p1.writable == [False]  # no secrets left to remove, no error note: p1 stays read-only
    assert (root / "etc/hostname").read_text() == "kiosk-2\n"
    assert (root / configfiles.WIFI_CONF_PATH).read_text() == psk_before
    assert not any(argv[0] in ("useradd", "chpasswd") for argv, _ in rec3.calls)


def test_malformed_file_applies_nothing_and_says_why(tmp_path: Path, p1: BootPartition) -> None:
    root = make_root(tmp_path)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    # Valid TOML, valid keys up to the last one: the hostname must not be applied either.
    bad = GOOD + '\n[ssh]\nenabled = "yes"\n'
    (p1.path / layout.SETTINGS_PATH).write_text(bad)
    sys_, rec = system(root)
    with pytest.raises(SettingsError, match=r"ssh\.enabled: must be true or false"):
        firstboot.apply_boot_partition(system=sys_)
    assert rec.calls == []
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert (p1.path / layout.SETTINGS_PATH).read_text() == bad  # left for the owner to fix
    note = (p1.path / layout.SETTINGS_ERROR_PATH).read_text()
    assert "did NOT apply" in note and "ssh.enabled" in note
    # Fixed: applied, and the note goes.
    (p1.path / layout.SETTINGS_PATH).write_text(GOOD)
    assert firstboot.apply_boot_partition(system=sys_).applied
    assert not (p1.path / layout.SETTINGS_ERROR_PATH).exists()
    (p1.path / layout.SETTINGS_PATH).write_bytes(b"hostname = \"\xff\"\n")
    with pytest.raises(SettingsError, match="not UTF-8 text"):
        firstboot.apply_boot_partition(system=sys_)


def test_ssh_off_and_password_logins(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    sys_, rec = system(root)
    firstboot.apply(settings.loads("[ssh]\nenabled = false\npassword_authentication = true", "f"), sys_)
    assert "systemctl disable --no-reload ssh.service" in rec.commands()
    dropin = (root / configfiles.SSHD_DROPIN_PATH).read_text()
    assert "PasswordAuthentication yes" in dropin and "PermitRootLogin prohibit-password" in dropin


def test_recipe_locale_is_generated_at_first_boot(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "usr/sbin/locale-gen").touch()
    (root / "etc/default").mkdir()
    (root / configfiles.LOCALE_PATH).write_text(configfiles.locale_text("de_DE.UTF-8"))
    sys_, rec = system(root)
    firstboot.ensure_locale(sys_)
    assert rec.commands() == ["locale -a", "locale-gen"]


def _user_pi(root: Path, uid: int = 1000) -> Path:
    with open(root / "etc/passwd", "a") as f:
        f.write(f"pi:x:{uid}:{uid}::/home/pi:/bin/bash\n")
    home = root / "home/pi"
    home.mkdir()
    os.chown(home, uid, uid)
    return home


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to another user")
def test_authorized_keys_never_follow_the_users_links(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    shadow = root / "etc/shadow"
    shadow.write_text("root:*:1::::::\n")
    home = _user_pi(root)
    ssh = home / ".ssh"
    ssh.mkdir()
    os.chown(ssh, 1000, 1000)
    # The user's traps: the old fixed temporary name, and authorized_keys itself, pointing at shadow.
    (ssh / ".authorized_keys.tmp").symlink_to(shadow)
    s = settings.loads(f'[[users]]\nname = "pi"\nssh_keys = ["{KEY}"]', "f")
    (ssh / "authorized_keys").symlink_to(shadow)
    with pytest.raises(SettingsError, match=r"/home/pi/\.ssh/authorized_keys: cannot be read"):
        firstboot.apply(s, system(root)[0])
    assert shadow.read_text() == "root:*:1::::::\n"
    (ssh / "authorized_keys").unlink()
    firstboot.apply(s, system(root)[0])
    assert shadow.read_text() == "root:*:1::::::\n" and shadow.stat().st_uid == 0
    keys = ssh / "authorized_keys"
    assert not keys.is_symlink() and keys.read_text() == KEY + "\n"
    assert (keys.stat().st_uid, keys.stat().st_mode & 0o777) == (1000, 0o600)
    # ~/.ssh a link to /etc, or someone else's: refused, nothing written there.
    keys.unlink()
    (ssh / ".authorized_keys.tmp").unlink()
    ssh.rmdir()
    ssh.symlink_to(root / "etc")
    with pytest.raises(SettingsError, match=r"/home/pi/\.ssh is not a plain directory"):
        firstboot.apply(s, system(root)[0])
    assert not (root / "etc/authorized_keys").exists()
    ssh.unlink()
    ssh.mkdir()
    os.chown(ssh, 2000, 2000)
    with pytest.raises(SettingsError, match=r"/home/pi/\.ssh belongs to uid 2000"):
        firstboot.apply(s, system(root)[0])
    assert list(ssh.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to another user")
def test_check_refuses_a_linked_ssh_dir_before_applying_anything(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    home = _user_pi(root)
    (home / ".ssh").symlink_to(root / "etc")
    s = settings.loads(f'hostname = "x"\n[[users]]\nname = "pi"\nssh_keys = ["{KEY}"]', "f")
    with pytest.raises(SettingsError, match=r"users\[0\]\.ssh_keys: /home/pi/\.ssh is a symbolic link"):
        firstboot.check(s, system(root)[0], "f")


def test_imager_settings_key_nopasswd_groups_and_country(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "usr/bin").mkdir()
    (root / "usr/bin/sudo").touch()
    (root / "etc/group").write_text("root:x:0:\nsudo:x:27:\nvideo:x:44:\nadm:x:4:\n")
    psk = configfiles.wifi_psk("home", "very secret")
    text = (f'[[users]]\nname = "pi"\nsudo_nopasswd = true\ngroups = ["video", "gpio"]\n'
            f'[wifi]\ncountry = "GB"\nssid = "home"\npsk = "{psk}"\n')
    sys_, rec = system(root)
    s = settings.loads(text, "f")
    firstboot.check(s, sys_, "f")
    firstboot.apply(s, sys_)
    assert rec.commands()[0] == "useradd --create-home --shell /bin/bash --user-group --groups sudo,video pi"
    assert sys_.notes == ["user pi: not in gpio: this system has no such group"]
    dropin = root / configfiles.nopasswd_path("pi")
    assert dropin.read_text().endswith("pi ALL=(ALL:ALL) NOPASSWD: ALL\n") and dropin.stat().st_mode & 0o777 == 0o440
    conf = (root / configfiles.WIFI_CONF_PATH).read_text()
    assert f"psk={psk}" in conf and "country=GB" in conf  # the key as given: nothing derived
    assert (root / configfiles.REGDOM_PATH).read_text().endswith("ieee80211_regdom=GB\n")
    # An existing user: only the groups it lacks are added.
    (root / "etc/group").write_text("root:x:0:\nsudo:x:27:pi\nvideo:x:44:\nadm:x:4:\n")
    sys2, rec2 = system(root)
    firstboot.apply(settings.loads('[[users]]\nname = "pi"\nsudo = true\ngroups = ["video", "adm"]', "f"), sys2)
    assert rec2.commands() == ["usermod --append --groups video,adm pi"]
    assert dropin.exists()  # like sudo, passwordless sudo is not taken away by a file that omits it
    (root / "usr/bin/sudo").unlink()
    with pytest.raises(SettingsError, match=r"users\[0\]\.sudo_nopasswd: this image has no sudo"):
        firstboot.check(settings.loads('[[users]]\nname = "x"\nsudo_nopasswd = true', "f"), sys2, "f")


def test_a_country_alone_keeps_the_network(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    sys_, _ = system(root)
    firstboot.apply(settings.loads('[wifi]\ncountry = "FR"', "f"), sys_)
    assert (root / configfiles.WIFI_CONF_PATH).read_text().endswith("country=FR\n")  # no network block
    assert "network=" not in (root / configfiles.WIFI_CONF_PATH).read_text()
    firstboot.apply(settings.loads(GOOD, "f"), sys_)
    firstboot.apply(settings.loads('[wifi]\ncountry = "AT"', "f"), sys_)
    conf = (root / configfiles.WIFI_CONF_PATH).read_text()
    assert "country=AT" in conf and f"psk={configfiles.wifi_psk('home', 'very secret')}" in conf
    assert (root / configfiles.REGDOM_PATH).read_text().endswith("ieee80211_regdom=AT\n")
    with pytest.raises(SettingsError, match=r"wifi\.ssid: is missing: passphrase is for a network"):
        settings.loads('[wifi]\ncountry = "AT"\npassphrase = "12345678"', "f")


def test_ssh_enabled_live_reloads_systemd_before_the_start(tmp_path: Path) -> None:
    """Turning SSH on in a running system: systemd reloads (plain `systemctl enable`) before ssh.service
    starts; once both links are there, nothing is enabled (or reloaded) again."""
    root = make_root(tmp_path)
    rec = Recorder(root)
    live = firstboot.System(root=root, run=rec, live=True)
    s = settings.loads("[ssh]\nenabled = true", "f")
    firstboot._ssh(s, live)
    assert rec.commands() == ["systemctl enable ssh.service", "systemctl start --no-block ssh.service"]
    for link in configfiles.SSH_ENABLED_LINKS:
        (root / link).parent.mkdir(parents=True, exist_ok=True)
        (root / link).symlink_to("/usr/lib/systemd/system/ssh.service")
    rec.calls.clear()
    firstboot._ssh(s, live)
    assert rec.commands() == ["systemctl start --no-block ssh.service"]
    # Only the target's link (an alias removed by hand): enabled again, with the reload.
    (root / configfiles.SSH_ENABLED_LINKS[1]).unlink()
    rec.calls.clear()
    firstboot._ssh(s, live)
    assert rec.commands()[0] == "systemctl enable ssh.service"
