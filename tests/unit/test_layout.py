"""The disk-layout contract and what is derived from it."""

from __future__ import annotations

import itertools

import pytest

from liveng import bootargs, layout
from liveng.host import disk
from liveng.host.bootloader import grub

MiB = layout.MiB


def test_partition_table_contract() -> None:
    numbers = [p.number for p in layout.PARTITIONS]
    assert numbers == [1, 2, 3, 5, 6, 7]
    boot = layout.partition(layout.Role.BOOT)
    assert (boot.mbr_type, boot.bootable, boot.fstype) == (0x0C, True, "vfat")
    assert [p.number for p in layout.PARTITIONS if p.bootable] == [1]
    assert layout.partition(layout.Role.EXTENDED).mbr_type == 0x0F
    assert all(p.logical for p in layout.PARTITIONS if p.number >= 5)


def test_plan_places_partitions_aligned_and_without_overlap() -> None:
    extents, total = layout.plan(boot=256 * MiB, system=300 * MiB, slot=256 * MiB, persistence=1024 * MiB)
    by_number = {e.number: e for e in extents}
    assert by_number[1].start == MiB
    for e in extents:
        assert e.start % MiB == 0
    ext = by_number[3]
    for n in (5, 6, 7):
        assert ext.start < by_number[n].start and by_number[n].end <= ext.end
        # room for the EBR in front of every logical partition
        assert by_number[n].start - MiB >= ext.start
    primaries = sorted((by_number[n] for n in (1, 2, 3)), key=lambda e: e.start)
    for a, b in itertools.pairwise(primaries):
        assert a.end <= b.start
    logicals = [by_number[n] for n in (5, 6, 7)]
    for a, b in itertools.pairwise(logicals):
        assert a.end < b.start
    assert total == ext.end


@pytest.mark.parametrize("bad", [0, -MiB, MiB + 1])
def test_plan_rejects_unaligned_sizes(bad: int) -> None:
    with pytest.raises(layout.LayoutError):
        layout.plan(boot=bad, system=MiB, slot=MiB, persistence=MiB)


def test_ids_and_labels() -> None:
    image_id = layout.new_image_id()
    assert layout.ID_RE.match(image_id)
    assert layout.fat_serial("12ab34cd") == "12AB-34CD"
    assert layout.persistence_label("12ab34cd") == "liveng-12ab34cd"
    assert len(layout.persistence_label("12ab34cd")) <= 16  # ext4 label limit
    assert layout.partuuid("12ab34cd", 7) == "12ab34cd-07"
    with pytest.raises(layout.LayoutError):
        layout.check_image_id("XYZ")


def test_ids_differ() -> None:
    assert len({layout.new_image_id() for _ in range(50)}) == 50


def test_kernel_cmdline_points_at_own_partitions() -> None:
    line = bootargs.kernel_cmdline("12ab34cd", ("quiet",))
    assert "live-media=/dev/disk/by-partuuid/12ab34cd-02" in line
    assert "persistence-label=liveng-12ab34cd" in line
    assert "liveng.id=12ab34cd" in line
    assert line.endswith(" quiet")


def test_sfdisk_script() -> None:
    extents, _ = layout.plan(boot=256 * MiB, system=8 * MiB, slot=32 * MiB, persistence=64 * MiB)
    script = disk.sfdisk_script("12ab34cd", extents)
    assert "label: dos\nlabel-id: 0x12ab34cd\n" in script
    assert "start=2048, size=524288, type=c, bootable" in script
    assert script.count("type=83") == 4
    assert "type=f" in script


def test_grub_config() -> None:
    cfg = grub.grub_cfg("12ab34cd", "boot=live", 3, "console=ttyS0")
    assert 'set liveng_order="0 2"' in cfg
    assert "load_env --file $liveng_env liveng_order liveng_tries" in cfg
    assert "save_env --file $liveng_env liveng_order liveng_tries" in cfg
    assert "--set=1:default --set=2:fallback" in cfg
    assert "--id slot-b" in cfg and "set root=($liveng_disk,msdos6)" in cfg
    assert "set root=($liveng_disk,msdos5)" in cfg
    assert "--id factory" in cfg and "set root=($liveng_disk,msdos2)" in cfg
    assert "liveng.boot=slot-a" in cfg and "liveng.boot=factory" in cfg
    early = grub.early_config("12ab34cd")
    assert "search --no-floppy --fs-uuid --set=root 12AB-34CD" in early


def test_kernel_cmdline_reboots_on_panic() -> None:
    assert " panic=10 " in bootargs.kernel_cmdline("12ab34cd")


def test_boot_order_is_kept_as_menu_entry_numbers() -> None:
    # GRUB's fallback takes a list of entry numbers only; the menu must be in ENTRIES order.
    cfg = grub.grub_cfg("12ab34cd", "boot=live", 3, "console=ttyS0")
    ids = [line.split("--id ")[1].split()[0] for line in cfg.splitlines() if line.startswith(("menuentry", "submenu"))]
    # The factory reset entry comes after them, so that it shifts no number.
    assert tuple(ids) == (*layout.ENTRIES, layout.ENTRY_FACTORY_RESET, *(f"mode-{m}" for m in layout.MODES))
    assert layout.ENTRIES == ("slot-a", "slot-b", "factory")
    assert layout.order_to_env(["slot-b", "slot-a", "factory"]) == "1 0 2"
    assert layout.order_from_env("1 0 2") == ("slot-b", "slot-a", "factory")
    assert layout.order_from_env("9 x 2") == ("factory",)


def test_grubenv_paths_follow_the_cards_menu() -> None:
    """A card built before 2026-12-07 keeps its boot state where its grub.cfg reads it; GRUB reads this
    build's paths from this build's menu (the device and `liveng inspect` share the rule)."""
    assert layout.grubenv_paths(grub.grub_cfg("0123abcd", "quiet", 3, "console=ttyS0").encode()) == (
        layout.GRUBENV_PATH, layout.GRUBENV_BACKUP_PATH)
    old = (b"set liveng_env=($liveng_disk,msdos1)/boot/grub/grubenv\n"
           b"set liveng_env_bak=($liveng_disk,msdos1)/boot/grub/grubenv.bak\n")
    assert layout.grubenv_paths(old) == layout.LEGACY_GRUBENV_PATHS == ("boot/grub/grubenv", "boot/grub/grubenv.bak")
    assert layout.grubenv_paths(b"") == (layout.GRUBENV_PATH, layout.GRUBENV_BACKUP_PATH)
