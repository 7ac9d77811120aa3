"""Reading a liveng image (file or block device) from the host, without mounting it."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liveng import layout
from liveng.host import disk
from liveng.host.errors import CommandError, ImageError
from liveng.host.runner import run

log = logging.getLogger("liveng")


@dataclass(frozen=True)
class ImageFile:
    path: Path
    table: disk.Table
    info: dict[str, Any]

    @property
    def arch(self) -> str:
        return str(self.info.get("arch", "amd64"))


def fat_file(image: Path, offset: int, path: str) -> bytes:
    """One file from the FAT partition at ``offset`` (mtools reads the image in place), as bytes."""
    try:
        # Bytes, not text: a damaged file is the caller's to judge, not a decoding error here.
        return run(["mtype", "-i", f"{image}@@{offset}", f"::/{path}"], env={"MTOOLS_SKIP_CHECK": "1"},
                   capture=True).stdout
    except CommandError as exc:
        raise ImageError(f"{image}: cannot read {path} from the boot partition: {exc.stderr.strip()}") from None


# What a booting liveng system needs from the table before any of its own code runs: the firmware
# and GRUB read p1, live-boot's initramfs p2 (both entries in the MBR).
FIRMWARE_ROLES = (layout.Role.BOOT, layout.Role.SYSTEM)


def open_image(path: Path, damaged_ok: bool = False) -> ImageFile:
    """``damaged_ok``: for booting a card as it is (liveng run): a logical partition's entry that is
    wrong (a torn EBR, which the system repairs at boot) is a warning, not an error."""
    if not path.exists():
        raise ImageError(f"{path}: no such image file or device")
    table = disk.read_table(path)
    for role, problem in disk.layout_problems(table):
        if not damaged_ok or role in FIRMWARE_ROLES:
            raise ImageError(f"{path}: {problem}: not a liveng image")
        log.warning("%s: %s: booting it as it is (the system on it may repair its table)", path, problem)
    boot = table.entry(layout.partition(layout.Role.BOOT).number)
    raw = fat_file(path, boot.start, layout.IMAGE_INFO_PATH)
    try:
        info = json.loads(raw)
    except ValueError as exc:
        raise ImageError(f"{path}: {layout.IMAGE_INFO_PATH} on the boot partition is damaged: {exc}") from None
    if not isinstance(info, dict):
        raise ImageError(f"{path}: {layout.IMAGE_INFO_PATH} on the boot partition is damaged: not a JSON object; "
                         "rebuild the image or flash it again")
    if info.get("id") != table.image_id:
        raise ImageError(f"{path}: image id {info.get('id')} in {layout.IMAGE_INFO_PATH} does not match the "
                         f"disk identifier {table.image_id}")
    return ImageFile(path=path, table=table, info=info)
