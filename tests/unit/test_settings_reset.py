"""After a factory reset the redacted settings file still brings the device back; no secret stays on p1."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from liveng import configfiles, layout
from liveng.device import bootstate, firstboot, settingsfiles
from tests.unit.test_firstboot import GOOD, KEY, BootPartition, make_root, p1, system

__all__ = ["p1"]  # the fixture


def test_a_reset_device_comes_back_reachable(tmp_path: Path, p1: BootPartition) -> None:
    kept = tmp_path / "p7/liveng"
    (p1.path / layout.SETTINGS_PATH).write_text(GOOD)
    sys_, _ = system(make_root(tmp_path))
    sys_.kept = kept
    assert firstboot.apply_boot_partition(system=sys_).applied
    assert (kept / layout.SETTINGS_KEPT_NAME).stat().st_mode & 0o777 == 0o600
    assert "very secret" not in (p1.path / layout.SETTINGS_PATH).read_text()
    # The reset: a new delta (no user, no Wi-Fi configuration, no record), p7's liveng/ kept.
    fresh = tmp_path / "reset"
    fresh.mkdir()
    sys2, rec2 = system(make_root(fresh))
    sys2.kept = kept
    outcome = firstboot.apply_boot_partition(system=sys2)
    root = fresh / "root"
    assert outcome.applied and "user pi added" in outcome.message
    assert (root / "etc/hostname").read_text() == "kiosk\n"
    assert (root / "home/pi/.ssh/authorized_keys").read_text() == KEY + "\n"
    assert f"psk={configfiles.wifi_psk('home', 'very secret')}" in (root / configfiles.WIFI_CONF_PATH).read_text()
    assert not any(argv[0] == "chpasswd" for argv, _ in rec2.calls)  # the hash is gone: no password, keys work


def test_an_interrupted_redaction_is_finished(tmp_path: Path) -> None:
    (tmp_path / layout.SETTINGS_PATH).write_text("secret = 1\n")
    (tmp_path / "liveng-settings.redacted").write_text("# redacted\n")
    assert settingsfiles.finish_redaction(tmp_path)
    assert (tmp_path / layout.SETTINGS_PATH).read_text() == "# redacted\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [layout.SETTINGS_PATH]
    assert not settingsfiles.finish_redaction(tmp_path)


def _kernel_has(fstype: str) -> bool:
    return any(line.split()[-1:] == [fstype] for line in Path("/proc/filesystems").read_text().splitlines())


# vfat is p1's; ext4 (which also overwrites in place) where the kernel running the tests lacks vfat.
@pytest.mark.parametrize(("fstype", "mkfs"), [("vfat", ["mkfs.fat", "-F", "32"]), ("ext4", ["mkfs.ext4", "-q"])])
def test_no_secret_stays_in_the_free_clusters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fstype: str,
                                              mkfs: list[str]) -> None:
    if os.geteuid() != 0 or not _kernel_has(fstype):
        pytest.skip(f"needs root and {fstype} in this kernel")
    image = tmp_path / "p1.img"
    with open(image, "wb") as f:
        f.truncate(64 * layout.MiB)
    subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
    where = tmp_path / "mnt"
    where.mkdir()

    @contextlib.contextmanager
    def mounted(role: layout.Role, _fstype: str, writable: bool = False) -> Iterator[Path]:
        opts = ("loop,rw" + (",flush" if fstype == "vfat" else "")) if writable else "loop,ro"
        subprocess.run(["mount", "-t", fstype, "-o", opts, str(image), str(where)], check=True)
        try:
            yield where
        finally:
            subprocess.run(["umount", str(where)], check=True)

    monkeypatch.setattr(bootstate, "mounted", mounted)
    monkeypatch.setattr(firstboot, "_wait_for_boot_partition", lambda: None)
    with mounted(layout.Role.BOOT, "vfat", writable=True) as boot:
        (boot / layout.SETTINGS_PATH).write_text(GOOD)
    sys_, _ = system(make_root(tmp_path))
    assert firstboot.apply_boot_partition(system=sys_).applied
    raw = image.read_bytes()
    assert b"very secret" not in raw and b"$6$salt$hash" not in raw
    assert b'hostname = "kiosk"' in raw


def test_recipe_can_turn_the_settings_file_off(tmp_path: Path, p1: BootPartition) -> None:
    from liveng.host import customize, recipe

    key = tmp_path / "key"
    key.write_bytes(b"k" * 64)
    luks = f'[persistence]\nencryption = "luks2"\nkey_file = "{key}"\n'
    assert recipe.loads("", "r.toml", None).settings_from_boot_partition
    assert not recipe.loads(luks, "r.toml", None).settings_from_boot_partition  # encrypted: off by default
    assert recipe.loads(luks + "[settings]\nfrom_boot_partition = true\n", "r.toml", None).settings_from_boot_partition
    off = recipe.loads("[settings]\nfrom_boot_partition = false\n", "r.toml", None)
    root = make_root(tmp_path)
    customize.device_settings(root, off)
    assert (root / layout.SETTINGS_POLICY_PATH).read_text() == "no\n"
    (p1.path / layout.SETTINGS_PATH).write_text(GOOD)
    sys_, rec = system(root)
    outcome = firstboot.apply_boot_partition(system=sys_)
    assert not outcome.applied and "from_boot_partition = false" in outcome.message
    assert rec.calls == [] and p1.writable == [] and (root / "etc/hostname").read_text() == "liveng\n"
    customize.device_settings(root, recipe.loads("", "r.toml", None))
    assert firstboot.apply_boot_partition(system=sys_).applied


def test_kept_dir_lets_the_callers_errors_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from liveng.device import delta

    @contextlib.contextmanager
    def p7(writable: bool = True) -> Iterator[Path]:
        yield tmp_path

    monkeypatch.setattr(delta, "persistence_root", p7)
    with pytest.raises(bootstate.DeviceError, match="the boot partition is missing"), \
            settingsfiles.kept_dir(True) as kept:
        assert kept == tmp_path / layout.DELTA_STATE_DIR
        raise bootstate.DeviceError("the boot partition is missing")

    def locked(writable: bool = True) -> Iterator[Path]:
        raise bootstate.DeviceError("p7 is locked")

    monkeypatch.setattr(delta, "persistence_root", locked)
    with settingsfiles.kept_dir(True) as kept:
        assert kept is None
