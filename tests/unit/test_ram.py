"""liveng commit on a real overlayfs: the RAM delta (a tmpfs upper directory that started as a copy
of p7's delta) staged whole or by path, keeping whiteouts, opaque directories and xattrs; the
persistent paths left out; refusals. Boot modes in layout, the recipe's [ram] table, GRUB's mode
selection and try counting, mark-good writing nothing when nothing changes, zram settings."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from liveng import bootargs, layout
from liveng.device import bootstate, delta, kernel, ram, snapshot, verify
from liveng.device.bootstate import BootState, DeviceError
from liveng.host import customize
from liveng.host.bootloader import grub
from liveng.host.errors import RecipeError
from liveng.host.recipe import Ram, loads
from tests.unit.test_snapshot_archive import mount_overlay, view

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="overlayfs mounts and trusted.* xattrs need root")


@pytest.fixture()
def ram_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """lower (the squashfs), p7 with a delta, and a RAM upper filled from it and changed through the overlay."""
    for d in ("lower/etc/d1", "lower/usr/bin", "p7/rw/etc", "upper", "work", "merged"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "lower/etc/gone").write_text("system file\n")
    (tmp_path / "lower/etc/config").write_text("original\n")
    (tmp_path / "lower/etc/d1/old").write_text("old\n")
    (tmp_path / "p7/rw/etc/config").write_text("committed before\n")
    (tmp_path / "p7" / layout.PERSISTENCE_CONF).write_text(layout.PERSISTENCE_CONF_CONTENT)
    snapshot.copy_tree(tmp_path / "p7/rw", tmp_path / "upper")  # what live-bottom/liveng-ram does
    merged = tmp_path / "merged"
    mount_overlay(tmp_path / "lower", tmp_path / "upper", tmp_path / "work", merged)
    try:
        (merged / "etc/gone").unlink()  # a whiteout
        subprocess.run(["rm", "-r", str(merged / "etc/d1")], check=True)
        (merged / "etc/d1").mkdir()  # an opaque directory
        (merged / "etc/d1/mine").write_text("mine\n")
        (merged / "etc/new").write_text("new\n")
        os.setxattr(merged / "etc/new", "user.liveng", b"x")
        (merged / "srv/keep").mkdir(parents=True)
        (merged / "srv/keep/data").write_text("on the card\n")
        (tmp_path / "expected").write_text(repr(view(merged)))
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    monkeypatch.setattr(ram, "running_mode", lambda: layout.MODE_RAM)
    monkeypatch.setattr(ram, "mounted_paths", lambda mounts=None: [])
    yield tmp_path


def staged_view(tmp: Path) -> dict[str, tuple[object, ...]]:
    """The system the next boot would show with the staged delta."""
    for d in ("up2", "work2", "merged2"):
        (tmp / d).mkdir()
    snapshot.copy_tree(tmp / "p7" / layout.STAGED_DIR, tmp / "up2")
    mount_overlay(tmp / "lower", tmp / "up2", tmp / "work2", tmp / "merged2")
    try:
        return view(tmp / "merged2")
    finally:
        subprocess.run(["umount", str(tmp / "merged2")], check=True)


@root_only
def test_commit_everything_keeps_overlay_semantics(ram_system: Path) -> None:
    request = ram.commit(ram_system / "p7", [], upper=ram_system / "upper")
    assert request.action == layout.ACTION_COMMIT and request.keep == ""
    assert delta.read_pending(ram_system / "p7") == request
    assert repr(staged_view(ram_system)) == (ram_system / "expected").read_text()


@root_only
def test_commit_one_path_on_top_of_the_card_delta(ram_system: Path) -> None:
    ram.commit(ram_system / "p7", ["/etc/new", "/etc/gone/"], upper=ram_system / "upper")
    seen = staged_view(ram_system)
    assert "etc/new" in seen and "etc/gone" not in seen  # the file and the deletion
    assert seen["etc/config"][3] == b"committed before\n"  # from p7, as it was
    assert "etc/d1/old" in seen and "etc/d1/mine" not in seen  # not committed: the directory as before
    assert (ram_system / "p7/rw/etc/config").read_text() == "committed before\n"  # p7's delta untouched


@root_only
def test_persistent_paths_are_left_to_the_switch(ram_system: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ram, "running_mode", lambda: layout.MODE_RAM_PATHS)
    monkeypatch.setattr(ram, "mounted_paths", lambda mounts=None: ["/srv/keep"])
    request = ram.commit(ram_system / "p7", [], upper=ram_system / "upper")
    assert request.keep == "/srv/keep"
    assert not (ram_system / "p7" / layout.STAGED_DIR / "srv/keep").exists()
    with pytest.raises(DeviceError, match="on the card already"):
        ram.commit(ram_system / "p7", ["/srv/keep/data"], upper=ram_system / "upper")


@root_only
def test_refusals(ram_system: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p7 = ram_system / "p7"
    ram.commit(p7, [], upper=ram_system / "upper")
    with pytest.raises(DeviceError, match="already staged"):
        ram.commit(p7, ["/etc/new"], upper=ram_system / "upper")
    with pytest.raises(DeviceError, match="absolute"):
        ram.commit(p7, ["etc/new"], upper=ram_system / "upper")
    monkeypatch.setattr(ram, "running_mode", lambda: layout.MODE_PERSISTENT)
    with pytest.raises(DeviceError, match="persistent mode"):
        ram.commit(p7, [], upper=ram_system / "upper")


def test_mounted_paths_are_the_overlays_on_p7() -> None:
    from liveng.device.system import Mount
    mounts = [
        Mount("overlay", "/", "overlay", ("rw", "lowerdir=/run/live/rootfs/filesystem.squashfs/",
                                            f"upperdir={layout.RAM_UPPER}", "workdir=/run/live/overlay/work")),
        Mount("overlay", "/srv/keep", "overlay", ("rw", "lowerdir=/run/live/liveng-empty",
                                                  f"upperdir={layout.RAM_PERSISTENCE_MOUNT}/rw/srv/keep",
                                                  "workdir=x")),
    ]
    assert ram.mounted_paths(mounts) == ["/srv/keep"]


def test_device_paths(tmp_path: Path) -> None:
    assert ram.change_paths(tmp_path, ["/home", "/var/lib/app"], []) == ["/home", "/var/lib/app"]
    assert ram.change_paths(tmp_path, [], ["/home"]) == ["/var/lib/app"]
    assert ram.read_paths(tmp_path) == ["/var/lib/app"]
    with pytest.raises(DeviceError, match="not one of"):
        ram.change_paths(tmp_path, [], ["/nope"])
    with pytest.raises(DeviceError, match="absolute directory path"):
        ram.change_paths(tmp_path, ["/a b"], [])


def test_mode_args() -> None:
    assert bootargs.mode_args("12ab34cd", "persistent", "50%") == "liveng.mode=persistent"
    args = bootargs.mode_args("12ab34cd", "ram", "384m").split()
    assert {"nopersistence", "toram=filesystem.squashfs", "overlay-size=384m", "liveng.mode=ram"} == set(args)
    args = bootargs.mode_args("12ab34cd", "ram-paths", "50%", ("/home", "/var/lib/x")).split()
    assert "liveng.paths=/home,/var/lib/x" in args
    for bad in ("home", "/", "/a/../b", "/proc/x", "/a,b", "/a b"):
        with pytest.raises(layout.LayoutError):
            bootargs.check_persistent_path(bad)


def test_recipe_ram_table() -> None:
    r = loads('[ram]\nmode = "ram-paths"\nzram_percent = 25\ndelta_cap = "512m"\n'
              'persistent_paths = ["/home", "/var/lib/app"]\njournal = "persistent"\n', "r.toml", None)
    assert r.ram == Ram(mode="ram-paths", zram_percent=25, delta_cap="512m",
                        persistent_paths=("/home", "/var/lib/app"), journal="persistent")
    assert loads("", "r.toml", None).ram == Ram()


@pytest.mark.parametrize(("text", "needle"), [
    ('[ram]\nmode = "tmpfs"', "ram.mode: 'tmpfs' is not one of: persistent, ram, ram-paths"),
    ("[ram]\nzram_percent = 300", "ram.zram_percent: 300 % is impossible"),
    ('[ram]\ndelta_cap = "100%"', "ram.delta_cap: '100%' is not a size"),
    ('[ram]\ndelta_cap = "1T"', "ram.delta_cap"),
    ('[ram]\npersistent_paths = ["home"]', "ram.persistent_paths[0]: 'home' is not an absolute"),
    ('[ram]\npersistent_paths = ["/run/x"]', "ram.persistent_paths[0]: '/run/x': /run is not part of the delta"),
    ('[ram]\npersistent_paths = ["/home", "/home"]', "ram.persistent_paths[0]: /home is listed twice"),
    ('[ram]\npersistent_paths = ["/home", "/home/pi"]', "/home/pi is inside /home"),
    ('[ram]\njournal = "disk"', "ram.journal: 'disk' is not one of"),
    ("[ram]\nswap = 1", "ram.swap: unknown key"),
])
def test_recipe_ram_errors(text: str, needle: str) -> None:
    with pytest.raises(RecipeError) as info:
        loads(text, "r.toml", None)
    assert str(info.value).startswith("r.toml: ") and needle in str(info.value)


def test_grub_modes() -> None:
    modes = {m: bootargs.mode_args("12ab34cd", m, "384m", ("/srv/keep",)) for m in layout.MODES}
    cfg = grub.grub_cfg("12ab34cd", "boot=live", 3, "console=ttyS0", (), "ram", modes)
    lines = cfg.splitlines()
    assert "set liveng_mode=ram" in lines
    assert "load_env --file $liveng_env liveng_order liveng_tries liveng_mode liveng_confirmed" in lines
    # No try is counted (nor grubenv written) in a RAM mode while the order is the confirmed one.
    assert lines.index('    if [ "$liveng_confirmed" = "$liveng_order" ]; then set liveng_count=no; fi') < \
        lines.index("    save_env --file $liveng_env liveng_order liveng_tries")
    assert 'if [ "$liveng_count" = yes ]; then' in lines
    # Every numbered entry passes the mode's arguments; a bad mode in grubenv boots persistent.
    # The factory reset's two entries (no, yes) included.
    assert cfg.count("$liveng_cmdline $liveng_margs liveng.boot=") == len(layout.ENTRIES) + 2 + len(layout.MODES)
    assert 'else set liveng_mode=persistent; set liveng_margs="liveng.mode=persistent"' in lines
    assert f'set liveng_margs="{modes["ram-paths"]}"' in cfg and "liveng.paths=/srv/keep" in cfg
    # The one-boot mode entries boot the order's first entry.
    assert 'if [ "$default" = 0 ]; then set liveng_head=slot-a; set liveng_head_part=msdos5' in lines


def test_mark_good_writes_nothing_when_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[dict[str, object]] = []
    state = BootState(order=("slot-a", "factory"), tries=3, good="slot-a", confirmed="0 2", mode="ram")
    monkeypatch.setattr(kernel, "booted_entry", lambda: "slot-a")
    monkeypatch.setattr(kernel, "health_checks", lambda: [])
    monkeypatch.setattr(verify, "intact", lambda name: True)
    monkeypatch.setattr(bootstate, "read_state", lambda: state)
    monkeypatch.setattr(bootstate, "update_state", lambda **kw: writes.append(kw))
    assert kernel.mark_good() == "slot-a"
    assert writes == []
    state = BootState(order=("slot-a", "factory"), tries=2, good="slot-a", confirmed="0 2")
    kernel.mark_good()
    assert writes == [{"order": ("slot-a", "factory"), "tries": 3, "good": "slot-a", "confirmed": "0 2"}]


def test_zram_and_journal_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(customize, "enable_units", lambda tree, units: calls.append(units))
    monkeypatch.setattr(customize, "run", lambda argv: calls.append([str(a) for a in argv]))
    (tmp_path / customize.UNIT_DIR).mkdir(parents=True)
    (tmp_path / customize.UNIT_DIR / "zramswap.service").write_text("[Unit]\n")
    customize.memory(tmp_path, Ram(zram_percent=30, journal="volatile"))
    assert "PERCENT=30\n" in (tmp_path / "etc/default/zramswap").read_text()
    assert calls == [["zramswap.service"]]
    assert "Storage=volatile\n" in (tmp_path / "etc/systemd/journald.conf.d/liveng.conf").read_text()
    customize.memory(tmp_path, Ram(zram_percent=0, journal="persistent"))
    assert calls[-1][-2:] == ["disable", "zramswap.service"]
    assert "Storage=persistent\n" in (tmp_path / "etc/systemd/journald.conf.d/liveng.conf").read_text()
