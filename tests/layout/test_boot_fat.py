"""p1's FAT32: the files the device rewrites never share a FAT or directory sector with the boot files
(liveng/host/fatlayout.py). Made with the build's own function from a tree shaped like p1's, then
rewritten as the device does (new names, renames over, deletions) by another FAT writer, mtools."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from liveng import layout
from liveng.host import fatlayout, filesystems
from liveng.host.errors import BuildError
from tests.boot.p1fence import boot_sector_changes
from tests.layout.image import Built, partitions

ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def mtools(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True, env=ENV).stdout


def trees(base: Path, root_files: int) -> tuple[Path, Path]:
    static, runtime = base / "static", base / "runtime"
    (static / "EFI/BOOT").mkdir(parents=True)
    (static / "EFI/BOOT/BOOTX64.EFI").write_bytes(os.urandom(300_000))
    (static / layout.GRUB_DIR).mkdir(parents=True)
    (static / layout.GRUB_CFG_PATH).write_text(os.urandom(2403).hex())  # 10 clusters, like the real menu
    (static / "liveng").mkdir()
    (static / layout.IMAGE_INFO_PATH).write_text("{}\n")
    for i in range(root_files):  # short names: one directory slot each, so the root's fill is chosen
        (static / f"FW{i:03d}.BIN").write_bytes(os.urandom(700))
    (runtime / layout.BOOT_STATE_DIR).mkdir(parents=True)
    (runtime / layout.GRUBENV_PATH).write_bytes(b"#" * 1024)
    (runtime / layout.GRUBENV_BACKUP_PATH).write_bytes(b"#" * 1024)
    (runtime / layout.SETTINGS_PATH).write_text("# settings\n")
    return static, runtime


def clusters(image: Path, path: str) -> list[int]:
    out = mtools("mshowfat", "-i", image, f"::/{path}")
    found: list[int] = []
    for a, b in re.findall(r"<(\d+)(?:-(\d+))?>", out):
        found += range(int(a), int(b or a) + 1)
    return found


def unchanging(image: Path, fence: fatlayout.Fence) -> list[bytes]:
    data = image.read_bytes()
    return [data[off:off + size] for off, size in fence.unchanging]


# Root entries before the spacers: label, EFI, boot, liveng and these. 13 files fill the root's first
# 512-byte cluster exactly (the spacer then needs a new one); 12 leave one slot, 11 two, 29 a cluster.
@pytest.mark.parametrize("root_files", [0, 11, 12, 13, 29])
def test_rewrites_reach_no_sector_of_the_boot_files(tmp_path: Path, root_files: int) -> None:
    static, runtime = trees(tmp_path, root_files)
    image = tmp_path / "p1.img"
    fence = filesystems.fat32(static, runtime, image, 64, layout.BOOT_LABEL, "12345678")
    assert fence.boundary % 1024 == 0
    assert max(clusters(image, layout.GRUB_CFG_PATH)) < fence.boundary
    assert min(clusters(image, layout.GRUBENV_PATH)) >= fence.boundary
    assert min(clusters(image, layout.SETTINGS_PATH)) >= fence.boundary
    before = unchanging(image, fence)
    menu = mtools("mtype", "-i", image, f"::/{layout.GRUB_CFG_PATH}")

    # What the device does on p1, many times over: each copy of the boot state replaced by a rename
    # from a new temporary name, the settings file redacted the same way, notes written and removed.
    src = tmp_path / "new"
    for n in range(40):
        src.write_bytes(bytes([n]) * 1024)
        for path in (layout.GRUBENV_PATH, layout.GRUBENV_BACKUP_PATH):
            tmp = f"{layout.BOOT_STATE_DIR}/.{path.rsplit('/', 1)[1]}.{n}.tmp"
            mtools("mcopy", "-i", image, src, f"::/{tmp}")
            mtools("mdel", "-i", image, f"::/{path}")
            mtools("mren", "-i", image, f"::/{tmp}", f"::/{path}")
        src.write_bytes(b"x" * (300 * n))
        mtools("mcopy", "-i", image, src, "::/liveng-settings.redacted")
        mtools("mdel", "-i", image, f"::/{layout.SETTINGS_PATH}")
        mtools("mren", "-i", image, "::/liveng-settings.redacted", f"::/{layout.SETTINGS_PATH}")
        mtools("mcopy", "-o", "-i", image, src, f"::/{layout.SETTINGS_ERROR_PATH}")
        if n % 3 == 1:  # left in place at the end
            mtools("mdel", "-i", image, f"::/{layout.SETTINGS_ERROR_PATH}")
    # What Imager writes beside them, and a temporary file a power cut left.
    mtools("mcopy", "-i", image, src, "::/user-data")
    mtools("mcopy", "-i", image, src, f"::/{layout.BOOT_STATE_DIR}/.grubenv.99.tmp")

    assert unchanging(image, fence) == before
    assert mtools("mtype", "-i", image, f"::/{layout.GRUB_CFG_PATH}") == menu
    subprocess.run(["fsck.fat", "-n", image], check=True, capture_output=True)
    assert fatlayout.check(image, layout.P1_RUNTIME) == fence  # still laid out as built
    # The reader the campaign's torn-FAT finder uses agrees with mtools on the rewritten card.
    vol = fatlayout.Volume(image)
    for path in (layout.GRUB_CFG_PATH, layout.GRUBENV_PATH, layout.SETTINGS_PATH, "USER-DATA"):
        entry = vol.find(path)
        assert entry is not None and vol.chain(entry.first) == clusters(image, path), path
    assert vol.find(f"{layout.BOOT_STATE_DIR}/.grubenv.98.tmp") is None


def test_a_plain_copy_is_refused(tmp_path: Path) -> None:
    """What the build did before: mtools puts every file in order, grubenv beside grub.cfg's clusters."""
    static, runtime = trees(tmp_path, 3)
    image = tmp_path / "p1.img"
    subprocess.run(["mkfs.fat", "-F", "32", "-C", image, str(64 * 1024)], check=True, capture_output=True)
    mtools("mcopy", "-s", "-i", image, *sorted(static.iterdir()), *sorted(runtime.iterdir()), "::/")
    with pytest.raises(BuildError, match="free") as raised:
        fatlayout.check(image, layout.P1_RUNTIME)
    assert "lies among the boot files' clusters" in str(raised.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="liveng build needs root")
def test_boot_files_sectors_are_watched(built: Built, tmp_path: Path) -> None:
    """The check the boot tests and the campaign make: a byte of grub.cfg changed is reported, one of
    grubenv (rewritten by the device) is not. Against the real image's p1."""
    part = partitions(built.image)[1]
    p1, size = int(str(part["start"])) * 512, int(str(part["size"])) * 512
    used = tmp_path / "used.img"
    subprocess.run(["cp", "--sparse=always", built.image, used], check=True)
    assert boot_sector_changes(built.image, used) == []
    vol = fatlayout.Volume(built.image, p1, size)
    for path, watched in ((layout.GRUBENV_PATH, False), (layout.GRUB_CFG_PATH, True)):
        entry = vol.find(path)
        assert entry is not None, path
        with open(used, "r+b") as f:
            f.seek(p1 + vol.g.cluster_offset(entry.first))
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0xFF]))
        assert bool(boot_sector_changes(built.image, used, layout_too=False)) is watched, path
