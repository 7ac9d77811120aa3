"""Pure logic of the delta commands: requests, partition growth, kernels that fit a delta, the menu's reset."""

from __future__ import annotations

from pathlib import Path

import pytest

from liveng import layout
from liveng.device import bootstate, delta, kernelfit, resize, snapshot
from liveng.device.bootstate import DeviceError
from liveng.host.bootloader import grub
from liveng.requests import Request

MiB_S = layout.MiB // layout.SECTOR


def test_request_round_trip() -> None:
    r = Request(action="restore", snapshot="before-upgrade", created="2026-01-02T03:04:05Z", order="1 0 2")
    assert delta.parse_request(r.text()) == r
    reset = Request(action="reset", delete_snapshots=True)
    assert delta.parse_request(reset.text()) == reset
    assert "snapshots deleted too" in reset.describe()
    assert delta.parse_request("action=reset\n").staged == layout.STAGED_DIR  # staged before the key existed
    assert delta.parse_request(Request(action="reset", staged=layout.STAGED_DIRS[1]).text()).staged == "liveng/rw.next"


@pytest.mark.parametrize(("text", "message"), [
    ("action=format\n", "unknown action 'format'"),
    ("action=restore\n", "a restore without a snapshot"),
    ("action=reset\ndelete_snapshots=yes\n", "delete_snapshots must be 0 or 1"),
    ("garbage\n", "malformed line 'garbage'"),
    ("action=reset\nstaged=liveng/../rw\n", "staged='liveng/../rw' is not one of liveng/rw.new, liveng/rw.next"),
])
def test_bad_requests_are_named(text: str, message: str) -> None:
    with pytest.raises(DeviceError, match=message):
        delta.parse_request(text)


def test_write_atomic_replaces_whole(tmp_path: Path) -> None:
    target = tmp_path / "pending"
    target.write_text("old")
    bootstate.write_atomic(target, b"new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["pending"]


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "a/b", "x" * 65, "a b"])
def test_bad_snapshot_names(name: str) -> None:
    with pytest.raises(DeviceError, match="snapshot name"):
        snapshot.check_name(name)


def test_snapshot_names() -> None:
    assert snapshot.check_name("before-upgrade_2.1") == "before-upgrade_2.1"
    assert snapshot.check_name("x.tar.zst") == "x"


# A 2 GiB image: p3 from 1281 MiB, p7 at 1794 MiB for 254 MiB (ends at 2048 MiB).
IMAGE = resize.Geometry(disk=2048 * MiB_S, extended_start=1281 * MiB_S, extended_size=767 * MiB_S,
                        persistence_start=1794 * MiB_S, persistence_size=254 * MiB_S)


def test_grow_plan_on_a_bigger_disk() -> None:
    g = resize.Geometry(**{**IMAGE.__dict__, "disk": 4096 * MiB_S + 7})  # not a whole MiB: aligned down
    p = resize.plan(g)
    assert p.end == 4096 * MiB_S
    assert p.extended_size == (4096 - 1281) * MiB_S
    assert p.persistence_size == (4096 - 1794) * MiB_S


def test_grow_plan_resumes_after_the_extended_partition_grew() -> None:
    g = resize.Geometry(**{**IMAGE.__dict__, "disk": 4096 * MiB_S, "extended_size": (4096 - 1281) * MiB_S})
    p = resize.plan(g)
    assert p.extended_size is None and p.persistence_size == (4096 - 1794) * MiB_S and p.needed


def test_grow_plan_nothing_to_do() -> None:
    assert not resize.plan(IMAGE).needed
    # Less than a MiB more is not worth a partition-table write.
    assert not resize.plan(resize.Geometry(**{**IMAGE.__dict__, "disk": 2048 * MiB_S + 100})).needed


def test_grow_plan_refuses_a_too_small_disk() -> None:
    with pytest.raises(DeviceError, match="smaller disk"):
        resize.plan(resize.Geometry(**{**IMAGE.__dict__, "disk": 2000 * MiB_S}))


