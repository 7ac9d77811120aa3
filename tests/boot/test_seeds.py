"""Raspberry Pi Imager's OS customisation and a cloud-init NoCloud seed disk, applied by a real PC image.

One VM, resumed from the UEFI golden (tests/boot/golden.py) with a seed disk made by Debian's cloud-localds
in place of its blank second disk, and rebooted twice:

- p1 gets user-data, meta-data, network-config and cmdline.txt in the shape Imager 2.x writes them (user pi
  with a yescrypt hash, an ed25519 key and NOPASSWD sudo, host name, time zone, keyboard, Wi-Fi with a hex
  PSK and a country). Reboot 1: ssh with the key works, sudo works, host name, time zone, keyboard and the
  Wi-Fi configuration (and the kernel's regulatory domain) are set, the hash and the key are gone from p1;
  the seed disk's user came too.
- In the running system (the same code the boot runs, `liveng settings apply`): Imager 1.8's `users:` form,
  then rpi-preseed.toml as Imager 2.0.11 writes it, then the seed disk alone (its host name).
- A malformed user-data, reboot 2 (LIVENG_LONG_TESTS=1; CI has the unit test of it): the boot reaches its
  login prompt, nothing is applied, the reason is on the console, in the journal and beside the file on p1.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import os
import subprocess
import time
from pathlib import Path

import pytest

from liveng import layout
from liveng.host.disk import read_table
from tests.boot import golden
from tests.boot.conftest import INSTALL_TARGET_SIZE
from tests.boot.test_settings import free_port, ssh_key
from tests.vm import Vm

pytestmark = pytest.mark.boot

DATA = Path(__file__).parents[1] / "unit" / "data" / "seeds"
# What the fixtures hold (tests/unit/test_seeds.py): the hash, the key and the PSK Imager wrote there.
FIXTURE_HASH = "$y$j9T$Ve0bzkdrXr3Wm5uWNb0PK/$nQFXboIT4XJ.iccfiOrPoy93CM4ep7tktvfhNGihny4"
FIXTURE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJcSWeJEDkPpgBEfCscFV2lnCSLf7HI5bt+D0dHPALOd me@laptop"
PSK = "55b39d90a2105b229568d5b9c38f4aa08198bff015e98afc8d16fe75759732a2"
P1 = "/mnt/p1"


def yescrypt(password: str) -> str:
    """A yescrypt hash, as Imager makes one, by the host's libxcrypt (crypt_gensalt "$y$")."""
    lib = ctypes.CDLL(ctypes.util.find_library("crypt"))
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    result: bytes = lib.crypt(password.encode(), lib.crypt_gensalt(b"$y$", 0, None, 0))
    assert result.startswith(b"$y$"), result
    return result.decode()


def fixture(case: str, name: str, hash_: str, key: str, **replace: str) -> str:
    text = (DATA / case / name).read_text().replace(FIXTURE_HASH, hash_).replace(FIXTURE_KEY, key)
    for old, new in replace.items():
        assert old in text, (case, name, old)
        text = text.replace(old, new)
    return text


def seed_disk(tmp: Path, key: str) -> Path:
    """cloud-localds's seed (an ISO 9660 labelled cidata) at the start of a disk the size of the golden's
    blank one, which it stands in for."""
    (tmp / "seed-user-data").write_text(f"#cloud-config\nhostname: vm-from-seed\nusers:\n  - name: vmuser\n"
                                        f"    ssh_authorized_keys:\n      - {key}\n    groups: [sudo]\n"
                                        "packages: [nginx]\n")
    (tmp / "seed-meta-data").write_text("instance-id: vm-seed-1\n")
    iso = tmp / "seed.iso"
    subprocess.run(["cloud-localds", str(iso), str(tmp / "seed-user-data"), str(tmp / "seed-meta-data")], check=True)
    disk = golden.blank(tmp / "seed-disk.img", INSTALL_TARGET_SIZE)
    subprocess.run(["dd", f"if={iso}", f"of={disk}", "conv=notrunc,sparse", "status=none"], check=True)
    return disk


def put_p1(vm: Vm, part: str, files: dict[str, str | None]) -> None:
    """Write (or, for None, remove) files on p1 from inside the guest, as a computer with the card would."""
    steps = [f"mkdir -p {P1}", f"mount {part} {P1}"]
    for name, text in files.items():
        if text is None:
            steps.append(f"rm -f {P1}/{name}")
        else:
            steps.append(f"echo {base64.b64encode(text.encode()).decode()} | base64 -d > {P1}/{name}")
    steps.append(f"umount {P1}")
    vm.sh(" && ".join(steps))


def p1_text(vm: Vm, part: str, name: str) -> str:
    return vm.sh(f"mkdir -p {P1} && mount -o ro {part} {P1} && {{ cat {P1}/{name} || true; }} && umount {P1}")


