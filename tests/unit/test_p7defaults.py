"""live-premount/liveng-p7defaults on a real ext4 image standing in for p7: a card made before p7
had its default mount options gets them once, before live-boot mounts the delta; one that has them
is not written; ram mode never writes; a journal still to replay is left to the kernel's mount."""

from __future__ import annotations

import hashlib
import os
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from liveng import durable, layout
from liveng.host.rootfs import initramfs_functions

SCRIPT = Path(str(resources.files("liveng.device").joinpath("data/initramfs/live-premount/liveng-p7defaults")))


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


def test_ram_mode_only_reads_the_card(root: Path) -> None:
    before = digest(root / "p7.img")
    assert run(root, layout.MODE_RAM) == ""
    assert digest(root / "p7.img") == before


def test_not_a_liveng_boot(root: Path) -> None:
    before = digest(root / "p7.img")
    assert run(root, liveng_id="nothex!!") == ""
    assert digest(root / "p7.img") == before


def test_a_journal_to_replay_is_left_to_the_kernel(root: Path) -> None:
    image = root / "p7.img"
    subprocess.run(["debugfs", "-w", "-R", "feature needs_recovery", str(image)], check=True, capture_output=True)
    before = digest(image)
    assert run(root) == ""
    assert digest(image) == before


def test_ram_paths_mode_writes_the_card_so_gets_them(root: Path) -> None:
    run(root, layout.MODE_RAM_PATHS)
    assert set(durable.PERSISTENCE_MOUNT_DEFAULTS.split(",")) <= set(defaults(root / "p7.img"))
