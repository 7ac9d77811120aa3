"""Encrypted persistence: p7 is LUKS2, unlocked by the key file in the initramfs or by the passphrase
typed on the serial console; resize, snapshots, a kernel update (new initramfs in slot B), a system
update (version 2 from p7, unlocked by its own initramfs; LIVENG_LONG_TESTS=1) and install onto
another disk work."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import pexpect
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from liveng import layout
from liveng.host import flash
from liveng.host.disk import read_table
from liveng.host.inspect import ext4_superblock
from tests.boot.conftest import build_channel, build_image, update_recipe
from tests.boot.test_update import HOST, ustatus
from tests.httpserve import serve
from tests.vm import Vm, VmError

LONG = os.environ.get("LIVENG_LONG_TESTS") == "1"

pytestmark = pytest.mark.boot

PASSPHRASE = "correct horse battery staple"
PROMPT = "Passphrase for the liveng persistence partition"
RECIPE = """
[persistence]
encryption = "luks2"
passphrase_file = "passphrase.txt"
key_file = "persistence.key"
kdf_memory = 64
"""


@pytest.fixture(scope="session")
def luks_image(boot_dir: Path, update_key: tuple[Path, Path]) -> Path:
    workdir = boot_dir / "luks"
    workdir.mkdir(exist_ok=True)
    (workdir / "passphrase.txt").write_text(PASSPHRASE + "\n")
    (workdir / "persistence.key").write_bytes(secrets.token_bytes(64))
    return build_image(workdir, "trixie", "luks", extra=update_recipe(update_key[1], "1") + RECIPE)


@pytest.fixture(scope="session")
def luks_v2_channel(luks_image: Path, boot_dir: Path, update_key: tuple[Path, Path]) -> Path:
    """Version 2 of the LUKS image: the same recipe and key file (its initramfs unlocks p7 too)."""
    return build_channel(boot_dir, update_key, "luks-v2", extra=RECIPE, workdir=luks_image.parent)


def p7_offset(image: Path) -> int:
    return read_table(image).entry(layout.partition(layout.Role.PERSISTENCE).number).start


def check_p7_on_host(image: Path, image_id: str, workdir: Path) -> None:
    """p7 is a LUKS2 header, not ext4; with the passphrase its first sectors hold liveng's ext4."""
    offset = p7_offset(image)
    probe = subprocess.run(["blkid", "-p", "-O", str(offset), "-o", "export", str(image)],
                           capture_output=True, text=True, check=True).stdout
    assert "TYPE=crypto_LUKS" in probe and "VERSION=2" in probe, probe
    assert ext4_superblock(image, offset) is None, "p7 opens as plain ext4"
    header = workdir / "p7-header"
    with open(image, "rb") as f:
        f.seek(offset)
        header.write_bytes(f.read(32 * layout.MiB))
    subprocess.run(["cryptsetup", "isLuks", "--type", "luks2", str(header)], check=True)
    passfile = workdir / "passphrase.txt"
    dump = subprocess.run(["cryptsetup", "luksDump", "--dump-volume-key", "--batch-mode", "--key-file",
                           str(passfile), str(header)], capture_output=True, text=True)
    if dump.returncode != 0:  # the file has a line end; what is typed does not
        passfile.write_text(PASSPHRASE)
        dump = subprocess.run(["cryptsetup", "luksDump", "--dump-volume-key", "--batch-mode", "--key-file",
                               str(passfile), str(header)], capture_output=True, text=True, check=True)
    key_hex = "".join(dump.stdout.split("MK dump:", 1)[1].split())
    json_info = json.loads(subprocess.run(["cryptsetup", "luksDump", "--dump-json-metadata", str(header)],
                                          capture_output=True, text=True, check=True).stdout)
    data_offset = int(json_info["segments"]["0"]["offset"])
    # The ext4 superblock: 1024 bytes into the decrypted data, sectors 2 and 3 (aes-xts-plain64).
    sector = header.read_bytes()[data_offset + 1024:data_offset + 1536]
    plain_sb = Cipher(algorithms.AES(bytes.fromhex(key_hex)), modes.XTS((2).to_bytes(16, "little"))
                      ).decryptor().update(sector)
    assert plain_sb[0x38:0x3A] == b"\x53\xef"
    assert plain_sb[0x78:0x88].rstrip(b"\0").decode() == layout.persistence_label(image_id)


