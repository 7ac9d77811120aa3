"""liveng flash: refusals on a stand-in sysfs and /proc, writing and verifying a file, the host's own disk."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from liveng import layout
from liveng.host import disk, flash
from liveng.host.cli import main
from liveng.host.errors import FlashError, ImageError, UsageError

IMAGE_ID = "1234abcd"


def small_image(path: Path, persistence: int = layout.MiB) -> Path:
    """A liveng disk in miniature: the partition table, p1 with image.json, some data and holes."""
    extents, total = layout.plan(boot=4 * layout.MiB, system=layout.MiB, slot=layout.MiB, persistence=persistence)
    with open(path, "wb") as f:
        f.truncate(total)
    disk.write_table(path, IMAGE_ID, extents)
    fat = path.with_name("p1.fat")
    subprocess.run(["mkfs.fat", "-i", IMAGE_ID, "-C", str(fat), "4096"], check=True, capture_output=True)
    info = path.with_name("image.json")
    info.write_text(json.dumps({"id": IMAGE_ID, "arch": "amd64"}))
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    subprocess.run(["mmd", "-i", str(fat), "::/liveng"], check=True, env=env)
    subprocess.run(["mcopy", "-i", str(fat), str(info), "::/liveng/image.json"], check=True, env=env)
    with open(path, "r+b") as f:
        f.seek(extents[0].start)
        f.write(fat.read_bytes())
        f.seek(extents[1].start + 4096)
        f.write(os.urandom(300_000))
    return path


def test_writes_and_verifies_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = small_image(tmp_path / "liveng.img")
    out = tmp_path / "out"
    out.mkdir()
    target = out / "card.img"
    target.write_bytes(b"old content")
    assert main(["flash", str(image), str(target)]) == 0
    assert target.read_bytes() == image.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["card.img"]  # no temporary file left
    captured = capsys.readouterr()
    assert "written and verified" in captured.out
    assert "verified" in captured.err and "MiB/s" in captured.err and "(100 %)" in captured.err
    # Holes stay holes in a file target.
    assert os.stat(target).st_blocks * 512 < image.stat().st_size


def test_a_bad_read_back_fails_and_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = small_image(tmp_path / "liveng.img")
    real_pread = os.pread

    def corrupt(fd: int, n: int, offset: int) -> bytes:
        data = bytearray(real_pread(fd, n, offset))
        if offset <= 3 * layout.MiB < offset + len(data):
            data[3 * layout.MiB - offset] ^= 0xFF
        return bytes(data)

    monkeypatch.setattr(os, "pread", corrupt)
    target = tmp_path / "card.img"
    with pytest.raises(FlashError, match=f"differs from the image at byte {3 * layout.MiB}"):
        flash.flash(image, target)
    assert not target.exists() and not list(tmp_path.glob(".card.img*"))


def test_refuses_what_is_not_a_liveng_image_or_a_target(tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(1 << 20))
    with pytest.raises(ImageError):
        flash.flash(junk, tmp_path / "x.img")
    image = small_image(tmp_path / "liveng.img")
    with pytest.raises(UsageError, match="no such block device"):
        flash.flash(image, Path("/dev/liveng-no-such-disk"))
    with pytest.raises(UsageError, match="is the image itself"):
        flash.flash(image, image)
    with pytest.raises(UsageError, match="neither a block device nor a regular file"):
        flash.flash(image, tmp_path)


class FakeKernel:
    """A directory with sysfs's and /proc's shape: disks, partitions, a device-mapper device."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = flash.Host(sysfs=root / "sys", mountinfo=root / "mountinfo", swaps=root / "swaps")
        (root / "sys/dev/block").mkdir(parents=True)
        self.mounts: list[str] = []
        (root / "swaps").write_text("Filename Type Size Used Priority\n")

    def disk(self, name: str, major: int, minor: int, size_mib: int, parts: int = 0, model: str = "",
             removable: bool = False, ro: bool = False) -> Path:
        d = self.root / "sys/devices/virtual/block" / name
        (d / "holders").mkdir(parents=True)
        (d / "dev").write_text(f"{major}:{minor}\n")
        (d / "size").write_text(f"{size_mib * 2048}\n")
        (d / "removable").write_text("1\n" if removable else "0\n")
        (d / "ro").write_text("1\n" if ro else "0\n")
        if model:
            (d / "device").mkdir()
            (d / "device/vendor").write_text("Generic \n")
            (d / "device/model").write_text(model + "\n")
        (self.root / "sys/dev/block" / f"{major}:{minor}").symlink_to(d)
        for n in range(1, parts + 1):
            p = d / f"{name}{n}"
            (p / "holders").mkdir(parents=True)
            (p / "partition").write_text(f"{n}\n")
            (p / "dev").write_text(f"{major}:{minor + n}\n")
            (self.root / "sys/dev/block" / f"{major}:{minor + n}").symlink_to(p)
        return d

    def mount(self, majmin: str, where: str, fstype: str = "ext4", source: str = "/dev/x", opts: str = "rw") -> None:
        self.mounts.append(f"{len(self.mounts) + 20} 1 {majmin} / {where} rw - {fstype} {source} {opts}")
        (self.root / "mountinfo").write_text("\n".join(self.mounts) + "\n")


