"""The initramfs's system and delta swap (live-premount/liveng-system) on directories standing in for
p7 and the kernel slots, with a power cut before every file operation it makes: whatever entry the
next boot takes, every delta is whole and under its own system's name."""

from __future__ import annotations

import os
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from liveng import layout
from liveng.host.rootfs import initramfs_functions

SCRIPT = Path(str(resources.files("liveng.device").joinpath("data/initramfs/live-premount/liveng-system")))
V2 = "2.0_0123456789ab"
SLOT_B = f"slot{layout.partuuid_suffix(layout.partition(layout.Role.SLOT_B).number)}"
SLOT_A = f"slot{layout.partuuid_suffix(layout.partition(layout.Role.SLOT_A).number)}"


def make_root(root: Path, *, system_on_p7: bool = True, staged_delta: bool = True) -> Path:
    """A device on which an update to V2 was applied: slot B holds V2's kernel, slot A the factory's."""
    p7 = root / "p7"
    (p7 / "rw/home/pi").mkdir(parents=True)
    (p7 / "rw/home/pi/v1-file").write_text("v1\n")
    (p7 / "work/work").mkdir(parents=True)
    if system_on_p7:
        (p7 / layout.SYSTEMS_DIR / V2).mkdir(parents=True)
        (p7 / layout.SYSTEMS_DIR / V2 / layout.SYSTEM_ISO_NAME).write_bytes(b"iso")
    if staged_delta:
        (p7 / layout.DELTAS_DIR / V2 / "home/pi").mkdir(parents=True)
        (p7 / layout.DELTAS_DIR / V2 / "home/pi/v1-file").write_text("v1\n")  # the kept path, copied
    (p7 / layout.DELTA_STATE_DIR).mkdir(exist_ok=True)
    (p7 / f"{layout.DELTA_OWNER_PREFIX}{layout.SYSTEM_FACTORY}").write_text("")
    (root / SLOT_B / "liveng").mkdir(parents=True)
    (root / SLOT_B / layout.SLOT_SYSTEM_PATH).write_text(V2 + "\n")
    (root / SLOT_A / "liveng").mkdir(parents=True)  # no system file: the factory system's kernel
    (root / "scripts").mkdir()
    (root / "scripts/liveng-functions").write_bytes(initramfs_functions())
    boot(root, "slot-b")
    return p7


def boot(root: Path, entry: str) -> None:
    (root / "cmdline").write_text(f"boot=live liveng.id=12ab34cd liveng.boot={entry}\n")
    for name in ("param.conf", "booted-system", "panicked"):
        (root / name).unlink(missing_ok=True)


def run(root: Path, bin_dir: Path, crash_at: int = 10**6) -> bool:
    """Run the script; True if it ran to the end, False if a simulated power cut stopped it."""
    counter = root / "counter"
    counter.write_text("0")
    env = {**os.environ, "LIVENG_SYSTEM_TEST_ROOT": str(root), "COUNTER": str(counter), "CRASH_AT": str(crash_at),
           "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, check=False)
    if proc.returncode == -9:
        return False
    # A panic (the entry cannot boot) ends the script too: exit 1 with "panicked" written.
    assert proc.returncode == 0 or (proc.returncode == 1 and (root / "panicked").exists()), proc.stdout + proc.stderr
    return True


def files(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): p.read_text() for p in sorted(d.rglob("*")) if p.is_file()}


def state(p7: Path, root: Path) -> tuple[str, str]:
    """(who owns rw by the marker, which delta rw holds), checking that nothing is lost or doubled."""
    markers = sorted(p.name for p in (p7 / "liveng").glob("owner.*"))
    assert len(markers) <= 1, markers
    owner = markers[0].removeprefix("owner.") if markers else layout.SYSTEM_FACTORY
    rw = files(p7 / "rw")
    held = "v2" if "home/pi/v2-file" in rw else "v1" if "home/pi/v1-only" in rw else "?"
    parked = {p.name: files(p) for p in (p7 / layout.DELTAS_DIR).iterdir()} if (p7 / layout.DELTAS_DIR).exists() else {}
    # The two deltas, each exactly once: one in rw, the other parked under its system's name.
    other = V2 if owner == layout.SYSTEM_FACTORY else layout.SYSTEM_FACTORY
    assert set(parked) == {other}, (owner, parked)
    assert (held == "v1") == (owner == layout.SYSTEM_FACTORY), (owner, rw)
    assert "home/pi/v2-file" in (rw if held == "v2" else parked[V2])
    assert "home/pi/v1-only" in (rw if held == "v1" else parked[layout.SYSTEM_FACTORY])
    assert (root / "booted-system").read_text().strip() == owner
    return owner, held