def answer_passphrase(vm: Vm, wrong_first: bool) -> float:
    """Wait for liveng's prompt on the serial console and type the passphrase; returns seconds to the prompt."""
    start = time.monotonic()
    try:
        vm.proc.expect_exact(PROMPT, timeout=600)
        if wrong_first:
            vm.proc.sendline("not the passphrase")
            vm.proc.expect_exact(PROMPT, timeout=300)
        vm.proc.sendline(PASSPHRASE)
    except (pexpect.TIMEOUT, pexpect.EOF) as exc:
        raise VmError(f"no passphrase prompt; console log: {vm.log}") from exc
    return time.monotonic() - start


def flash_to_bigger_disk(image: Path, disk: Path, extra: int) -> bool:
    """``image`` written by `liveng flash` to a loop device over ``disk``, ``extra`` bytes bigger than
    the image, as to a bigger card: p3 and p7 grow in the partition table on the host. Where no loop
    device can be had (not root, none free) ``disk`` is a plain copy grown by ``extra`` and the first
    boot grows the table itself (as after Raspberry Pi Imager or dd); returns whether it was flashed."""
    size = image.stat().st_size
    with open(disk, "wb") as f:
        f.truncate(size + extra)
    proc = subprocess.run(["losetup", "--find", "--show", str(disk)], capture_output=True, text=True)
    if os.geteuid() != 0 or proc.returncode != 0:
        print(f"no loop device ({proc.stderr.strip()}): a copy of the image instead of liveng flash")
        subprocess.run(["cp", "--sparse=always", image, disk], check=True)
        with open(disk, "r+b") as f:
            f.truncate(size + extra)
        return False
    dev = Path(proc.stdout.strip())
    try:
        summary = flash.flash(image, dev)
    finally:
        subprocess.run(["losetup", "--detach", str(dev)], check=True)
    print(summary)
    p7 = read_table(disk).entry(layout.partition(layout.Role.PERSISTENCE).number)
    assert p7.start + p7.size == size + extra, (summary, p7)
    return True


