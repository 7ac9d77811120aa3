"""liveng bundle IMAGE: the system of a built image as a signed update bundle (liveng/bundle.py), and
with --channel the channel's signed index beside it.

The system is the ISO9660 image on the image's p2, cut at the ISO's own size (the partition is
rounded up to whole MiB). Its image.json and manifest say what it is; the metadata names them and
the system's size and SHA-256, and gpg signs the metadata with the key given. The bundle is written
to a temporary name, read back and checked as a device would check it (footer, gpgv, hash), and
only then renamed to its name; the index follows it the same way, so a channel never offers a bundle
that is not complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from liveng import bundle, layout
from liveng.durable import fsync_dir
from liveng.host import inspect, openpgp
from liveng.host.errors import ImageError, UpdateBundleError, UsageError
from liveng.host.imagefile import open_image
from liveng.host.runner import run

log = logging.getLogger("liveng.bundle")

ISO_BLOCK = inspect.ISO_BLOCK
CHUNK = 4 * layout.MiB
INFO_MAX = 64 * 1024
_MANIFEST_LINE_RE = re.compile(r"([0-9a-f]{64})  (\S+)")


@dataclass(frozen=True)
class System:
    """A system ISO inside a file (an image's p2, or an ISO file of its own) and what it says it is."""

    source: Path
    offset: int
    size: int
    info: dict[str, Any]
    files: dict[str, str]  # its manifest: path -> sha256

    @property
    def version(self) -> str:
        return str(self.info["version"])


def iso_size(source: Path, offset: int, room: int) -> int:
    """The size of the ISO9660 at ``offset``, from its primary volume descriptor (blocks times block size)."""
    with open(source, "rb") as f:
        f.seek(offset + 16 * ISO_BLOCK)
        pvd = f.read(ISO_BLOCK)
    if len(pvd) < ISO_BLOCK or pvd[0] != 1 or pvd[1:6] != b"CD001":
        raise ImageError(f"{source}: the system partition holds no ISO9660 filesystem: not a liveng image, or damaged")
    # Both-endian fields (ECMA-119 8.4.8, 8.4.12): the little-endian half first.
    blocks = struct.unpack_from("<I", pvd, 80)[0]
    block_size = struct.unpack_from("<H", pvd, 128)[0]
    size: int = blocks * block_size
    if block_size != ISO_BLOCK or not 16 * ISO_BLOCK < size <= room:
        raise ImageError(f"{source}: the system ISO says it is {blocks} blocks of {block_size} bytes, which does not "
                         f"fit its partition of {room} bytes: the image is damaged")
    return size


def _iso_text(source: Path, offset: int, path: str) -> str:
    raw = inspect.iso_file(source, offset, path)
    if raw is None:
        raise ImageError(f"{source}: the system has no {path}: not a liveng system, or damaged")
    if len(raw) > bundle.METADATA_CAP:
        raise ImageError(f"{source}: the system's {path} is {len(raw)} bytes, too large to be liveng's")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ImageError(f"{source}: the system's {path} is not text: the image is damaged") from None


def parse_manifest(text: str, where: str) -> dict[str, str]:
    files = {}
    for n, line in enumerate(text.splitlines(), 1):
        m = _MANIFEST_LINE_RE.fullmatch(line)
        if not m:
            raise ImageError(f"{where}: {layout.MANIFEST_PATH} line {n} is not 'SHA256  PATH': the image is damaged")
        files[m.group(2)] = m.group(1)
    return files


def read_system(source: Path, offset: int = 0, room: int | None = None) -> System:
    """The system ISO at ``offset`` of ``source``, checked to be one a device can take as an update."""
    if room is None:
        room = source.stat().st_size - offset
    size = iso_size(source, offset, room)
    text = _iso_text(source, offset, layout.IMAGE_INFO_PATH)
    try:
        info = json.loads(text)
    except ValueError as exc:
        raise ImageError(f"{source}: the system's {layout.IMAGE_INFO_PATH} is not JSON ({exc}): damaged") from None
    if not isinstance(info, dict):
        raise ImageError(f"{source}: the system's {layout.IMAGE_INFO_PATH} is not a JSON object: damaged")
    found = info.get("layout")
    if not isinstance(found, int) or found < layout.UPDATABLE_LAYOUT:
        raise ImageError(f"{source}: layout {found}: built by a liveng without system updates: rebuild it")
    if "version" not in info:
        raise ImageError(f"{source}: the system's {layout.IMAGE_INFO_PATH} names no version: rebuild it with this "
                         "liveng")
    try:
        bundle.check_version(str(info["version"]))
    except bundle.BundleError as exc:
        raise ImageError(f"{source}: {exc}") from None
    for key in ("target", "arch", "kernel", "built"):
        if not isinstance(info.get(key), str) or not info[key]:
            raise ImageError(f"{source}: the system's {layout.IMAGE_INFO_PATH} has no {key}: damaged")
    files = parse_manifest(_iso_text(source, offset, layout.MANIFEST_PATH), str(source))
    missing = [p for p in (layout.KERNEL_PATH, layout.INITRD_PATH, layout.SQUASHFS_PATH) if p not in files]
    if missing:
        raise ImageError(f"{source}: the system's {layout.MANIFEST_PATH} lists no {', '.join(missing)}: not a "
                         "complete liveng system")
    return System(source=source, offset=offset, size=size, info=info, files=files)


def image_system(image: Path) -> System:
    """The system on p2 of a built image file (or a card)."""
    img = open_image(image)
    p2 = img.table.entry(layout.partition(layout.Role.SYSTEM).number)
    return read_system(image, p2.start, p2.size)


def metadata(system: System, sha256: str) -> bundle.Metadata:
    info = system.info
    return bundle.Metadata(version=system.version, target=info["target"], arch=info["arch"], layout=info["layout"],
                           built=info["built"], kernel=info["kernel"], system_size=system.size,
                           system_sha256=sha256, files=dict(sorted(system.files.items())))


@contextmanager
def _temporary(dest: Path) -> Iterator[Path]:
    """A temporary name beside ``dest``, gone afterwards unless it was renamed to ``dest``."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _publish(tmp: Path, dest: Path) -> None:
    os.replace(tmp, dest)
    fsync_dir(dest.parent)


def _write_small(dest: Path, data: bytes) -> None:
    with _temporary(dest) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, dest)


def _copy_system(system: System, out: IO[bytes]) -> str:
    """Copy the system ISO into the open file ``out``; its SHA-256."""
    digest = hashlib.sha256()
    with open(system.source, "rb") as src:
        src.seek(system.offset)
        left = system.size
        while left:
            chunk = src.read(min(CHUNK, left))
            if not chunk:
                raise ImageError(f"{system.source}: ends inside its system ISO: the image is truncated")
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Checked:
    metadata: bundle.Metadata
    size: int
    sha256: str  # of the whole bundle file


def check_bundle(path: Path, keyring: bytes) -> Checked:
    """Read a bundle back as a device does: footer, signature (gpgv with ``keyring``), metadata, system hash."""
    size = path.stat().st_size
    whole = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(max(0, size - bundle.FOOTER_SIZE))
        footer = bundle.parse_footer(f.read(bundle.FOOTER_SIZE), size)
        f.seek(footer.metadata_offset)
        raw_meta = f.read(footer.metadata_size)
        signature = f.read(footer.signature_size)
        try:
            openpgp.verify(keyring, raw_meta, signature)
        except openpgp.SignatureError as exc:
            raise UpdateBundleError(f"{path}: gpgv does not accept the bundle's signature: {exc}") from None
        meta = bundle.parse_metadata(raw_meta)
        bundle.check_system_fits(meta, footer)
        f.seek(0)
        system = hashlib.sha256()
        left = meta.system_size
        while chunk := f.read(CHUNK):
            whole.update(chunk)
            system.update(chunk[:left])
            left -= min(left, len(chunk))
    if system.hexdigest() != meta.system_sha256:
        raise UpdateBundleError(f"{path}: the system read back does not match its signed hash: the disk or the "
                               "file system lost a write; try again elsewhere")
    return Checked(metadata=meta, size=size, sha256=whole.hexdigest())


def write_bundle(system: System, output: Path, signer: openpgp.Signer) -> Checked:
    """Write ``output``: the system, then the signed metadata (liveng/bundle.py); only a checked bundle gets
    its name."""
    with _temporary(output) as tmp:
        with open(tmp, "wb") as out:
            sha256 = _copy_system(system, out)
            meta = metadata(system, sha256)
            raw = meta.to_json()
            bundle.parse_metadata(raw)  # the device's rules, before anything is signed
            out.write(bundle.trailer(system.size, raw, signer.sign(raw)))
            out.flush()
            os.fsync(out.fileno())
        checked = check_bundle(tmp, signer.public_key())
        _publish(tmp, output)
    return checked


def write_index(output: Path, checked: Checked, signer: openpgp.Signer) -> Path:
    """The channel's index.json (and its signature) naming ``output``, in ``output``'s directory."""
    meta = checked.metadata
    index = bundle.Index(version=meta.version, target=meta.target, arch=meta.arch, bundle=output.name,
                         size=checked.size, sha256=checked.sha256)
    raw = index.to_json()
    bundle.parse_index(raw)
    path = output.parent / bundle.INDEX_NAME
    _warn_replacing(path, index)
    signature = signer.sign(raw)
    try:
        openpgp.verify(signer.public_key(), raw, signature)
    except openpgp.SignatureError as exc:
        raise UpdateBundleError(f"{path}: gpgv does not accept the index's signature: {exc}") from None
    # The signature first, the index last: a device that reads the new index finds its signature in place.
    _write_small(output.parent / bundle.INDEX_SIG_NAME, signature)
    _write_small(path, raw)
    return path


def _warn_replacing(path: Path, new: bundle.Index) -> None:
    """What a device following the channel might not expect: another target, an older version."""
    try:
        old = bundle.parse_index(path.read_bytes())
    except (OSError, bundle.BundleError):
        return
    if (old.target, old.arch) != (new.target, new.arch):
        log.warning("%s offered a %s (%s) system, this bundle is for %s (%s): devices of the channel will refuse it",
                    path, old.target, old.arch, new.target, new.arch)
    if shutil.which("dpkg") and run(["dpkg", "--compare-versions", new.version, "lt", old.version],
                                    check=False).returncode == 0:
        log.warning("%s offered version %s, newer than this bundle's %s", path, old.version, new.version)


def check_output(output: Path, channel: bool) -> None:
    if not output.name.endswith(bundle.BUNDLE_SUFFIX):
        raise UsageError(f"{output}: name the bundle NAME{bundle.BUNDLE_SUFFIX}")
    if not output.parent.is_dir():
        raise UsageError(f"{output.parent} does not exist: create it or choose another -o")
    if output.is_dir():
        raise UsageError(f"{output} is a directory: give the bundle's file name with -o")
    if channel:
        probe = bundle.Index(version="0", target="", arch="", bundle=output.name, size=bundle.FOOTER_SIZE + 1,
                             sha256="0" * 64)
        try:
            bundle.parse_index(probe.to_json())
        except bundle.BundleError:
            raise UsageError(f"{output.name}: a channel's bundle needs a plain file name (letters, digits, . _ + ~ -, "
                             "starting with a letter or digit)") from None


@dataclass(frozen=True)
class Made:
    path: Path
    checked: Checked
    signer: str
    index: Path | None


def make(image: Path, output: Path | None, key_file: Path, passphrase_file: Path | None = None,
         channel: bool = False) -> Made:
    """liveng bundle: read the image, sign, write and check the bundle (and the index)."""
    if output is not None:
        check_output(output.absolute(), channel)
    system = image_system(image)
    if output is None:
        output = Path(f"liveng-{system.info['target']}-{system.version}{bundle.BUNDLE_SUFFIX}")
        check_output(output.absolute(), channel)
    output = output.absolute()
    try:
        passphrase = openpgp.read_passphrase(passphrase_file) if passphrase_file is not None else b""
        with openpgp.signer(key_file, passphrase) as signer:
            _warn_untrusted(system, signer.fingerprint)
            checked = write_bundle(system, output, signer)
            index = write_index(output, checked, signer) if channel else None
    except openpgp.KeyFileError as exc:
        raise UsageError(f"--sign-key {key_file}: {exc}") from None
    except bundle.BundleError as exc:
        raise UpdateBundleError(f"{output}: {exc}") from None
    return Made(path=output, checked=checked, signer=signer.fingerprint, index=index)


def _warn_untrusted(system: System, fingerprint: str) -> None:
    keys = system.info.get("update_keys")
    if not keys:
        log.warning("the system in this bundle takes no update bundles itself (its recipe names no [update] "
                    "keyring): a device that installs it cannot be updated with a bundle again")
    elif isinstance(keys, list) and fingerprint not in keys:
        log.warning("the system in this bundle does not trust the key signing it (%s): its devices will take later "
                    "bundles only if they are signed with %s", fingerprint, ", ".join(map(str, keys)))


def summary(made: Made) -> str:
    meta = made.checked.metadata
    line = (f"liveng: {made.path}: version {meta.version} ({meta.target}, {meta.arch}, kernel {meta.kernel}), "
            f"system {meta.system_size / layout.MiB:.1f} MiB, bundle {made.checked.size} bytes, "
            f"signed by {made.signer}")
    if made.index is not None:
        line += f"; {made.index} names it"
    return line