def test_kernels_that_fit_a_delta(tmp_path: Path) -> None:
    slots = {"a": "6.12.0-factory", "b": "6.12.9-update"}
    order = ("slot-b", "slot-a", "factory")
    # A pristine delta (reset): only the factory kernel's modules, in the squashfs.
    assert kernelfit.fitting_order(order, slots.get, lambda v: v == "6.12.0-factory") == ("slot-a", "factory")
    (tmp_path / "usr/lib/modules/6.12.9-update").mkdir(parents=True)
    assert kernelfit.has_modules(tmp_path, "6.12.9-update") and not kernelfit.has_modules(tmp_path, "6.1.0")
    assert kernelfit.fitting_order(order, slots.get, lambda v: kernelfit.has_modules(tmp_path, v)) == (
        "slot-b", "factory")
    assert kernelfit.fitting_order(order, {"a": None, "b": None}.get, lambda v: True) == ("factory",)


def test_menu_reset_entry_asks_and_stays_out_of_the_order() -> None:
    cfg = grub.grub_cfg("12ab34cd", "boot=live", 3, "console=ttyS0")
    entry = cfg[cfg.index("submenu 'Factory reset (asks for confirmation)'"):]
    no, yes = entry.split("--id factory-reset-yes")
    assert "liveng.reset=no" in no and "liveng.boot=factory" in no
    assert "liveng.reset=yes" in yes and "liveng.boot=factory" in yes
    assert "set root=($liveng_disk,msdos2)" in no and "set root=($liveng_disk,msdos2)" in yes
    # A confirmed reset points the order at the factory kernel (entry 2) with fresh tries.
    assert "set liveng_order=2" in yes and "save_env --file $liveng_env liveng_order liveng_tries" in yes
    assert "save_env" not in no
    assert "liveng_env" in cfg[cfg.index("export "):].splitlines()[0]
    assert layout.ENTRY_FACTORY_RESET not in layout.ENTRIES


def test_cancel_removes_even_a_damaged_request(tmp_path: Path) -> None:
    (tmp_path / layout.DELTA_STATE_DIR).mkdir()
    (tmp_path / layout.PENDING_PATH).write_text("garbage\n")
    (tmp_path / layout.STAGED_DIR).mkdir()
    assert delta.drop_pending(tmp_path) is not None
    assert not (tmp_path / layout.PENDING_PATH).exists() and not (tmp_path / layout.STAGED_DIR).exists()
    assert delta.drop_pending(tmp_path) is None


def test_stage_commits_only_a_complete_delta(tmp_path: Path) -> None:
    (tmp_path / layout.DELTA_DIR).mkdir()

    def fail(staged: Path) -> None:
        (staged / "half").write_text("x")
        raise DeviceError("disk full")

    with pytest.raises(DeviceError, match="disk full"):
        delta.stage(tmp_path, Request(action="reset"), fail)
    assert not (tmp_path / layout.STAGED_DIR).exists() and not (tmp_path / layout.PENDING_PATH).exists()
    request = delta.stage(tmp_path, Request(action="reset"), lambda staged: None, lambda staged: "1 0 2")
    assert request.order == "1 0 2"
    assert delta.read_pending(tmp_path) == request
    assert (tmp_path / layout.STAGED_DIR).stat().st_mode & 0o777 == 0o755
    # A second request while the first is pending: the other directory; a failure leaves the first.
    with pytest.raises(DeviceError, match="disk full"):
        delta.stage(tmp_path, Request(action="reset"), fail)
    assert delta.read_pending(tmp_path) == request and (tmp_path / layout.STAGED_DIR).is_dir()
    assert not (tmp_path / layout.STAGED_DIRS[1]).exists()
    second = delta.stage(tmp_path, Request(action="reset"), lambda staged: None)
    assert second.staged == layout.STAGED_DIRS[1] and delta.read_pending(tmp_path) == second
    assert not (tmp_path / layout.STAGED_DIR).exists()
    assert delta.stage(tmp_path, Request(action="reset"), lambda staged: None).staged == layout.STAGED_DIR
    assert not (tmp_path / layout.STAGED_DIRS[1]).exists()
    (tmp_path / layout.SWITCH_PATH).write_text("action=reset\n")
    with pytest.raises(DeviceError, match="reboot first"):
        delta.stage(tmp_path, Request(action="reset"), lambda staged: None)


