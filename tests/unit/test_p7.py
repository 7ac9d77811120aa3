"""live-premount/liveng-p7 on real ext4 images standing in for p7. e2fsck: a clean p7 is only read;
a journal whose last commit block a power cut tore (the kernel refuses to load it) is replayed up to
the transaction before and the repair is reported; a journal to replay is replayed. Default mount
options: a card made before them gets them once, one that has them is not written, ram mode never
gets them written."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from bench.faults import inject
from liveng import durable, layout
from liveng.host.rootfs import initramfs_functions

SCRIPT = Path(str(resources.files("liveng.device").joinpath("data/initramfs/live-premount/liveng-p7")))


def defaults(image: Path) -> list[str]:
    out = subprocess.run(["tune2fs", "-l", str(image)], capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("Default mount options:"))
    return line.split(":", 1)[1].split()


def digest(image: Path) -> str:
    return hashlib.sha256(image.read_bytes()).hexdigest()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An initramfs stand-in with a p7 made as cards were before the options (mke2fs's defaults)."""
    subprocess.run(["mkfs.ext4", "-q", "-F", str(tmp_path / "p7.img"), "16M"], check=True)
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts/liveng-functions").write_bytes(initramfs_functions())
    return tmp_path


def run(root: Path, mode: str = layout.MODE_PERSISTENT, liveng_id: str = "12ab34cd") -> str:
    (root / "cmdline").write_text(f"boot=live liveng.id={liveng_id} liveng.mode={mode}\n")
    env = {**os.environ, "LIVENG_DELTA_TEST_ROOT": str(root)}
    proc = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, check=True)
    return proc.stdout + proc.stderr


def test_an_old_card_gets_the_options_once(root: Path) -> None:
    image = root / "p7.img"
    wanted = durable.PERSISTENCE_MOUNT_DEFAULTS.split(",")
    assert not set(wanted) & set(defaults(image))
    out = run(root)
    assert "default mount options now include" in out
    assert set(wanted) <= set(defaults(image))
    assert {"user_xattr", "acl"} <= set(defaults(image))  # mke2fs's own defaults kept
    assert subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True).returncode == 0
    before = digest(image)
    assert run(root) == ""  # the next boots: nothing written
    assert digest(image) == before
    assert not (root / "unclean").exists()


def test_ram_mode_only_reads_a_clean_card(root: Path) -> None:
    before = digest(root / "p7.img")
    assert run(root, layout.MODE_RAM) == ""
    assert digest(root / "p7.img") == before


def test_not_a_liveng_boot(root: Path) -> None:
    before = digest(root / "p7.img")
    assert run(root, liveng_id="nothex!!") == ""
    assert digest(root / "p7.img") == before


def test_ram_mode_gets_a_repair_but_not_the_options(root: Path) -> None:
    """The kernel's read-only mount in ram mode would replay a journal too; the options wait."""
    image = root / "p7.img"
    subprocess.run(["debugfs", "-w", "-R", "ssv state 0", str(image)], check=True, capture_output=True)
    out = run(root, layout.MODE_RAM)
    assert "was repaired at this boot" in out
    assert not set(durable.PERSISTENCE_MOUNT_DEFAULTS.split(",")) & set(defaults(image))
    assert subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True).returncode == 0


def test_ram_paths_mode_writes_the_card_so_gets_them(root: Path) -> None:
    run(root, layout.MODE_RAM_PATHS)
    assert set(durable.PERSISTENCE_MOUNT_DEFAULTS.split(",")) <= set(defaults(root / "p7.img"))


def _cut_while_mounted(root: Path) -> Path:
    """p7 as a power cut leaves it: files written and fsynced on a mounted ext4, its journal not yet
    checkpointed, the image copied while still mounted (the kernel's view at the cut)."""
    live = root / "live.img"
    mnt = root / "mnt"
    mnt.mkdir()
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "metadata_csum", str(live), "16M"], check=True)
    subprocess.run(["mount", "-o", "loop", str(live), str(mnt)], check=True)
    try:
        for i in range(40):
            path = mnt / f"f{i}"
            path.write_text(f"file {i}\n")
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        subprocess.run(["cp", "--sparse=always", str(live), str(root / "p7.img")], check=True)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert "needs_recovery" in subprocess.run(["dumpe2fs", "-h", str(root / "p7.img")], capture_output=True,
                                              text=True).stdout
    return root / "p7.img"


def _kernel_mounts(image: Path, mnt: Path) -> bool:
    mnt.mkdir(exist_ok=True)
    ok = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(mnt)], check=True)
    return ok


@pytest.fixture
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("a mounted ext4 stand-in needs root")


@pytest.mark.usefixtures("as_root")
def test_a_journal_to_replay_is_replayed_quietly(root: Path) -> None:
    image = _cut_while_mounted(root)
    assert run(root) == "liveng: the persistence partition's default mount options now include " \
        f"{durable.PERSISTENCE_MOUNT_DEFAULTS} (set once)\n"
    assert not (root / "notice").exists() and not (root / "fsck.log").exists()
    assert (root / "unclean").exists()  # liveng-apt-recover.service's condition
    assert subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True).returncode == 0


@pytest.mark.usefixtures("as_root")
def test_a_torn_last_commit_block_is_repaired(root: Path) -> None:
    """The fault campaign's seed 87606111: the kernel would not mount p7 ("journal transaction N is
    corrupt"), so the boot went on without it."""
    image = _cut_while_mounted(root)
    offset, what = inject.newest_commit(image, 0)
    assert what.startswith("the commit block of transaction"), what
    with open(image, "r+b") as f:  # the commit block's first sector: new up to byte 43, then random
        f.seek(offset + 43)
        f.write(random.Random(87606111).randbytes(layout.SECTOR - 43))
    copy = root / "copy.img"  # the kernel's mount would replay into it
    subprocess.run(["cp", "--sparse=always", str(image), str(copy)], check=True)
    assert not _kernel_mounts(copy, root / "m"), f"the kernel mounts p7 with a torn {what}"
    out = run(root)
    assert "the persistence partition's filesystem was repaired at this boot (e2fsck exit 1)" in out
    assert (root / "notice").read_text().startswith("the persistence partition's filesystem was repaired")
    assert "corrupt" in (root / "fsck.log").read_text()
    assert subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True).returncode == 0
    mnt = root / "m"  # made by _kernel_mounts
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:  # each file was fsynced, so each is in a transaction of its own: only the torn one is lost
        assert all((mnt / f"f{i}").read_text() == f"file {i}\n" for i in range(39))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
