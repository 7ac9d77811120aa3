"""Imager's files and NoCloud seeds applied at boot (liveng settings apply): the same guarantees as
liveng-settings.toml: checked whole first, secrets off p1 after, applied again after a reset."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from liveng import configfiles, layout
from liveng.device import firstboot, runner, seedfiles
from liveng.host import customize, recipe, rootfs
from liveng.seeds import REMOVED, from_cloud_init, from_preseed, miniyaml, redact
from liveng.settings import SettingsError
from tests.unit.test_firstboot import BootPartition, make_root, p1, system
from tests.unit.test_seeds import DATA, HASH, KEY, PSK

__all__ = ["p1"]  # the fixture


def imager_root(tmp: Path) -> Path:
    root = make_root(tmp)
    (root / "usr/bin").mkdir()
    (root / "usr/bin/sudo").touch()
    return root


def put(p1: BootPartition, case: str, *names: str) -> None:
    for name in names:
        shutil.copy(DATA / case / name, p1.path / name)


def test_imager_files_applied_once_secrets_removed_and_again_after_a_reset(tmp_path: Path, p1: BootPartition) -> None:
    put(p1, "imager-2.x", "user-data", "network-config", "meta-data", "cmdline.txt")
    before = {n: (p1.path / n).read_text() for n in ("user-data", "network-config", "meta-data")}
    kept = tmp_path / "p7/liveng"
    sys_, rec = system(imager_root(tmp_path))
    sys_.kept = kept
    outcome = firstboot.apply_boot_partition(system=sys_)
    root = tmp_path / "root"
    assert outcome.applied and "user pi added" in outcome.message
    assert "not applied (liveng does not do these" in outcome.message and "user-data: packages" in outcome.message
    assert rec.commands()[:2] == ["useradd --create-home --shell /bin/bash --user-group --groups sudo pi",
                                  "chpasswd --encrypted"]
    assert rec.calls[1][1] == f"pi:{HASH}\n"
    assert (root / "etc/hostname").read_text() == "liveng-pi\n"
    assert 'XKBLAYOUT="de"' in (root / configfiles.KEYBOARD_PATH).read_text()
    assert (root / "home/pi/.ssh/authorized_keys").read_text() == KEY + "\n"
    assert (root / configfiles.nopasswd_path("pi")).exists()
    wifi = (root / configfiles.WIFI_CONF_PATH).read_text()
    assert f"psk={PSK}" in wifi and "country=DE" in wifi and f"ssid={b'HomeNet'.hex()}" in wifi
    assert "ieee80211_regdom=DE" in (root / configfiles.REGDOM_PATH).read_text()
    # Off p1: the hash and the key; the rest of each file as it was, line for line.
    user_data, network_config = (p1.path / "user-data").read_text(), (p1.path / "network-config").read_text()
    assert HASH not in user_data and PSK not in network_config and REMOVED in user_data
    assert user_data == before["user-data"].replace(f'"{HASH}"', f'"{REMOVED}"')
    assert network_config == before["network-config"].replace(f'"{PSK}"', f'"{REMOVED}"')
    assert (p1.path / "meta-data").read_text() == before["meta-data"]
    assert sorted(p.name for p in p1.path.iterdir()) == ["cmdline.txt", "meta-data", "network-config", "user-data"]
    # The next boot: unchanged.
    sys2, rec2 = system(root)
    assert not firstboot.apply_boot_partition(system=sys2).applied and rec2.calls == []
    # A factory reset: a new delta, p7's liveng/ kept. The redacted files bring the device back.
    fresh = tmp_path / "reset"
    fresh.mkdir()
    sys3, rec3 = system(imager_root(fresh))
    sys3.kept = kept
    assert firstboot.apply_boot_partition(system=sys3).applied
    assert (fresh / "root/home/pi/.ssh/authorized_keys").read_text() == KEY + "\n"
    assert f"psk={PSK}" in (fresh / "root" / configfiles.WIFI_CONF_PATH).read_text()
    assert not any(argv[0] == "chpasswd" for argv, _ in rec3.calls)


def test_malformed_user_data_applies_nothing_and_says_where(tmp_path: Path, p1: BootPartition) -> None:
    root = imager_root(tmp_path)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    put(p1, "imager-2.x", "network-config", "meta-data")
    bad = (DATA / "imager-2.x" / "user-data").read_text().replace("timezone: Europe/Berlin", "timezone: [Europe")
    (p1.path / "user-data").write_text(bad)
    sys_, rec = system(root)
    with pytest.raises(SettingsError, match=r"^user-data:15: expected .,. or .\]. here") as err:
        firstboot.apply_boot_partition(system=sys_)
    assert HASH not in str(err.value)
    assert rec.calls == [] and {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert (p1.path / "user-data").read_text() == bad  # left for the owner to fix
    note = (p1.path / layout.SETTINGS_ERROR_PATH).read_text()
    assert "did NOT apply the settings" in note and "user-data:15:" in note


def test_sources_together_precedence_and_a_seed_disk(tmp_path: Path, p1: BootPartition) -> None:
    (p1.path / layout.SETTINGS_PATH).write_text('hostname = "mine"\n')
    put(p1, "preseed", "rpi-preseed.toml")
    put(p1, "imager-2.0.8", "user-data", "meta-data")
    disk_user_data = f"#cloud-config\nhostname: from-disk\nusers:\n- name: vm\n  ssh_authorized_keys: ['{KEY}']\n" \
                     f"  lock_passwd: false\n  passwd: '{HASH}'\n"
    p1.seed_disk = {"user-data": disk_user_data.encode(), "meta-data": b"instance-id: vm-1\n"}
    sys_, rec = system(imager_root(tmp_path))
    outcome = firstboot.apply_boot_partition(system=sys_)
    root = tmp_path / "root"
    assert (root / "etc/hostname").read_text() == "mine\n"  # liveng's own file wins
    assert (root / "etc/timezone").read_text() == "Europe/Berlin\n"  # rpi-preseed.toml over user-data's London
    assert [c.split()[-1] for c in rec.commands() if c.startswith("useradd")] == ["pi", "admin", "vm"]
    assert (root / "home/vm/.ssh/authorized_keys").read_text() == KEY + "\n"
    assert "liveng-settings.toml, rpi-preseed.toml, user-data" in outcome.message
    assert "the seed disk's passwords and keys stay on it" in outcome.message
    preseed = tomllib.loads((p1.path / "rpi-preseed.toml").read_text())
    assert preseed["user"]["password"] == REMOVED and preseed["wlan"]["password"] == REMOVED
    assert HASH not in (p1.path / "user-data").read_text()


def test_wifi_from_a_seed_on_an_image_without_wifi_is_left_out(tmp_path: Path, p1: BootPartition) -> None:
    root = imager_root(tmp_path)
    (root / "usr/sbin/wpa_supplicant").unlink()
    put(p1, "imager-2.x", "user-data", "network-config", "meta-data")
    sys_, _ = system(root)
    outcome = firstboot.apply_boot_partition(system=sys_)
    assert outcome.applied and "network-config: the Wi-Fi network is not set up: this image has no Wi-Fi" in \
        outcome.message
    assert not (root / configfiles.WIFI_CONF_PATH).exists() and (root / "home/pi/.ssh/authorized_keys").exists()
    # The secret still leaves p1: the network-config is as good as applied.
    assert PSK not in (p1.path / "network-config").read_text()


def test_redaction_keeps_the_file_or_writes_it_anew() -> None:
    text = (DATA / "cidata" / "user-data").read_text()
    t = from_cloud_init(text)
    paths = [p for f, p in t.secret_paths if f == "user-data"]
    out = redact.yaml(text, "user-data", paths)
    assert "$6$" not in out and out.startswith("#cloud-config\n")
    again = from_cloud_init(out)  # what the redacted file means: the same, without the passwords
    assert [u["name"] for u in again.data["users"]] == ["admin", "kiosk"]
    assert all("password_hash" not in u for u in again.data["users"]) and again.data["hostname"] == "kiosk-7"
    # A chpasswd list as text: each line's password.
    text = f"#cloud-config\nusers: [pi]\nchpasswd:\n  list: |\n    pi:{HASH}\n    root:{HASH}\n"
    t = from_cloud_init(text)
    out = redact.yaml(text, "user-data", [p for _, p in t.secret_paths])
    assert HASH not in out and miniyaml.parse(out, "x").value["chpasswd"]["list"] == \
        f"pi:{REMOVED}\nroot:{REMOVED}\n"
    assert from_cloud_init(out).data["users"] == [{"name": "pi"}]
    # rpi-preseed.toml: the values replaced in place; the network keeps its key (not open).
    text = (DATA / "preseed" / "rpi-preseed.toml").read_text()
    out = redact.toml(text, "rpi-preseed.toml", [p for _, p in from_preseed(text).secret_paths])
    assert out.count("\n") == text.count("\n") and HASH not in out and PSK not in out
    wifi = from_preseed(out, "cfg80211.ieee80211_regdom=DE").data["wifi"]
    assert wifi == {"country": "DE", "ssid": "HomeNet"}  # no passphrase: the device uses the key it kept


def test_the_image_carries_the_seed_readers_and_no_cloud_init(tmp_path: Path) -> None:
    customize.device_tool(tmp_path)
    shipped = tmp_path / customize.DEVICE_PYTHON_DIR
    assert (shipped / "seeds" / "miniyaml.py").is_file()
    # The device tool imports with the standard library and what was shipped, nothing else (-S: no site-packages).
    python = shutil.which("python3") or sys.executable
    proc = subprocess.run([python, "-S", "-c", f"import sys; sys.path.insert(0, {str(shipped.parent)!r}); "
                           "import liveng.device.firstboot, liveng.device.cli; print(liveng.seeds.__file__)"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(str(shipped))
    for target in ("pc", "rpi"):
        r = recipe.loads(f'target = "{target}"\n', "r.toml", None)
        assert not any("cloud-init" in p for p in rootfs.packages(r))


def test_check_reads_what_the_boot_reads_and_applies_nothing(tmp_path: Path, p1: BootPartition) -> None:
    put(p1, "imager-2.x", "user-data", "network-config", "meta-data")
    sys_, rec = system(imager_root(tmp_path))
    s = firstboot.check_file(None, sys_)
    assert [u.name for u in s.users] == ["pi"] and s.wifi is not None and s.wifi.psk == PSK
    assert rec.calls == [] and not (tmp_path / "root/home/pi").exists() and p1.writable == [False]
    (p1.path / "user-data").write_text("#cloud-config\nusers:\n- name: daemon\n")
    with pytest.raises(SettingsError, match=r"^user-data: users\[0\]\.name: 'daemon' is a system account"):
        firstboot.check_file(None, sys_)


def test_the_seed_disk_is_found_by_its_label(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[list[str]] = []

    def blkid(argv: list[str], input_text: str | None = None) -> str:
        asked.append(argv)
        if argv[-1] == "LABEL=cidata":
            return "/dev/vdb\n"
        raise runner.DeviceError("blkid failed (2)")

    monkeypatch.setattr(runner, "run", blkid)
    assert seedfiles.seed_disk() == Path("/dev/vdb")
    assert asked[0] == ["blkid", "-c", "/dev/null", "-o", "device", "-t", "LABEL=CIDATA"]
    monkeypatch.setattr(runner, "run", lambda argv, input_text=None: (_ for _ in ()).throw(runner.DeviceError("2")))
    assert seedfiles.seed_disk() is None