def test_status_lines() -> None:
    from liveng.device import status

    report = {
        "image_id": "12ab34cd", "boot_entry": "slot-a", "firmware": "UEFI", "kernel": "6.12.0",
        "root_fstype": "overlay",
        "lower": ["/run/live/rootfs/filesystem.squashfs/"], "upper": "/run/live/persistence/vda7/rw",
        "persistence_device": "/dev/vda7", "errors": [],
        "partitions": [{"number": 7, "role": "persistence", "device": "/dev/vda7", "size": 2 * layout.MiB}],
        "persistence": {"size": 4 * layout.MiB, "free": 3 * layout.MiB, "delta_bytes": layout.MiB},
        "snapshots": {"count": 1, "bytes": layout.MiB, "last": {"name": "s1", "created": "2026-01-01T00:00:00Z",
                                                                 "size": layout.MiB}},
        "pending": {"text": "factory reset, requested now, applied at the next boot"},
        "switch_in_progress": False,
        "kernel_slots": {"order": ["slot-a", "factory"], "tries": 3, "good": "slot-a",
                         "slots": {"a": {"kernel": "6.12.0", "written": "x"}, "b": {"kernel": None}}},
    }
    text = "\n".join(status.lines(report))
    assert "booted from:  slot-a (UEFI)" in text
    assert "p7  persistence  /dev/vda7      2.0 MiB" in text
    assert "delta:        1.0 MiB used; persistence 4.0 MiB, 3.0 MiB free" in text
    assert "snapshots:    1 (1.0 MiB), last: s1 2026-01-01T00:00:00Z" in text
    assert "pending:      factory reset" in text and "liveng cancel" in text
    assert "slot B:       empty" in text


def test_stage_waits_for_an_unfinished_menu_reset(tmp_path: Path) -> None:
    (tmp_path / layout.DELTA_DIR).mkdir()
    (tmp_path / layout.RESET_DELTA_DIR).mkdir(parents=True)
    with pytest.raises(DeviceError, match="reboot first"):
        delta.stage(tmp_path, Request(action="reset"), lambda staged: None)


def test_grow_plan_stops_at_the_mbr_limit() -> None:
    g = resize.Geometry(**{**IMAGE.__dict__, "disk": 3 * 2**32 // 2})  # 3 TiB
    p = resize.plan(g)
    assert p.end == 2**32 and p.extended_size == 2**32 - g.extended_start  # sfdisk would wrap anything more
    assert p.persistence_size is not None and g.persistence_start + p.persistence_size == 2**32
    assert len(p.notes) == 1 and "larger than 2 TiB" in p.notes[0]
    grown = resize.Geometry(**{**g.__dict__, "extended_size": p.extended_size, "persistence_size": p.persistence_size})
    assert not resize.plan(grown).needed


def test_grow_plan_stops_at_a_partition_after_p3() -> None:
    # Someone added a primary p4 at 3000 MiB on a 4 GiB disk.
    g = resize.Geometry(**{**IMAGE.__dict__, "disk": 4096 * MiB_S, "others": ((4, 3000 * MiB_S, 1000 * MiB_S),)})
    p = resize.plan(g)
    assert p.extended_size == (3000 - 1281) * MiB_S and p.persistence_size == (3000 - 1794) * MiB_S
    assert "partition 4 lies after the extended partition" in p.notes[0]
    # Right after p3: nothing to grow, no error at every boot.
    g = resize.Geometry(**{**IMAGE.__dict__, "disk": 4096 * MiB_S, "others": ((4, 2048 * MiB_S, 2048 * MiB_S),)})
    assert not resize.plan(g).needed