@pytest.fixture()
def kernel(tmp_path: Path) -> FakeKernel:
    k = FakeKernel(tmp_path)
    k.disk("sda", 8, 0, 100_000, parts=2, model="System SSD")
    k.mount("8:2", "/")
    k.disk("sdb", 8, 16, 32_000, parts=1, model="SD Card Reader", removable=True)
    k.disk("sdc", 8, 32, 8_000, parts=1)
    dm = k.disk("dm-0", 253, 0, 7_000)
    (dm / "slaves").mkdir()
    (dm / "slaves/sdc1").symlink_to(k.root / "sys/devices/virtual/block/sdc/sdc1")
    (k.root / "sys/devices/virtual/block/sdc/sdc1/holders/dm-0").symlink_to(dm)
    k.mount("253:0", "/var")
    k.disk("sdd", 8, 48, 16, model="Tiny")
    k.disk("sde", 8, 64, 64_000, model="Locked", ro=True)
    return k


def check(kernel: FakeKernel, major: int, minor: int, force: bool = False, size: int = 20 * layout.MiB) -> flash.Disk:
    return flash.check_block_target(Path(f"/dev/x{major}-{minor}"), os.makedev(major, minor), size, force,
                                    kernel.host)


def test_block_targets(kernel: FakeKernel, capsys: pytest.CaptureFixture[str]) -> None:
    card = check(kernel, 8, 16)
    assert card.name == "sdb" and card.size == 32_000 * layout.MiB and card.removable
    assert card.describe() == "Generic SD Card Reader, 31.2 GiB, removable"
    assert flash.system_disks(kernel.host) == {"sda": "/", "sdc": "/var"}
    with pytest.raises(UsageError, match=r"holds the running system \(/ is on it\).*--force"):
        check(kernel, 8, 0)
    with pytest.raises(UsageError, match=r"holds the running system \(/var is on it\)"):
        check(kernel, 8, 32)  # under device mapper
    with pytest.raises(UsageError, match="is a partition: give the whole disk, /dev/sdb"):
        check(kernel, 8, 17)
    with pytest.raises(UsageError, match=r"is too small: the image needs 20\.0 MiB"):
        check(kernel, 8, 48)
    with pytest.raises(UsageError, match="read-only"):
        check(kernel, 8, 64)
    # A mounted partition, then swap.
    kernel.mount("8:17", "/media/card", "vfat")
    with pytest.raises(UsageError, match=r"sdb1 is mounted on /media/card\. Unmount it first"):
        check(kernel, 8, 16)
    assert check(kernel, 8, 16, force=True).name == "sdb"
    assert "WARNING" in capsys.readouterr().err
    kernel.mounts.pop()
    (kernel.root / "mountinfo").write_text("\n".join(kernel.mounts) + "\n")
    dev = kernel.root / "dev"
    dev.mkdir()
    (dev / "sdb1").touch()
    (kernel.root / "swaps").write_text(f"Filename Type\n{dev / 'sdb1'} partition 100 0 -2\n")
    with pytest.raises(UsageError, match="sdb1 is in use as swap"):
        check(kernel, 8, 16)


def test_live_system_disk_through_overlayfs(tmp_path: Path) -> None:
    k = FakeKernel(tmp_path)
    k.disk("mmcblk0", 179, 0, 30_000, parts=7)
    k.mount("0:30", "/", "overlay", "overlay",
            "rw,lowerdir=/run/live/rootfs/filesystem.squashfs,upperdir=/run/live/persistence/mmcblk0p7/rw")
    k.mount("179:2", "/run/live/medium", "iso9660")
    k.mount("7:0", "/run/live/rootfs/filesystem.squashfs", "squashfs")
    k.mount("179:7", "/run/live/persistence/mmcblk0p7")
    assert flash.system_disks(k.host, ("/",)) == {"mmcblk0": "/"}


