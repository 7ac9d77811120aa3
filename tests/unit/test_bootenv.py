"""The boot state's owner on the device (liveng/device/bootenv.py), on a stand-in boot directory."""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from liveng import grubenv, layout
from liveng.device import bootenv


@pytest.fixture
def boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(bootenv, "LOCK_PATH", tmp_path / "run/boot-state.lock")
    root = tmp_path / "p1"
    bootenv.write(root, {layout.ENV_ORDER: "0 2", layout.ENV_TRIES: "3"})
    return root


def _writer(boot: Path, name: str, until: float, errors: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    n = 0
    while time.monotonic() < until:
        try:
            with bootenv.locked():
                bootenv.update(boot, {name: str(n), layout.ENV_TRIES: str(n % 4)})
        except Exception as exc:
            errors.put(f"{name}: {exc!r}")
        n += 1


def _reader(boot: Path, until: float, errors: multiprocessing.Queue, lock: bool) -> None:  # type: ignore[type-arg]
    while time.monotonic() < until:
        with bootenv.locked() if lock else contextlib.nullcontext():
            choice = bootenv.read(boot)
        if choice.source != "primary" or choice.damaged or layout.ENV_ORDER not in choice.env:
            errors.put(f"reader: {choice}")


def test_two_writers_and_a_reader_never_see_a_bad_env(boot: Path) -> None:
    ctx = multiprocessing.get_context("fork")  # the children inherit the stand-in LOCK_PATH
    errors = ctx.Queue()
    until = time.monotonic() + 2.0
    procs = [ctx.Process(target=_writer, args=(boot, "w1", until, errors)),
             ctx.Process(target=_writer, args=(boot, "w2", until, errors)),
             ctx.Process(target=_reader, args=(boot, until, errors, True)),
             # Without the lock too (as GRUB reads): each copy is replaced whole, never seen half-written.
             ctx.Process(target=_reader, args=(boot, until, errors, False))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == [] and [p.exitcode for p in procs] == [0, 0, 0, 0]
    final = grubenv.choose((boot / layout.GRUBENV_PATH).read_bytes(), (boot / layout.GRUBENV_BACKUP_PATH).read_bytes())
    assert final.source == "primary" and final.env[layout.ENV_ORDER] == "0 2" and {"w1", "w2"} <= set(final.env)
    # No temporaries left.
    assert sorted(p.name for p in boot.rglob("*")) == ["grubenv", "grubenv.bak", layout.BOOT_STATE_DIR]


def test_lock_is_held_and_reentrant(boot: Path) -> None:
    with bootenv.locked(), bootenv.locked():
        fd = os.open(bootenv.LOCK_PATH, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(bootenv.LOCK_PATH, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after the outer block
    os.close(fd)


@pytest.mark.parametrize("damage", ["garbage", "empty", "missing", "short", "latin1"])
def test_damaged_primary_uses_backup_warns_and_is_repaired(boot: Path, damage: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    primary = boot / layout.GRUBENV_PATH
    if damage == "missing":
        primary.unlink()
    else:
        primary.write_bytes({"garbage": os.urandom(1024), "empty": b"", "short": primary.read_bytes()[:512],
                             "latin1": b"# GRUB Environment Block\nx=\xe9\n" + b"#" * 994}[damage])
    choice = bootenv.read(boot)
    assert (choice.source, choice.env[layout.ENV_ORDER], list(choice.damaged)) == ("backup", "0 2", ["primary"])
    assert f"warning: {layout.GRUBENV_PATH} on the boot partition is damaged" in capsys.readouterr().err
    with bootenv.locked():
        env = bootenv.update(boot, {})  # no change asked: the repair alone is written
    assert env == {layout.ENV_ORDER: "0 2", layout.ENV_TRIES: "3"}
    assert "repairing the boot state's primary copy from the backup" in capsys.readouterr().err
    assert primary.read_bytes() == (boot / layout.GRUBENV_BACKUP_PATH).read_bytes() == grubenv.serialize(env)


def test_damaged_backup_is_repaired_from_the_primary(boot: Path) -> None:
    (boot / layout.GRUBENV_BACKUP_PATH).write_bytes(b"\0" * 1024)
    with bootenv.locked():
        env = bootenv.update(boot, {layout.ENV_TRIES: "2"})
    assert env[layout.ENV_ORDER] == "0 2"
    assert grubenv.check((boot / layout.GRUBENV_BACKUP_PATH).read_bytes()) == env


def test_both_damaged_gives_defaults_with_a_warning(boot: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (boot / layout.GRUBENV_PATH).write_bytes(b"\xff" * 1024)
    (boot / layout.GRUBENV_BACKUP_PATH).unlink()
    choice = bootenv.read(boot)
    assert (choice.env, choice.source) == ({}, "defaults")
    assert "using the built-in defaults" in capsys.readouterr().err
    with bootenv.locked():
        bootenv.update(boot, {layout.ENV_MODE: layout.MODE_RAM})
    assert bootenv.read(boot).env == {layout.ENV_MODE: layout.MODE_RAM}
    assert bootenv.read(boot).damaged == {}


def test_write_atomic_never_follows_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "grubenv"
    link.symlink_to(victim)
    with pytest.raises(OSError, match="symbolic link"):
        bootenv.write_atomic(link, b"x")
    assert victim.read_text() == "keep"
    # The old fixed temporary name as a planted symlink is not used either.
    (tmp_path / ".env.tmp").symlink_to(victim)
    bootenv.write_atomic(tmp_path / "env", b"new")
    assert (tmp_path / "env").read_bytes() == b"new" and victim.read_text() == "keep"


def test_a_card_built_before_keeps_its_boot_state_beside_grub_cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Its menu reads layout.LEGACY_GRUBENV_PATHS: the device must write there, even with both copies gone."""
    monkeypatch.setattr(bootenv, "LOCK_PATH", tmp_path / "run/boot-state.lock")
    boot = tmp_path / "p1"
    (boot / layout.GRUB_DIR).mkdir(parents=True)
    (boot / layout.GRUB_CFG_PATH).write_text(
        f"set liveng_env=($liveng_disk,msdos1)/{layout.LEGACY_GRUBENV_PATHS[0]}\n"
        f"set liveng_env_bak=($liveng_disk,msdos1)/{layout.LEGACY_GRUBENV_PATHS[1]}\n")
    assert bootenv.paths(boot) == layout.LEGACY_GRUBENV_PATHS
    with bootenv.locked():
        bootenv.update(boot, {layout.ENV_TRIES: "2"})
    assert "damaged" in capsys.readouterr().err  # both missing: from the defaults, said so
    for path in layout.LEGACY_GRUBENV_PATHS:
        assert grubenv.check((boot / path).read_bytes()) == {layout.ENV_TRIES: "2"}
    assert not (boot / layout.BOOT_STATE_DIR).exists()
    assert bootenv.read(boot).env == {layout.ENV_TRIES: "2"}

    # This build's menu: its own directory.
    (boot / layout.GRUB_CFG_PATH).write_text(f"set liveng_env=($liveng_disk,msdos1)/{layout.GRUBENV_PATH}\n")
    assert bootenv.paths(boot) == (layout.GRUBENV_PATH, layout.GRUBENV_BACKUP_PATH)