def two_deltas(p7: Path) -> None:
    """Mark the deltas apart: a file only v1's delta has, one only v2's has."""
    (p7 / "rw/home/pi/v1-only").write_text("1\n")
    (p7 / layout.DELTAS_DIR / V2 / "home/pi/v2-file").write_text("2\n")


def test_first_boot_of_the_new_system(tmp_path: Path, bin_dir: Path) -> None:
    p7 = make_root(tmp_path)
    two_deltas(p7)
    assert run(tmp_path, bin_dir)
    assert state(p7, tmp_path) == (V2, "v2")
    iso = p7 / layout.SYSTEMS_DIR / V2 / layout.SYSTEM_ISO_NAME
    assert (tmp_path / "param.conf").read_text() == f"LIVE_MEDIA={iso}\n"
    assert not (p7 / "work").exists()
    # The same system again: nothing moves.
    boot(tmp_path, "slot-b")
    assert run(tmp_path, bin_dir)
    assert state(p7, tmp_path) == (V2, "v2")
    # The factory kernel (a fallback): v1's delta comes back exactly as it was.
    boot(tmp_path, "slot-a")
    assert run(tmp_path, bin_dir)
    assert state(p7, tmp_path) == (layout.SYSTEM_FACTORY, "v1")
    assert not (tmp_path / "param.conf").exists()  # live-boot takes p2, as the command line says


@pytest.mark.parametrize("next_entry", ["slot-b", "slot-a", "factory"])
def test_power_cut_before_every_step(tmp_path: Path, bin_dir: Path, next_entry: str) -> None:
    cuts = 0
    for crash_at in range(1, 60):
        root = tmp_path / f"run{crash_at}"
        root.mkdir()
        p7 = make_root(root)
        two_deltas(p7)
        if run(root, bin_dir, crash_at):
            assert state(p7, root) == (V2, "v2")
            break
        cuts += 1
        boot(root, next_entry)  # GRUB retries the new system, or a person or the fallback takes another
        assert run(root, bin_dir), f"cut before operation {crash_at}"
        expected = (V2, "v2") if next_entry == "slot-b" else (layout.SYSTEM_FACTORY, "v1")
        assert state(p7, root) == expected, f"cut before operation {crash_at}"
    assert cuts >= 4  # the cuts did land inside the swap


def test_new_system_without_a_staged_delta_starts_empty(tmp_path: Path, bin_dir: Path) -> None:
    p7 = make_root(tmp_path, staged_delta=False)
    assert run(tmp_path, bin_dir)
    assert files(p7 / "rw") == {}
    assert files(p7 / layout.DELTAS_DIR / layout.SYSTEM_FACTORY) == {"home/pi/v1-file": "v1\n"}


def test_missing_system_panics_without_touching_p7(tmp_path: Path, bin_dir: Path) -> None:
    p7 = make_root(tmp_path, system_on_p7=False)
    before = files(p7)
    assert run(tmp_path, bin_dir)
    assert (tmp_path / "panicked").exists()
    assert files(p7) == before
    assert not (tmp_path / "param.conf").exists()


@pytest.mark.parametrize("name", ["../../etc", "2.0_0123456789ab/x", "evil name", "2.0_XYZ"])
def test_bad_system_name_panics(tmp_path: Path, bin_dir: Path, name: str) -> None:
    p7 = make_root(tmp_path)
    (tmp_path / SLOT_B / layout.SLOT_SYSTEM_PATH).write_text(name + "\n")
    before = files(p7)
    run(tmp_path, bin_dir)
    assert (tmp_path / "panicked").exists()
    assert files(p7) == before


def test_device_without_updates_is_left_alone(tmp_path: Path, bin_dir: Path) -> None:
    """A factory boot on a device that never took an update: no marker, no writes."""
    p7 = make_root(tmp_path, system_on_p7=False, staged_delta=False)
    (p7 / f"{layout.DELTA_OWNER_PREFIX}{layout.SYSTEM_FACTORY}").unlink()
    boot(tmp_path, "slot-a")
    before = files(p7)
    assert run(tmp_path, bin_dir)
    assert files(p7) == before
    assert (p7 / "work/work").is_dir()
    assert (tmp_path / "booted-system").read_text().strip() == layout.SYSTEM_FACTORY