def test_refuses_the_disk_holding_this_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On the real machine: the disk under / is found independently with lsblk, and refused."""
    source = subprocess.run(["findmnt", "-no", "SOURCE", "/"], capture_output=True, text=True).stdout.strip()
    if not source.startswith("/dev/"):
        pytest.skip(f"/ is not on a block device here ({source})")
    disks = subprocess.run(["lsblk", "-nso", "NAME,TYPE", source], capture_output=True, text=True,
                           check=True).stdout.split("\n")
    whole = next(line.split()[0].lstrip("|`-─└├ ") for line in disks if line.split()[-1:] == ["disk"])
    image = small_image(tmp_path / "liveng.img")
    assert main(["flash", str(image), f"/dev/{whole}"]) == 2
    err = capsys.readouterr().err
    assert f"/dev/{whole}" in err and "holds the running system (/ is on it)" in err


@pytest.fixture()
def loop_device(tmp_path: Path) -> Iterator[Path]:
    """A real block device over a file (root only): the write, verify and O_EXCL paths on a disk."""
    if os.geteuid() != 0:
        pytest.skip("a loop device needs root")
    backing = tmp_path / "disk.bin"
    with open(backing, "wb") as f:
        f.truncate(16 * layout.MiB)
    proc = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"no loop device here: {proc.stderr.strip()}")
    dev = Path(proc.stdout.strip())
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "--detach", str(dev)], check=False)


def test_writes_and_verifies_a_block_device(tmp_path: Path, loop_device: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    image = small_image(tmp_path / "liveng.img")
    with open(loop_device, "r+b") as f:
        f.write(b"\xaa" * (16 * layout.MiB))  # old content everywhere, holes of the image included
    assert main(["flash", str(image), str(loop_device)]) == 0
    out, err = capsys.readouterr()
    assert f"loop device on {tmp_path / 'disk.bin'}" in err and "16.0 MiB" in err
    size = image.stat().st_size
    with open(loop_device, "rb") as f:
        written = f.read(size)
    built = image.read_bytes()
    # The image, but for the two sectors of the table that grew to the disk (the MBR: p3's size; the
    # EBR in front of p7: p7's size).
    changed = [i for i in range(0, size, layout.SECTOR) if written[i:i + layout.SECTOR] != built[i:i + layout.SECTOR]]
    before, after = disk.read_table(image), disk.read_table(loop_device)
    p7 = after.entry(7)
    assert len(changed) == 2 and changed[0] == 0 and changed[1] < p7.start, changed
    assert after.entry(3).start + after.entry(3).size == p7.start + p7.size == 16 * layout.MiB
    assert p7.size == before.entry(7).size + 4 * layout.MiB
    assert [e for e in after.entries if e.number not in (3, 7)] == \
        [e for e in before.entries if e.number not in (3, 7)]
    assert "persistence partition grown to 5.0 MiB" in out
    # Flashed again to a disk it fills: the table stays as built.
    with open(loop_device, "r+b") as f:
        f.write(b"\xaa" * (16 * layout.MiB))
    (tmp_path / "fills").mkdir()
    fills = small_image(tmp_path / "fills" / "liveng.img", persistence=5 * layout.MiB)
    assert fills.stat().st_size == 16 * layout.MiB
    assert main(["flash", str(fills), str(loop_device)]) == 0
    assert "grown" not in capsys.readouterr().out
    assert disk.read_table(loop_device) == disk.read_table(fills)
    # Someone else holds it open exclusively (as a mount would): refused, nothing written.
    held = os.open(loop_device, os.O_RDONLY | os.O_EXCL)
    try:
        with pytest.raises(FlashError, match="cannot open it for writing"):
            flash.flash(image, loop_device)
    finally:
        os.close(held)
    # Too small for a bigger image.
    big = tmp_path / "big.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(big)], check=True)
    with open(big, "r+b") as f:
        f.truncate(32 * layout.MiB)
    with pytest.raises(UsageError, match="is too small"):
        flash.flash(big, loop_device)


def test_a_fixed_disk_needs_a_yes(kernel: FakeKernel) -> None:
    k = kernel
    k.disk("sdf", 8, 80, 64_000, model="Data HDD")
    disk = check(k, 8, 80)
    target = Path("/dev/sdf")
    with pytest.raises(UsageError, match=r"/dev/sdf \(Generic Data HDD, 62\.5 GiB, fixed\) is a fixed disk.*--yes"):
        flash.confirm_fixed(target, disk, yes=False, ask=None)
    with pytest.raises(UsageError, match="not confirmed; nothing was written"):
        flash.confirm_fixed(target, disk, yes=False, ask=lambda q: "y")
    flash.confirm_fixed(target, disk, yes=False, ask=lambda q: "yes\n")
    flash.confirm_fixed(target, disk, yes=True, ask=None)
    flash.confirm_fixed(Path("/dev/sdb"), check(k, 8, 16), yes=False, ask=None)  # a card: no question
    # A card in a built-in reader and a loop device: no question, and not called fixed in the messages.
    for name, minor in (("mmcblk0", 0), ("loop3", 3)):
        d = k.disk(name, 179 if name.startswith("mmc") else 7, minor, 16_000)
        if name.startswith("loop"):
            (d / "loop").mkdir()
        found = check(k, 179 if name.startswith("mmc") else 7, minor)
        assert not found.fixed and found.describe().endswith(", removable"), found
        flash.confirm_fixed(Path(f"/dev/{name}"), found, yes=False, ask=None)
