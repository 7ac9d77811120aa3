"""Who may change the boot order and when: package hooks, RAM modes, repairs, the installed copy,
and GRUB's side of the two env copies."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from liveng import layout
from liveng.device import bootenv, bootstate, install, kernel, runner, verify
from liveng.device.bootstate import BootState, DeviceError
from liveng.host.bootloader import grub


def _debian_sort(argv: list[str], input: str | None = None) -> str:
    # A stand-in for `linux-version sort` good enough for these versions.
    assert argv[:2] == ["linux-version", "sort"]
    return "\n".join(sorted(argv[2:], key=lambda v: [int(p) if p.isdigit() else p
                                                      for p in v.replace("-", ".").split(".")])) + "\n"


def test_k_all_leaves_the_newest_kernel_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    versions = ["6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-11-amd64"]
    for v in versions:
        (boot / f"vmlinuz-{v}").write_text("k")
        (boot / f"initrd.img-{v}").write_text("i")
    (boot / "vmlinuz-6.1.0-12-amd64").write_text("k")  # unpacked, no initramfs yet: not a candidate
    monkeypatch.setattr(runner, "run", _debian_sort)
    real = kernel.newer_installed
    monkeypatch.setattr(kernel, "newer_installed", lambda k: real(k, boot))
    written: list[str] = []

    def record(k: str, initrd: Path | None, force: bool) -> kernel.InstallResult:
        written.append(k)
        return kernel.InstallResult("a", k)

    monkeypatch.setattr(kernel, "_install", record)
    monkeypatch.setattr(bootenv, "LOCK_PATH", tmp_path / "lock")
    # update-initramfs -u -k all: newest first; then a kernel postinst for an older one.
    for v in [*reversed(versions), "6.1.0-9-amd64"]:
        kernel.install(v, from_hook=True)
    assert written == ["6.1.0-11-amd64"]
    # By hand, an older kernel is still written.
    kernel.install("6.1.0-9-amd64")
    assert written[-1] == "6.1.0-9-amd64"


def test_kernel_install_holds_the_boot_state_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bootenv, "LOCK_PATH", tmp_path / "lock")
    seen: list[bool] = []

    def probe(k: str, initrd: Path | None, force: bool) -> kernel.InstallResult:
        fd = os.open(bootenv.LOCK_PATH, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append(False)
        except BlockingIOError:
            seen.append(True)  # another install (another open file) would wait here
        finally:
            os.close(fd)
        return kernel.InstallResult(None, "")

    monkeypatch.setattr(kernel, "_install", probe)
    kernel.install("6.1.0-11-amd64")
    assert seen == [True]


def test_a_boot_without_its_modules_is_never_confirmed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # RAM mode: `kernel install` put the new kernel's modules only into the RAM delta; without a
    # commit the next boot runs that kernel without /lib/modules/$(uname -r).
    monkeypatch.setattr(kernel, "MODULES_DIR", tmp_path / "modules")
    monkeypatch.setattr(kernel, "HEALTH_DIR", tmp_path / "health.d")
    monkeypatch.setattr(kernel, "booted_entry", lambda: "slot-b")
    monkeypatch.setattr(bootenv, "LOCK_PATH", tmp_path / "lock")
    monkeypatch.setattr(bootstate, "update_state", lambda **kw: pytest.fail("marked good"))
    failed = kernel.health_checks()
    assert len(failed) == 1 and failed[0].startswith("built-in: no ") and os.uname().release in failed[0]
    with pytest.raises(DeviceError, match="not marked good"):
        kernel.mark_good()
    (tmp_path / "modules" / os.uname().release).mkdir(parents=True)
    assert kernel.health_checks() == []


def test_mark_good_repairs_a_damaged_copy_even_when_nothing_else_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[dict[str, object]] = []
    state = BootState(order=("slot-a", "factory"), tries=3, good="slot-a", confirmed="0 2", damaged=("primary",))
    monkeypatch.setattr(kernel, "booted_entry", lambda: "slot-a")
    monkeypatch.setattr(kernel, "health_checks", lambda: [])
    monkeypatch.setattr(verify, "intact", lambda name: True)
    monkeypatch.setattr(bootenv, "LOCK_PATH", tmp_path / "lock")
    monkeypatch.setattr(bootstate, "read_state", lambda: state)
    monkeypatch.setattr(bootstate, "update_state", lambda **kw: writes.append(kw))
    kernel.mark_good()
    assert writes == [{"order": ("slot-a", "factory"), "tries": 3, "good": "slot-a", "confirmed": "0 2"}]


def test_installed_copy_keeps_the_mode(tmp_path: Path) -> None:
    env = install.new_env("b", layout.MODE_RAM)
    assert env == {layout.ENV_ORDER: layout.order_to_env(["slot-b", "factory"]), layout.ENV_TRIES: str(layout.TRIES),
                   layout.ENV_MODE: layout.MODE_RAM}
    bootenv.write(tmp_path, env)
    assert bootenv.read(tmp_path).env == env
    assert (tmp_path / layout.GRUBENV_PATH).read_bytes() == (tmp_path / layout.GRUBENV_BACKUP_PATH).read_bytes()


def test_grub_reads_backup_then_primary_and_writes_primary_then_backup() -> None:
    lines = grub.grub_cfg("12ab34cd", "boot=live", 3, "console=ttyS0").splitlines()
    stripped = [line.strip() for line in lines]
    assert f"set liveng_env=($liveng_disk,msdos1)/{layout.GRUBENV_PATH}" in stripped
    assert f"set liveng_env_bak=($liveng_disk,msdos1)/{layout.GRUBENV_BACKUP_PATH}" in stripped
    loads = [line for line in stripped if line.startswith("load_env")]
    assert [line.split()[2] for line in loads] == ["$liveng_env_bak", "$liveng_env"]
    assert loads[0].split()[3:] == loads[1].split()[3:]
    saves = [(i, line.split()[2]) for i, line in enumerate(stripped) if line.startswith("save_env")]
    # The counted boot and the factory reset entry: each the primary, then at once the backup.
    assert [f for _, f in saves] == ["$liveng_env", "$liveng_env_bak"] * 2
    assert all(saves[k + 1][0] == saves[k][0] + 1 for k in (0, 2))
    assert stripped.index(loads[1]) < saves[0][0]
    used = {line.split()[0] for line in stripped if line.split()}
    assert {"load_env", "save_env"} <= used and "loadenv" in grub.MODULES["i386-pc"]