def ssh_settled(vm: Vm) -> None:
    """Wait for the SSH server the apply restarted: `liveng settings apply` queues the restart
    (--no-block) and returns; a login in between meets the server going down."""
    state = vm.sh("while systemctl list-jobs --no-legend | grep -q ssh.service; do sleep 1; done; "
                  "systemctl is-active ssh.service", timeout=300, check=False)
    if state != "active":  # what ssh.service and sshd said, for the report
        journal = vm.sh("systemctl status --no-pager -l ssh.service; journalctl -b --no-pager -o short-monotonic "
                        "-u ssh.service -u ssh.socket -u liveng-ssh-keygen.service | tail -60; free -m; "
                        "dmesg | grep -i -E 'out of memory|killed process|segfault' | tail", check=False)
        raise AssertionError(f"ssh.service is {state!r} after the apply:\n{journal}")


def wifi_conf(vm: Vm) -> str:
    return vm.sh("cat /etc/wpa_supplicant/liveng-wifi.conf")


def test_imager_files_preseed_and_a_cloud_localds_seed(pc_golden: golden.Golden, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")], check=True)
    key = (tmp_path / "key.pub").read_text().strip()
    port = free_port()
    log = tmp_path / "console.log"
    disk = tmp_path / "disk.img"
    start = time.monotonic()
    vm = golden.resume(pc_golden, disk, log, disks=(seed_disk(tmp_path, key),), forwards=(f"{port}:22",))
    with vm:
        print(f"resumed: {time.monotonic() - start:.1f} s")
        part = f"/dev/disk/by-partuuid/{layout.partuuid(read_table(disk).image_id, 1)}"
        assert vm.sh("command -v cloud-init || echo none") == "none"  # liveng reads the seeds itself

        # Imager 2.x: user-data, meta-data, network-config and its cmdline.txt arguments.
        pi_hash = yescrypt("pi-password-1")
        put_p1(vm, part, {
            "user-data": fixture("imager-2.x", "user-data", pi_hash, key),
            "meta-data": fixture("imager-2.x", "meta-data", pi_hash, key),
            "network-config": fixture("imager-2.x", "network-config", pi_hash, key),
            "cmdline.txt": fixture("imager-2.x", "cmdline.txt", pi_hash, key),
        })
        print(f"reboot 1 (Imager 2.x files and the seed disk), power-on to shell: {vm.reboot():.1f} s")
        vm.sh(golden.SETTLE, timeout=900)  # liveng-boot-ok has mounted p1 and let it go again
        assert vm.sh("systemctl show -P Result liveng-settings.service") == "success"
        print(vm.sh("journalctl -b -o cat -u liveng-settings | grep liveng: || true"))
        print("liveng-settings.service:", vm.sh("systemd-analyze blame | grep liveng-settings || true"))
        assert vm.sh("hostname") == "liveng-pi"  # p1's user-data over the seed disk's host name
        assert vm.sh("readlink /etc/localtime") == "/usr/share/zoneinfo/Europe/Berlin"
        assert 'XKBLAYOUT="de"' in vm.sh("cat /etc/default/keyboard")
        conf = wifi_conf(vm)
        assert f"ssid={b'HomeNet'.hex()}" in conf and f"psk={PSK}" in conf and "country=DE" in conf
        assert vm.sh("cat /etc/modprobe.d/liveng-wifi-country.conf").endswith("ieee80211_regdom=DE")
        # The kernel takes it: cfg80211 loaded now reads its regulatory domain from there (no cmdline.txt).
        assert vm.sh("modprobe cfg80211 && cat /sys/module/cfg80211/parameters/ieee80211_regdom") == "DE"
        vm.sh("timeout 120 sh -c 'until systemctl is-active -q ssh.service; do sleep 1; done'")
        result = ssh_key(port, tmp_path / "key", "pi", "id -un; id -nG; sudo -n id -u; hostname")
        assert result.returncode == 0, result.stderr
        name, groups, root_id, host = result.stdout.split("\n")[:4]
        assert name == "pi" and "sudo" in groups.split() and root_id == "0" and host == "liveng-pi"
        assert vm.sh("getent shadow pi | cut -d: -f2") == pi_hash
        result = ssh_key(port, tmp_path / "key", "vmuser", "id -un")  # from the seed disk
        assert result.returncode == 0 and result.stdout.strip() == "vmuser", result.stderr
        # The next apt install reloads systemd: the server it started stays its main process (the image
        # had SSH off, so the apply enabled it during this boot).
        listener = vm.sh("pgrep -f '^sshd: /usr/sbin/sshd'")
        assert vm.sh("systemctl show -P MainPID ssh.service") == listener
        vm.sh("systemctl daemon-reload", timeout=120)
        assert vm.sh("systemctl is-active ssh.service; systemctl show -P MainPID ssh.service").split() == [
            "active", listener]
        user_data, network_config = p1_text(vm, part, "user-data"), p1_text(vm, part, "network-config")
        assert "$y$" not in user_data and pi_hash not in user_data and PSK not in network_config
        assert "removed by liveng" in user_data and "hostname: liveng-pi" in user_data
        out = vm.sh("time liveng settings apply")
        print(out)
        assert "unchanged" in out

        # Imager 1.8: the users: form, the keyboard by localectl, the country on cmdline.txt only.
        hash_18 = yescrypt("pi18-password")
        put_p1(vm, part, {
            "user-data": fixture("imager-1.8", "user-data", hash_18, key, **{"name: pi": "name: pi18",
                                 "hostname: liveng-pi": "hostname: liveng-pi18", '"de" pc105': '"fr" pc105'}),
            "network-config": fixture("imager-1.8", "network-config", hash_18, key),
            "cmdline.txt": fixture("imager-1.8", "cmdline.txt", hash_18, key, **{"regdom=DE": "regdom=GB"}),
            "meta-data": None,
        })
        out = vm.sh("time liveng settings apply")
        print(out)
        assert "applied" in out and "user pi18 added" in out
        assert vm.sh("hostname") == "liveng-pi18" and 'XKBLAYOUT="fr"' in vm.sh("cat /etc/default/keyboard")
        assert "country=GB" in wifi_conf(vm)
        ssh_settled(vm)
        result = ssh_key(port, tmp_path / "key", "pi18", "id -un; sudo -n id -u")
        assert result.returncode == 0 and result.stdout.split() == ["pi18", "0"], result.stderr
        assert "video" in vm.sh("id -nG pi18").split()  # a group of Imager 1.8's list this system has
        assert hash_18 not in p1_text(vm, part, "user-data")

        # rpi-preseed.toml as Imager 2.0.11 writes it (and no cloud-init files).
        hash_pre = yescrypt("preseed-password")
        put_p1(vm, part, {
            "rpi-preseed.toml": fixture("preseed", "rpi-preseed.toml", hash_pre, key, **{
                'name = "pi"': 'name = "pre"', 'hostname = "liveng-pi"': 'hostname = "liveng-preseed"',
                'country = "DE"': 'country = "FR"', 'timezone = "Europe/Berlin"': 'timezone = "Europe/Paris"'}),
            "user-data": None, "network-config": None, "cmdline.txt": None,
        })
        out = vm.sh("time liveng settings apply")
        print(out)
        assert "user pre added" in out and vm.sh("hostname") == "liveng-preseed"
        assert vm.sh("readlink /etc/localtime") == "/usr/share/zoneinfo/Europe/Paris"
        assert "country=FR" in wifi_conf(vm) and f"psk={PSK}" in wifi_conf(vm)
        ssh_settled(vm)
        result = ssh_key(port, tmp_path / "key", "pre", "id -un; sudo -n id -u")
        assert result.returncode == 0 and result.stdout.split() == ["pre", "0"], result.stderr
        preseed = p1_text(vm, part, "rpi-preseed.toml")
        assert hash_pre not in preseed and PSK not in preseed and 'name = "pre"' in preseed

        # The seed disk alone: its host name now.
        put_p1(vm, part, {"rpi-preseed.toml": None})
        print(vm.sh("liveng settings apply"))
        assert vm.sh("hostname") == "vm-from-seed"

        if os.environ.get("LIVENG_LONG_TESTS") != "1":  # CI's 45 minutes: tests/unit/test_seed_apply.py has it
            vm.poweroff()
            return
        # A malformed user-data: nothing of it, the boot goes on to its login prompt.
        bad = "#cloud-config\nhostname: must-not-apply\nusers:\n  - name: intruder\n\tssh_authorized_keys: []\n"
        put_p1(vm, part, {"user-data": bad})
        mark = log.stat().st_size
        print(f"reboot 2 (malformed user-data), power-on to shell: {vm.reboot():.1f} s")
        vm.sh(golden.SETTLE, timeout=900)
        assert vm.sh("hostname") == "vm-from-seed"
        assert vm.sh("getent passwd intruder || echo none") == "none"
        assert vm.sh("systemctl show -P Result liveng-settings.service") == "exit-code"
        assert "user-data:5: a tab in the indentation" in vm.sh("journalctl -b -o cat -u liveng-settings")
        note = p1_text(vm, part, layout.SETTINGS_ERROR_PATH)
        assert "did NOT apply" in note and "user-data:5:" in note
        assert "name: intruder" in p1_text(vm, part, "user-data")  # left for the owner to fix
        vm.poweroff()
    console = log.read_text(errors="replace")[mark:]
    assert "the settings were NOT applied" in console and "user-data:5: a tab" in console
    print(f"whole test: {time.monotonic() - start:.1f} s")