def test_luks_persistence(luks_image: Path, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    image_id = read_table(luks_image).image_id
    check_p7_on_host(luks_image, image_id, luks_image.parent)
    disk = tmp_path / "disk.img"
    # One GiB more than built: `liveng flash` grows the table, the resize service the LUKS mapping and the ext4.
    flashed = flash_to_bigger_disk(luks_image, disk, 1024 * layout.MiB)
    with open(disk, "rb") as f:
        mbr = f.read(layout.SECTOR)
    token = secrets.token_hex(8)
    log = tmp_path / "console.log"
    target = tmp_path / "target.img"  # for liveng install at the end
    with open(target, "wb") as f:
        f.truncate(2048 * layout.MiB)
    with Vm(disk, log, disks=(target,)) as vm:
        # The key file in the initramfs unlocks p7: nobody types anything.
        print(f"power-on to shell (key file): {vm.wait_shell():.1f} s")
        assert "persistence-encryption=luks" in vm.sh("cat /proc/cmdline")
        upper_dev = vm.sh("findmnt -no SOURCE --target /run/live/persistence/vda7")
        assert upper_dev == "/dev/mapper/vda7"
        assert vm.sh("findmnt -no FSTYPE /") == "overlay"
        assert "upperdir=/run/live/persistence/vda7/rw" in vm.sh("findmnt -no OPTIONS /")
        assert vm.sh("lsblk -no TYPE /dev/mapper/vda7") == "crypt"
        assert vm.sh("blkid -s TYPE -o value /dev/vda7") == "crypto_LUKS"
        assert vm.sh("blkid -s LABEL -o value /dev/mapper/vda7") == layout.persistence_label(image_id)
        status = vm.sh("cryptsetup status vda7")
        assert "LUKS2" in status and "/dev/vda7" in status
        # Resize at boot: partition, mapping and ext4 grew by about the GiB added.
        vm.sh("while [ \"$(systemctl is-active liveng-resize.service)\" = activating ]; do sleep 1; done")
        assert vm.sh("systemctl is-active liveng-resize.service") == "active"
        size_mib = int(vm.sh("df -BM --output=size /run/live/persistence/vda7 | tail -1").strip().rstrip("M"))
        assert size_mib > 1800, f"p7 did not grow: {size_mib} MiB"
        assert "already fills the disk" in vm.sh("liveng resize")
        if flashed:  # a card written by liveng flash never has its MBR written on the device
            vm.sh("sync")
            with open(disk, "rb") as f:
                assert f.read(layout.SECTOR) == mbr, "the device wrote the MBR of a card liveng flash had grown"
        assert json.loads(vm.sh("liveng status --json"))["persistence"]["encrypted"] is True
        vm.sh(f"echo {token} > /root/luks-token")
        assert "written to" in vm.sh("liveng snapshot create before-update", timeout=600)
        # A kernel update without the key file: the new initramfs (slot B) holds none, so the next
        # boot asks for the passphrase. It also shows cryptsetup and liveng-luks in a rebuilt initramfs.
        vm.sh("rm /etc/liveng/persistence.key")
        vm.sh("update-initramfs -u", timeout=900)
        assert json.loads(vm.sh("liveng kernel status --json"))["order"][0] == "slot-b"
        vm.proc.sendline("sync; systemctl reboot")
        vm.started = time.monotonic()
        print(f"reboot to the passphrase prompt: {answer_passphrase(vm, wrong_first=True):.1f} s")
        print(f"reboot to shell (passphrase typed): {vm.wait_shell():.1f} s")
        assert "liveng.boot=slot-b" in vm.sh("cat /proc/cmdline")
        assert vm.sh("cat /root/luks-token") == token
        assert vm.sh("findmnt -no SOURCE --target /run/live/persistence/vda7") == "/dev/mapper/vda7"
        assert "before-update" in vm.sh("liveng snapshot list")
        running = None
        if LONG:  # CI's 45 minutes: the system update itself is tested on the PC, arm64 and RAM mode
            # A system update on encrypted persistence: version 2 (its ISO on the LUKS p7) into slot A;
            # its initramfs holds the key file again, so nobody types anything.
            with serve(request.getfixturevalue("luks_v2_channel")) as channel:
                out = vm.sh(f"liveng update apply http://{HOST}:{channel.port}/", timeout=2400)
            assert "system 2 installed" in out and "slot A" in out, out
            print(f"reboot into system version 2: {vm.reboot():.1f} s")
            st = ustatus(vm)
            assert st["version"] == "2" and str(st["running"]).startswith("2_"), st
            assert "liveng.boot=slot-a" in vm.sh("cat /proc/cmdline")
            assert vm.sh("findmnt -no SOURCE --target /run/live/persistence/vda7") == "/dev/mapper/vda7"
            assert vm.sh("cat /root/luks-token") == token  # /root is kept
            running = st["running"]
        # Last (the copy's LUKS partition would be one more for live-boot to ask about at a boot):
        # install onto the second disk; its p7 gets this p7's LUKS header (and the running system 2).
        out = vm.sh("liveng install /dev/vdb --with-delta --yes", timeout=1200)
        assert "installed on /dev/vdb" in out, out
        assert running is None or f"copying system {running}" in out, out
        vm.poweroff()
    offset = p7_offset(disk)
    assert ext4_superblock(disk, offset) is None
    assert read_table(target).image_id == image_id
    # The installed p7: LUKS2 that the same passphrase opens, with liveng's ext4 inside.
    check_p7_on_host(target, image_id, luks_image.parent)
