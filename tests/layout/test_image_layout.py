"""Build an image offline from a small rootfs fixture and check it against the layout contract."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from liveng import bundle, configfiles, grubenv, layout, settings
from liveng.host import recipe as recipes
from liveng.host.bootloader import grub
from liveng.host.build import build
from liveng.host.cli import main
from liveng.requests import Request
from tests.layout import fixture
from tests.layout.image import SSH_KEY, Built, extract, partitions, sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="liveng build needs root")

def blkid(b: Built, number: int) -> dict[str, str]:
    text = subprocess.run(["blkid", "-p", "-o", "export", extract(b, number)], capture_output=True,
                          text=True).stdout
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def iso_files(path: Path) -> dict[str, int]:
    text = subprocess.run(["xorriso", "-indev", str(path), "-find", "/", "-type", "f", "-exec", "lsdl"],
                          capture_output=True, text=True, check=True).stdout
    files = {}
    for line in text.splitlines():
        fields = line.split()
        files[fields[-1].strip("'").lstrip("/")] = int(fields[4])
    return files


def test_output_written_atomically(built: Built) -> None:
    assert sorted(p.name for p in built.image.parent.iterdir()) == ["test.img"]


def test_partition_table(built: Built) -> None:
    table = json.loads(sh("sfdisk", "-J", built.image))["partitiontable"]
    assert table["label"] == "dos"
    assert table["id"] == f"0x{built.image_id}"
    parts = partitions(built.image)
    assert sorted(parts) == [1, 2, 3, 5, 6, 7]
    assert {n: p["type"] for n, p in parts.items()} == {1: "c", 2: "83", 3: "f", 5: "83", 6: "83", 7: "83"}
    assert [n for n, p in parts.items() if p.get("bootable")] == [1]
    sizes = {n: int(str(p["size"])) * 512 // layout.MiB for n, p in parts.items()}
    assert sizes[1] == 64 and sizes[5] == 32 and sizes[6] == 32 and sizes[7] == 64
    for p in parts.values():
        assert int(str(p["start"])) % 2048 == 0


def test_filesystems_and_labels(built: Built) -> None:
    p1 = blkid(built, 1)
    assert p1["TYPE"] == "vfat" and p1["LABEL"] == "LIVENG"
    assert p1["UUID"] == layout.fat_serial(built.image_id)
    assert blkid(built, 2)["TYPE"] == "iso9660" and blkid(built, 2)["LABEL"] == "LIVENG_SYSTEM"
    assert blkid(built, 5)["TYPE"] == "iso9660" and blkid(built, 5)["LABEL"] == "LIVENG_SLOT_A"
    assert "TYPE" not in blkid(built, 6)  # slot B is empty until the first kernel update
    p7 = blkid(built, 7)
    assert p7["TYPE"] == "ext4" and p7["LABEL"] == f"liveng-{built.image_id}"


def test_system_partition_files_and_manifest(built: Built) -> None:
    iso = extract(built, 2)
    files = iso_files(iso)
    assert set(files) == {layout.KERNEL_PATH, layout.INITRD_PATH, layout.SQUASHFS_PATH, layout.MANIFEST_PATH,
                          layout.IMAGE_INFO_PATH}
    out = built.workdir / "sys"
    sh("xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/", out)
    manifest = (out / layout.MANIFEST_PATH).read_text().splitlines()
    assert len(manifest) == 4
    for line in manifest:
        digest, name = line.split("  ", 1)
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    info = json.loads((out / layout.IMAGE_INFO_PATH).read_text())
    assert info["id"] == built.image_id and info["kernel"] == fixture.KERNEL
    # The kernel on p2 is the rootfs's kernel.
    assert files[layout.KERNEL_PATH] == 3 << 20


def test_kernel_slot_a(built: Built) -> None:
    files = iso_files(extract(built, 5))
    assert {layout.KERNEL_PATH, layout.INITRD_PATH, layout.SLOT_INFO_PATH} <= set(files)
    assert layout.SQUASHFS_PATH not in files


def test_boot_partition(built: Built) -> None:
    part = partitions(built.image)[1]
    spec = f"{built.image}@@{int(str(part['start'])) * 512}"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    listing = subprocess.run(["mdir", "-/", "-b", "-i", spec, "::/"], capture_output=True, text=True,
                             check=True, env=env).stdout
    # UEFI: Debian's signed shim, MokManager and GRUB on the removable path, no fallback (fbx64.efi);
    # the signed GRUB's config stub in both places it may look (the menu is boot/grub/grub.cfg).
    for name in ("EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/grubx64.efi", "EFI/BOOT/mmx64.efi", "EFI/BOOT/grub.cfg",
                 "EFI/debian/grub.cfg", "boot/grub/grub.cfg"):
        assert f"::/{name}" in listing
    assert "fbx64" not in listing.lower()
    for stub in ("EFI/BOOT/grub.cfg", "EFI/debian/grub.cfg"):
        text = subprocess.run(["mtype", "-i", spec, f"::/{stub}"], capture_output=True, text=True, check=True,
                              env=env).stdout
        assert f"--fs-uuid --set=root {layout.fat_serial(built.image_id)}" in text
        assert "configfile ($root)/boot/grub/grub.cfg" in text
    cfg = subprocess.run(["mtype", "-i", spec, "::/boot/grub/grub.cfg"], capture_output=True, text=True,
                         check=True, env=env).stdout
    assert f"liveng.id={built.image_id}" in cfg
    assert f"persistence-label=liveng-{built.image_id}" in cfg
    assert " quiet " in cfg  # the recipe's cmdline addition
    example = subprocess.run(["mtype", "-i", spec, f"::/{layout.SETTINGS_PATH}"], capture_output=True, text=True,
                             check=True, env=env).stdout
    assert settings.loads(example, "p1").empty  # the commented example: applies nothing as it is
    efi = subprocess.run(["mtype", "-i", spec, "::/EFI/BOOT/BOOTX64.EFI"], capture_output=True, check=True,
                         env=env).stdout
    assert efi[:2] == b"MZ"
    env_block = subprocess.run(["mtype", "-i", spec, f"::/{layout.GRUBENV_PATH}"], capture_output=True, check=True,
                               env=env).stdout
    assert grubenv.parse(env_block) == {"liveng_order": "0 2", "liveng_tries": "3", "liveng_mode": "persistent"}
    backup = subprocess.run(["mtype", "-i", spec, f"::/{layout.GRUBENV_BACKUP_PATH}"], capture_output=True,
                            check=True, env=env).stdout
    assert backup == env_block and len(backup) == grubenv.SIZE


def test_bios_boot_code(built: Built) -> None:
    raw = built.image.read_bytes()[: 2048 * 512]
    boot_img = (grub.GRUB_LIB / "i386-pc/boot.img").read_bytes()
    assert raw[:440] == boot_img[:440]
    assert raw[510:512] == b"\x55\xaa"
    assert raw[512:1024] != bytes(512)  # core.img follows the MBR


def test_persistence_partition(built: Built) -> None:
    p7 = extract(built, 7)
    conf = sh("debugfs", "-R", "cat /persistence.conf", p7)
    assert conf == "/ union\n"
    # Every mount of p7 allocates at write time (durable.PERSISTENCE_MOUNT_DEFAULTS).
    defaults = sh("dumpe2fs", "-h", p7).split("Default mount options:")[1].splitlines()[0].split()
    assert "nodelalloc" in defaults


def test_rootfs_customisation(built: Built) -> None:
    sq = built.workdir / "fs.squashfs"
    sys_dir = built.workdir / "sys"
    if not sys_dir.exists():
        sh("xorriso", "-osirrox", "on", "-indev", extract(built, 2), "-extract", "/", sys_dir)
    sq = sys_dir / layout.SQUASHFS_PATH
    tree = built.workdir / "tree"
    sh("unsquashfs", "-no-progress", "-d", tree, sq)
    assert (tree / "etc/hostname").read_text() == "layout-test\n"
    assert (tree / "etc/motd").read_text() == "welcome to liveng\n"
    # [services] enable: the unit the recipe brought with [[files]], enabled as its [Install] says.
    assert (tree / "etc/systemd/system/multi-user.target.wants/hello.service").is_symlink()
    assert (tree / "etc/motd").stat().st_mode & 0o777 == 0o600
    assert (tree / "usr/sbin/liveng").stat().st_mode & 0o111
    assert (tree / "usr/lib/python3/dist-packages/liveng/layout.py").exists()
    assert (tree / "usr/lib/python3/dist-packages/liveng/device/cli.py").exists()
    assert not (tree / "usr/lib/python3/dist-packages/liveng/host").exists()
    # The device side is complete and needs nothing but the standard library (-S: no site-packages,
    # so the liveng installed on this host cannot stand in for a missing module).
    # Every device module is imported (the CLI imports them lazily, when a command needs them).
    code = ("import sys, importlib, pkgutil; sys.path.insert(0, sys.argv[1]); import liveng.device; "
            "[importlib.import_module(m.name) for m in "
            "pkgutil.iter_modules(liveng.device.__path__, 'liveng.device.')]; "
            "print(sorted(m for m in sys.modules if m.startswith('liveng')))")
    modules = sh(sys.executable, "-S", "-c", code, tree / "usr/lib/python3/dist-packages")
    assert "liveng.device.kernel" in modules and "liveng.device.cli" in modules and "liveng.grubenv" in modules
    for hook in ("etc/initramfs/post-update.d/liveng", "etc/kernel/postinst.d/zz-liveng"):
        assert (tree / hook).stat().st_mode & 0o111, hook
    assert (tree / "etc/systemd/system/multi-user.target.wants/liveng-boot-ok.service").is_symlink()
    # A slow board's coldplug may take longer than systemd's 90 s for the serial console to appear.
    assert "DefaultDeviceTimeoutSec=600s" in (tree / "etc/systemd/system.conf.d/liveng.conf").read_text()
    # No password anywhere: root is locked, the user has a key but no password.
    shadow = {line.split(":")[0]: line.split(":")[1] for line in (tree / "etc/shadow").read_text().splitlines()}
    assert shadow["root"] == "*"
    assert shadow["pi"] in ("!", "*", "!*")
    assert (tree / "home/pi/.ssh/authorized_keys").read_text() == SSH_KEY + "\n"
    # Per-device identity is not baked in; autologin is off unless asked for.
    assert (tree / "etc/machine-id").read_text() == ""
    assert not list((tree / "etc/ssh").glob("ssh_host_*"))
    assert not (tree / "etc/systemd/system/serial-getty@.service.d").exists()
    sources = (tree / "etc/apt/sources.list.d/debian.sources").read_text()
    assert "URIs: http://mirror.example/debian" in sources and "Suites: trixie trixie-updates" in sources
    assert not (tree / "etc/apt/sources.list").exists()
    assert not list((tree / "var/lib/apt/lists").glob("*InRelease"))
    assert (tree / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service").is_symlink()
    # Settings: SSH on (a user has a key) with the keys made at the first boot, root never with a password.
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    assert (wants / "ssh.service").is_symlink() and (wants / "liveng-settings.service").is_symlink()
    assert (wants / "liveng-ssh-keygen.service").is_symlink()
    assert os.readlink(tree / "etc/systemd/system-generators/systemd-ssh-generator") == "/dev/null"
    sshd = (tree / configfiles.SSHD_DROPIN_PATH).read_text()
    assert "PermitRootLogin prohibit-password" in sshd and "PasswordAuthentication no" in sshd
    assert os.readlink(tree / "etc/localtime") == "/usr/share/zoneinfo/Europe/Berlin"
    assert 'XKBLAYOUT="de"' in (tree / configfiles.KEYBOARD_PATH).read_text()
    wifi = tree / configfiles.WIFI_CONF_PATH
    assert wifi.stat().st_mode & 0o777 == 0o600 and "layout-passphrase" not in wifi.read_text()
    assert f"psk={configfiles.wifi_psk('layout', 'layout-passphrase')}" in wifi.read_text()
    # Every Wi-Fi interface gets Debian's wpa_supplicant@ on that configuration, and DHCP.
    dropin = (tree / "etc/systemd/system/wpa_supplicant@.service.d/liveng.conf").read_text()
    assert f"-c/{configfiles.WIFI_CONF_PATH}" in dropin and "After=liveng-settings.service" in dropin
    assert "wpa_supplicant@$name.service" in (tree / "etc/udev/rules.d/90-liveng-wifi.rules").read_text()
    assert "Type=wlan" in (tree / "etc/systemd/network/81-liveng-wifi.network").read_text()


def test_inspect(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--json", str(built.image)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["info"]["id"] == built.image_id
    assert [p["number"] for p in data["partitions"]] == [1, 2, 3, 5, 6, 7]


def test_inspect_shows_the_device_status_offline(built: Built, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "copy.img"
    subprocess.run(["cp", "--sparse=always", built.image, image], check=True)
    assert main(["inspect", str(image)]) == 0
    out = capsys.readouterr().out
    assert "boot:    order slot-a factory, tries 3" in out
    assert f"slot A:  kernel {fixture.KERNEL}" in out and "slot B:  empty" in out
    assert "delta:   none yet (never booted)" in out and "pending: nothing" in out
    assert "settings: liveng-settings.toml sets nothing (the commented example)" in out
    # What a used device holds on p7: a delta, a snapshot, a pending restore (written with debugfs).
    p7 = partitions(image)[7]
    target = f"{image}?offset={int(str(p7['start'])) * 512}"
    files = tmp_path / "files"
    files.mkdir()
    (files / "data").write_bytes(b"x" * 5000)
    (files / "snap").write_bytes(b"y" * 3000)
    (files / "pending").write_text(Request(action="restore", snapshot="s1", created="2026-01-02T03:04:05Z").text())
    commands = ["mkdir rw", "mkdir rw/etc", f"write {files / 'data'} rw/etc/data", "mkdir liveng",
                "mkdir liveng/snapshots", f"write {files / 'snap'} liveng/snapshots/s1.tar.zst",
                f"write {files / 'pending'} liveng/pending"]
    script = tmp_path / "cmds"
    script.write_text("\n".join(commands) + "\n")
    sh("debugfs", "-w", "-f", script, target)
    assert main(["inspect", "--json", str(image)]) == 0
    st = json.loads(capsys.readouterr().out)["status"]
    assert st["persistence"]["delta_bytes"] == 5000 and st["persistence"]["booted"]
    assert st["persistence"]["snapshots"] == [{"name": "s1", "size": 3000}]
    assert st["persistence"]["pending"].startswith("restore of snapshot s1")
    assert st["errors"] == [] and not st["persistence"]["switch_in_progress"]
    # A boot-menu reset not finished (its rw.reset left) is a switch the next boot finishes.
    script.write_text(f"mkdir {layout.RESET_DELTA_DIR}\n")
    sh("debugfs", "-w", "-f", script, target)
    assert main(["inspect", "--json", str(image)]) == 0
    assert json.loads(capsys.readouterr().out)["status"]["persistence"]["switch_in_progress"]
    # An updated system on p7 owning rw, the factory system's delta parked (what an update leaves).
    meta = bundle.Metadata(version="2", target="pc", arch="amd64", layout=layout.LAYOUT_VERSION, built="now",
                           kernel=fixture.KERNEL, system_size=4096, system_sha256="ab" * 32,
                           files={f: "cd" * 32 for f in (layout.KERNEL_PATH, layout.INITRD_PATH, layout.SQUASHFS_PATH)})
    (files / "meta").write_bytes(meta.to_json())
    name, owner = meta.system_name, layout.DELTA_OWNER_PREFIX + meta.system_name
    script.write_text("\n".join([f"rmdir {layout.RESET_DELTA_DIR}", f"mkdir {layout.SYSTEMS_DIR}",
                                 f"mkdir {layout.SYSTEMS_DIR}/{name}", f"mkdir {layout.SYSTEMS_DIR}/.{name}.new",
                                 f"write {files / 'meta'} {layout.SYSTEMS_DIR}/{name}/{layout.SYSTEM_META_NAME}",
                                 f"write {files / 'snap'} {layout.SYSTEMS_DIR}/{name}/{layout.SYSTEM_ISO_NAME}",
                                 f"mkdir {layout.DELTAS_DIR}", f"mkdir {layout.DELTAS_DIR}/{layout.SYSTEM_FACTORY}",
                                 f"write /dev/null {owner}"]) + "\n")
    sh("debugfs", "-w", "-f", script, target)
    assert main(["inspect", "--json", str(image)]) == 0
    report = json.loads(capsys.readouterr().out)
    systems, factory_version = report["status"]["systems"], report["info"]["version"]
    assert systems == {layout.SYSTEM_FACTORY: {"version": factory_version, "where": "p2", "slots": ["a"],
                                               "delta": "parked"},
                       name: {"version": "2", "where": "p7", "size": 3000, "slots": [], "delta": "rw"}}, systems
    assert main(["inspect", str(image)]) == 0
    assert f"system {name}: version 2 on p7, kernel slots none, delta rw" in capsys.readouterr().out
    # The owner's settings on p1, as inspect sees them: what they set, secrets not yet applied, invalid.
    p1 = f"{image}@@{int(str(partitions(image)[1]['start'])) * 512}"
    (files / "settings").write_text('hostname = "x"\n[[users]]\nname = "pi"\npassword_hash = "$6$a$b"\n')
    sh("mcopy", "-o", "-i", p1, files / "settings", f"::/{layout.SETTINGS_PATH}")
    assert main(["inspect", str(image)]) == 0
    assert "settings: liveng-settings.toml sets hostname, users; holds secrets: not applied yet" in \
        capsys.readouterr().out
    (files / "settings").write_text('hostname = "X"\n')
    sh("mcopy", "-o", "-i", p1, files / "settings", f"::/{layout.SETTINGS_PATH}")
    assert main(["inspect", str(image)]) == 0
    assert "settings: INVALID, the device will apply none of it: liveng-settings.toml: hostname: 'X'" in \
        capsys.readouterr().out
    # A damaged primary grubenv (not UTF-8): the backup is read, and inspect says so.
    (files / "grubenv").write_bytes(b"\xff" * grubenv.SIZE)
    sh("mcopy", "-o", "-i", p1, files / "grubenv", f"::/{layout.GRUBENV_PATH}")
    assert main(["inspect", str(image)]) == 0
    out = capsys.readouterr().out
    assert "boot:    order slot-a factory, tries 3, last good none (from the backup copy)" in out
    assert "the primary copy is damaged" in out


def test_inspect_rejects_non_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(4096))
    assert main(["inspect", str(junk)]) == 2
    assert "junk.img" in capsys.readouterr().err


def test_autologin_and_slot_too_small(tmp_path: Path, built: Built) -> None:
    r = recipes.loads('target = "pc"\nmirror = "http://m.example/debian"\nsecurity_mirror = "none"\nautologin = true\n'
                      "[sizes]\nboot = 64\nslot = 32\npersistence = 64\n", "t.toml", tmp_path)
    tarball = built.workdir / "rootfs.tar"
    ctx = build(r, tmp_path / "a.img", rootfs_tarball=tarball, keep_workdir=True)
    assert (ctx.tree / "etc/systemd/system/serial-getty@.service.d/liveng-autologin.conf").exists()
    # An initrd that does not fit the slot is an error naming the key, and no image is left behind.
    big = fixture.make(tmp_path / "big.tar")
    import tarfile
    with tarfile.open(big, "a") as tar:
        tar.add(tmp_path / "a.img", arcname=f"./boot/initrd.img-{fixture.KERNEL}")
    from liveng.host.errors import BuildError

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BuildError, match=r"sizes\.slot"):
        build(r, out / "b.img", rootfs_tarball=big)
    assert list(out.iterdir()) == []
