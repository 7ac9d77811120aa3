"""Images ready to ship: compressed, with a block map (bmaptool's .bmap) and SHA-256 sums; and
flashing such an image without unpacking it first.

`liveng build --compress zstd` leaves, beside IMAGE: IMAGE.zst, IMAGE.bmap (the ranges that hold
data, each with its SHA-256) and IMAGE.zst.sha256sums (`sha256sum -c` checks both). Anything that
reads bmaps (bmaptool, balenaEtcher) writes only the mapped ranges; so does `liveng flash`, which
hands the writing to bmaptool and then reads every mapped range back from the target and compares
it with the bmap's checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from liveng import layout, manifest
from liveng.durable import fsync_dir
from liveng.host import disk, flash, preflight
from liveng.host.errors import LivengError
from liveng.host.flashio import human
from liveng.host.imagefile import fat_file
from liveng.host.runner import output, reading, run

# compression -> (suffix, compress to stdout, decompress to stdout)
# --long=27: a 128 MiB window, which finds the kernel and initrd that p2 and slot A both hold (the
# default rpi image: 334 MiB without it, 241 MiB with it) and is still the largest window zstd's
# decoder takes without being told (--memory).
COMPRESSIONS = {
    "zstd": (".zst", ["zstd", "-q", "-T0", "-15", "--long=27", "-c"], ["zstd", "-q", "-d", "-c"]),
    "xz": (".xz", ["xz", "-q", "-T0", "-6", "-c"], ["xz", "-q", "-d", "-c"]),
}
TOOLS = {"bmaptool": "bmap-tools", "zstd": "zstd", "xz": "xz-utils"}


class ShipError(LivengError):
    """A compressed image, its bmap or its sums is unusable."""


@dataclass(frozen=True)
class Bmap:
    image_size: int
    ranges: tuple[tuple[int, int, str], ...]  # byte start, byte end (exclusive), SHA-256 of those bytes


def check_tools(*names: str) -> None:
    preflight.check_tools({n: TOOLS[n] for n in names})


def parse_bmap(path: Path) -> Bmap:
    """A bmap 2.x file with SHA-256 range checksums, checked enough to be trusted for writing."""
    try:
        root = ET.fromstring(path.read_bytes())
    except (OSError, ET.ParseError) as exc:
        raise ShipError(f"{path}: not a readable bmap file: {exc}") from None

    def number(tag: str) -> int:
        node = root.find(tag)
        try:
            value = int((node.text or "").strip()) if node is not None else -1
        except ValueError:
            value = -1
        if value <= 0:
            raise ShipError(f"{path}: <{tag}> is missing or not a positive number")
        return value

    if not root.get("version", "").startswith("2."):
        raise ShipError(f"{path}: bmap version {root.get('version')!r}; liveng reads version 2.x")
    if (root.findtext("ChecksumType") or "").strip() != "sha256":
        raise ShipError(f"{path}: the ranges carry no SHA-256 checksums (make it with bmaptool 3.x)")
    size, block = number("ImageSize"), number("BlockSize")
    ranges = []
    for node in root.iterfind("BlockMap/Range"):
        first, _, last = (node.text or "").strip().partition("-")
        try:
            start, end = int(first) * block, (int(last or first) + 1) * block
        except ValueError:
            raise ShipError(f"{path}: range {node.text!r} is not FIRST-LAST") from None
        digest = node.get("chksum", "")
        if len(digest) != 64 or not 0 <= start < end or start >= size:
            raise ShipError(f"{path}: range {node.text!r} (checksum {digest!r}) is impossible for this image")
        ranges.append((start, min(end, size), digest))
    return Bmap(size, tuple(ranges))


def package(image: Path, compression: str) -> list[Path]:
    """Write IMAGE.bmap, the compressed image and their sums beside ``image``; each appears under its
    name only when complete. Returns the three paths."""
    suffix, compress, _ = COMPRESSIONS[compression]
    check_tools("bmaptool", compression)
    bmap, packed = image.with_name(image.name + ".bmap"), image.with_name(image.name + suffix)
    sums = packed.with_name(packed.name + ".sha256sums")
    temps = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in (bmap, packed, sums)]
    try:
        run(["bmaptool", "-q", "create", "-o", temps[0], image])
        with open(temps[1], "wb") as out:
            run([*compress, image], stdout=out)
        temps[2].write_text("".join(f"{manifest.sha256_file(t)}  {p.name}\n" for t, p in ((temps[1], packed),
                                                                                   (temps[0], bmap))))
        for tmp, final in zip(temps, (bmap, packed, sums), strict=True):
            os.replace(tmp, final)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return [packed, bmap, sums]


def compression_of(image: Path) -> str | None:
    return next((name for name, (suffix, _, _) in COMPRESSIONS.items() if image.name.endswith(suffix)), None)


def bmap_for(image: Path) -> Path | None:
    """IMAGE.bmap for IMAGE.zst / IMAGE.xz (bmaptool's own rule), if it is there."""
    suffix = COMPRESSIONS[compression_of(image) or "zstd"][0]
    candidate = image.with_name(image.name.removesuffix(suffix) + ".bmap")
    return candidate if candidate.is_file() else None


def uncompressed_size(image: Path, compression: str) -> int:
    if compression == "zstd":
        for line in output(["zstd", "-lv", image]).splitlines():
            if line.strip().startswith("Decompressed Size:") and "(" in line:
                return int(line.rsplit("(", 1)[1].split()[0])
    else:
        for line in output(["xz", "--robot", "-l", image]).splitlines():
            fields = line.split("\t")
            if fields[0] == "totals":
                return int(fields[4])
    raise ShipError(f"{image}: its uncompressed size is not recorded; decompress it and flash the image itself")


def check_identity(image: Path, compression: str, size: int) -> str:
    """That the compressed image is a liveng image: its MBR (signature, p1's type) and the image.json
    on p1 naming the MBR's disk identifier, as `open_image` checks a raw one. Unpacks only as far as
    the end of p1 (the rest of the stream is not read). Returns the image id."""
    boot = layout.partition(layout.Role.BOOT)
    with tempfile.TemporaryDirectory(prefix="liveng-flash-", dir="/var/tmp") as tmp:
        head = Path(tmp) / "head.img"
        with reading([*COMPRESSIONS[compression][2], image]) as stream:
            mbr = stream.read(layout.SECTOR)
            entry = mbr[446 + 16 * (boot.number - 1):446 + 16 * boot.number]
            if len(mbr) < layout.SECTOR or mbr[510:512] != b"\x55\xaa" or entry[4] != boot.mbr_type:
                raise ShipError(f"{image}: its first sector is not a liveng image's partition table")
            image_id = f"{int.from_bytes(mbr[440:444], 'little'):08x}"
            p1_start = int.from_bytes(entry[8:12], "little") * layout.SECTOR
            p1_end = min(p1_start + int.from_bytes(entry[12:16], "little") * layout.SECTOR, size)
            with open(head, "wb") as out:
                out.write(mbr)
                left = p1_end - layout.SECTOR
                while left > 0:
                    chunk = stream.read(min(left, 1 << 20))
                    if not chunk:
                        raise ShipError(f"{image}: the compressed stream ends inside the boot partition")
                    if chunk.count(0) == len(chunk):
                        out.seek(len(chunk), os.SEEK_CUR)  # FAT's empty clusters: keep the file sparse
                    else:
                        out.write(chunk)
                    left -= len(chunk)
                out.truncate(p1_end)
        raw = fat_file(head, p1_start, layout.IMAGE_INFO_PATH)
    try:
        info = json.loads(raw)
    except ValueError as exc:
        raise ShipError(f"{image}: {layout.IMAGE_INFO_PATH} on its boot partition is damaged: {exc}") from None
    if not isinstance(info, dict) or info.get("id") != image_id:
        raise ShipError(f"{image}: {layout.IMAGE_INFO_PATH} does not name the disk identifier {image_id}")
    return image_id


def verify_against_bmap(target: Path, bmap: Bmap) -> None:
    with open(target, "rb") as f:
        for start, end, digest in bmap.ranges:
            f.seek(start)
            h = hashlib.sha256()
            left = end - start
            while left:
                chunk = f.read(min(left, 1 << 22))
                if not chunk:
                    raise ShipError(f"{target}: ends before byte {end}: the write did not complete")
                h.update(chunk)
                left -= len(chunk)
            if h.hexdigest() != digest:
                raise ShipError(f"{target}: bytes {start}-{end} differ from the image after writing: "
                                "the card or disk is faulty, or something else wrote to it")


def write(image: Path, dest: Path, bmap_path: Path | None) -> None:
    """bmaptool writes the mapped ranges (all of it without a bmap), checking them against the bmap's
    sums as it reads the compressed image."""
    check_tools("bmaptool")
    how = ["--bmap", str(bmap_path)] if bmap_path else ["--nobmap"]
    try:
        run(["bmaptool", "-q", "copy", *how, image, dest])
    except LivengError as exc:
        raise ShipError(f"writing {image} to {dest} failed:\n{exc}") from None


def _same_as_stream(image: Path, compression: str, dest: Path, size: int) -> None:
    """Without a bmap: the whole decompressed stream against what was written."""
    offset = 0
    with reading([*COMPRESSIONS[compression][2], image]) as stream, open(dest, "rb") as f:
        while chunk := stream.read(1 << 22):
            if f.read(len(chunk)) != chunk:
                raise ShipError(f"{dest}: differs from the image after writing, within bytes "
                                f"{offset}-{offset + len(chunk)}: the card or disk is faulty")
            offset += len(chunk)
    if offset != size:
        raise ShipError(f"{image}: {offset} bytes unpacked, {size} expected: the compressed image is damaged")


def _written(image: Path, compression: str, dest: Path, bmap_path: Path | None, bmap: Bmap | None,
             size: int) -> None:
    write(image, dest, bmap_path)
    if bmap is not None:
        verify_against_bmap(dest, bmap)
    else:
        _same_as_stream(image, compression, dest, size)


def blank_partition_starts(target: Path, bmap: Bmap) -> None:
    """A bmap leaves the target's old bytes where the image has holes. Where that is the start of a
    partition (slot B is empty on a new image), an old filesystem there would be found again, so the
    first MiB of every partition is zeroed wherever the bmap does not write it."""
    table = disk.read_table(target)  # the table just written
    zeros = bytes(layout.MiB)
    with open(target, "r+b") as f:
        for entry in table.entries:
            pos, end = entry.start, entry.start + min(layout.MiB, entry.size)
            for start, stop, _ in bmap.ranges:
                if stop <= pos or start >= end:
                    continue
                if start > pos:
                    f.seek(pos)
                    f.write(zeros[:start - pos])
                pos = max(pos, stop)
            if pos < end:
                f.seek(pos)
                f.write(zeros[:end - pos])
        f.flush()
        os.fsync(f.fileno())


def flash_compressed(image: Path, compression: str, target: Path, force: bool, host: flash.Host,
                     yes: bool) -> str:
    """`liveng flash IMAGE.zst|IMAGE.xz TARGET`: the same refusals as for a raw image, then bmaptool
    writes (only the mapped ranges when IMAGE.bmap is beside it) and every range is read back."""
    bmap_path = bmap_for(image)
    bmap = parse_bmap(bmap_path) if bmap_path else None
    size = bmap.image_size if bmap else uncompressed_size(image, compression)
    image_id = check_identity(image, compression, size)
    how = f"the mapped ranges in {bmap_path.name}" if bmap_path else "all of it (no bmap beside it)"
    try:
        st: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISBLK(st.st_mode):
        found = flash.check_block_target(target, st.st_rdev, size, force, host)
        flash.confirm_fixed(target, found, yes or force, flash._terminal_ask())
        print(f"liveng: writing {image} (id {image_id}, {human(size)}: {how}) to {target}: "
              f"{found.describe()}", file=sys.stderr)
        _written(image, compression, target, bmap_path, bmap, size)
        if bmap is not None:
            blank_partition_starts(target, bmap)
        return flash.finish_block(target, size)
    flash.check_file_target(image, target, st)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        print(f"liveng: writing {image} (id {image_id}, {human(size)}: {how}) to the file {target}",
              file=sys.stderr)
        _written(image, compression, tmp, bmap_path, bmap, size)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return f"{target}: {human(size)} written and verified"
