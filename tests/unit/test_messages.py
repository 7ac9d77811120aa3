"""Messages, not tracebacks: damaged files on an image, unreadable inputs, values with a line end."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from liveng import bootargs, layout, settings
from liveng.device import cli, firstboot
from liveng.host import disk, imagefile, inspect, recipe
from liveng.host.errors import ImageError, RecipeError
from liveng.settings import SettingsError

ID = "0123abcd"


@pytest.mark.parametrize("text", ['hostname = "evil\\n"', 'timezone = "UTC\\n"', 'keyboard = "de\\n"',
                                  '[[users]]\nname = "pi\\n"', '[wifi]\ncountry = "DE\\n"\nssid = "x"'])
def test_a_final_line_end_is_not_part_of_a_valid_value(text: str) -> None:
    with pytest.raises(SettingsError, match="is not"):
        settings.loads(text, "f")


def test_ids_and_paths_with_a_line_end_are_refused() -> None:
    with pytest.raises(layout.LayoutError):
        layout.check_image_id(ID + "\n")
    with pytest.raises(layout.LayoutError):
        bootargs.check_persistent_path("/srv\n")
    with pytest.raises(RecipeError, match="packages"):
        recipe.loads('packages = ["vim\\n"]', "r.toml", None)


@pytest.mark.parametrize("arg", ["liveng.reset=yes", "liveng.mode=ram", "boot=nfs", "live-media=/dev/sdb1",
                                 "persistence", "persistence-label=x", "nopersistence", "toram", "panic=0",
                                 "overlay-size=1g"])
def test_recipe_cmdline_refuses_livengs_own_arguments(arg: str) -> None:
    with pytest.raises(RecipeError, match=r"cmdline\[0\]: .* liveng sets itself"):
        recipe.loads(f'cmdline = ["{arg}"]', "r.toml", None)
    assert recipe.loads('cmdline = ["quiet", "console=ttyS0"]', "r.toml", None).cmdline == ("quiet", "console=ttyS0")


def test_settings_check_refuses_special_files(tmp_path: Path) -> None:
    system = firstboot.System(root=tmp_path, live=False)
    with pytest.raises(SettingsError, match="/dev/zero: not a regular file"):
        firstboot.check_file(Path("/dev/zero"), system)


def test_device_cli_turns_os_errors_into_a_message(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    def broken(force: bool = False) -> None:
        raise OSError(errno.EIO, "Input/output error", "/run/liveng/boot.x/boot/grub/grubenv")

    monkeypatch.setattr(firstboot, "apply_boot_partition", broken)
    assert cli.main(["settings", "apply"]) == 1
    err = capsys.readouterr().err
    assert "/run/liveng/boot.x/boot/grub/grubenv: Input/output error" in err and "Traceback" not in err


def _table() -> disk.Table:
    mib = layout.MiB
    entries = tuple(disk.TableEntry(n, n * mib, mib, 0x83, False) for n in (1, 2, 3, 5, 6, 7))
    return disk.Table(ID, entries)


def test_inspect_reports_damaged_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "x.img"
    with open(image, "wb") as f:
        f.truncate(8 * layout.MiB)
        f.seek(7 * layout.MiB)
        f.write(b"LUKS\xba\xbe")  # encrypted: the persistence is not read
    files = {layout.GRUBENV_PATH: b"# GRUB Environment Block\nliveng_order=\xff\n",
             layout.IMAGE_INFO_PATH: b"[]"}
    def fat_file(_image: Path, _offset: int, path: str) -> bytes:
        if path not in files:
            raise ImageError(f"no {path}")  # as mtype's failure for a missing file
        return files[path]

    monkeypatch.setattr(imagefile, "fat_file", fat_file)
    monkeypatch.setattr(inspect, "fat_file", fat_file)
    monkeypatch.setattr(inspect, "iso_file", lambda _i, _o, _p: b"{not json")
    monkeypatch.setattr(disk, "read_table", lambda _p: _table())
    monkeypatch.setattr(disk, "layout_problems", lambda _t: [])
    with pytest.raises(ImageError, match=r"liveng/image\.json on the boot partition is damaged: not a JSON object"):
        imagefile.open_image(image)
    files[layout.IMAGE_INFO_PATH] = json.dumps({"id": ID}).encode()
    files[layout.SETTINGS_PATH] = files[layout.SETTINGS_ERROR_PATH] = b""
    report = inspect.status(imagefile.open_image(image))
    # Both copies are bad (the primary is not UTF-8, the backup missing): said, no traceback.
    assert any(e.startswith("boot state: the primary copy is damaged") for e in report["errors"])
    assert any(e.startswith("boot state: the backup copy is damaged") for e in report["errors"])
    assert any(e.startswith("slot a: liveng/slot.json is damaged") for e in report["errors"])


def test_host_settings_check_refuses_special_files(capsys: pytest.CaptureFixture[str]) -> None:
    from liveng.host.cli import main

    assert main(["settings", "check", "/dev/zero"]) == 2
    assert "/dev/zero: cannot read it: not a regular file" in capsys.readouterr().err


def test_a_damaged_logical_entry_boots_but_is_not_an_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A torn EBR in front of p7 (type and size garbage): liveng run boots the card as it is, for the
    system on it repairs its table; everything else refuses it. A damaged p1 or p2 is refused by both."""
    image = tmp_path / "x.img"
    image.write_bytes(b"")
    mib = layout.MiB
    types = {p.number: p.mbr_type for p in layout.PARTITIONS} | {7: 0xBA}
    torn = disk.Table(ID, tuple(disk.TableEntry(e.number, e.start, e.size, types[e.number], False)
                                for e in _table().entries))
    monkeypatch.setattr(disk, "read_table", lambda _p: torn)
    monkeypatch.setattr(imagefile, "fat_file", lambda _i, _o, _p: json.dumps({"id": ID}).encode())
    with pytest.raises(ImageError, match=r"partition 7 \(persistence\) has type 0xba, expected 0x83: not a liveng"):
        imagefile.open_image(image)
    assert imagefile.open_image(image, damaged_ok=True).table is torn
    no_p2 = disk.Table(ID, (*(e for e in torn.entries if e.number != 2), disk.TableEntry(9, mib, mib, 0x83, False)))
    monkeypatch.setattr(disk, "read_table", lambda _p: no_p2)
    with pytest.raises(ImageError, match=r"partition 2 \(system\) is missing"):
        imagefile.open_image(image, damaged_ok=True)
