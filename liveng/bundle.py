"""Update bundles and update channels: the format the host writes (`liveng bundle`) and the device
reads (`liveng update`). Standard library only: installed inside every image.

A bundle is one file, so that any web server, CDN or object store can serve it and a download can
resume with a range request:

    [0, S)            the new system: the ISO9660 image p2 of the new build holds (kernel, initrd,
                      squashfs, its manifest and image.json), S = metadata["system"]["size"]
    [S, M)            zeros up to the next multiple of ALIGN
    [M, M+m)          the metadata, JSON (Metadata below)
    [M+m, M+m+g)      a detached OpenPGP signature over the metadata's bytes (gpg; gpgv on the device)
    last FOOTER_SIZE  MAGIC, then M, m and g as 16-digit decimal numbers

The signature covers the metadata, the metadata names the system's size and SHA-256: nothing of a
bundle is trusted before gpgv has accepted the metadata and the system's hash matches it. The device
keeps the system as a plain ISO file: it cuts the bundle at S (a truncate, nothing copied).

A channel is a directory of plain files: INDEX_NAME (JSON naming the newest bundle of the channel)
with its detached signature INDEX_SIG_NAME, and the bundles.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from liveng import layout

FORMAT = 1
MAGIC = b"LIVENG-BUNDLE-1\n"
FOOTER_SIZE = len(MAGIC) + 3 * 16
ALIGN = 4096
METADATA_CAP = 256 * 1024  # a manifest of a few dozen files
SIGNATURE_CAP = 64 * 1024  # an OpenPGP signature is a few hundred bytes; several signers fit
INDEX_NAME = "index.json"
INDEX_SIG_NAME = "index.json.sig"
BUNDLE_SUFFIX = ".bundle"
# Debian version syntax (dpkg --compare-versions orders them); no colon, so it can name a directory.
VERSION_RE = re.compile(r"^[0-9][A-Za-z0-9.+~-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# A system's name on p7 (layout.SYSTEMS_DIR/<name>) and in a slot (layout.SLOT_SYSTEM_PATH): the
# version and the start of the system's hash, so two builds of one version never share a name.
SYSTEM_NAME_RE = re.compile(r"^[0-9][A-Za-z0-9.+~-]{0,63}_[0-9a-f]{12}$")

# In the image: the OpenPGP keyring update bundles must be signed with, and the [update] settings.
UPDATE_KEYRING_PATH = "etc/liveng/update-keyring.gpg"
UPDATE_CONFIG_PATH = "etc/liveng/update.json"
# What an update carries from the running delta into the new system's when the recipe says nothing:
# the owner's data and the machine's identity. Accounts are not carried (the new system's
# /etc/passwd may list new system users); liveng-settings.toml applies them again.
UPDATE_KEEP_DEFAULT = (
    "/home", "/root", "/srv", "/etc/machine-id",
    "/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ed25519_key.pub",
    "/etc/ssh/ssh_host_ecdsa_key", "/etc/ssh/ssh_host_ecdsa_key.pub",
    "/etc/ssh/ssh_host_rsa_key", "/etc/ssh/ssh_host_rsa_key.pub",
)


class BundleError(ValueError):
    """A bundle or index that is not in this format; the message says what is wrong."""


@dataclass(frozen=True)
class Metadata:
    version: str
    target: str
    arch: str
    layout: int
    built: str
    kernel: str
    system_size: int
    system_sha256: str
    files: dict[str, str]  # path in the system ISO -> sha256 (its manifest)

    @property
    def system_name(self) -> str:
        return system_name(self.version, self.system_sha256)

    def to_json(self) -> bytes:
        data = {"format": FORMAT, "version": self.version, "target": self.target, "arch": self.arch,
                "layout": self.layout, "built": self.built, "kernel": self.kernel,
                "system": {"size": self.system_size, "sha256": self.system_sha256}, "files": self.files}
        return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


def system_name(version: str, sha256: str) -> str:
    name = f"{version}_{sha256[:12]}"
    if not SYSTEM_NAME_RE.fullmatch(name):
        raise BundleError(f"version {version!r} or hash {sha256!r} cannot name a system")
    return name


def check_version(version: str) -> str:
    if not VERSION_RE.fullmatch(version):
        raise BundleError(f"version {version!r} is not a Debian-style version: it starts with a digit and "
                          "holds only letters, digits and . + ~ - (at most 64 characters)")
    return version


def _field(data: dict[str, object], key: str, kind: type) -> object:
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BundleError(f"the metadata's {key!r} is missing or not a {kind.__name__}")
    return value


def parse_metadata(raw: bytes) -> Metadata:
    """The metadata of a bundle (call only once its signature is verified)."""
    try:
        data = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"the metadata is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BundleError("the metadata is not a JSON object")
    if data.get("format") != FORMAT:
        raise BundleError(f"bundle format {data.get('format')!r}: this liveng reads format {FORMAT}")
    system = _field(data, "system", dict)
    assert isinstance(system, dict)
    size, digest = system.get("size"), system.get("sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or not isinstance(digest, str) \
            or not SHA256_RE.fullmatch(digest):
        raise BundleError("the metadata's system size or sha256 is missing or malformed")
    files = _field(data, "files", dict)
    assert isinstance(files, dict)
    for rel, value in files.items():
        if not isinstance(value, str) or not SHA256_RE.fullmatch(value) or not re.fullmatch(r"[A-Za-z0-9._/-]+", rel) \
                or ".." in rel.split("/"):
            raise BundleError(f"the metadata's file entry {rel!r} is malformed")
    for required in (layout.KERNEL_PATH, layout.INITRD_PATH, layout.SQUASHFS_PATH):
        if required not in files:
            raise BundleError(f"the metadata lists no {required}")
    layout_version = _field(data, "layout", int)
    assert isinstance(layout_version, int)
    return Metadata(version=check_version(str(_field(data, "version", str))), target=str(_field(data, "target", str)),
                    arch=str(_field(data, "arch", str)), layout=layout_version, built=str(_field(data, "built", str)),
                    kernel=str(_field(data, "kernel", str)), system_size=size, system_sha256=digest,
                    files={str(k): str(v) for k, v in files.items()})


def align_up(value: int) -> int:
    return -(-value // ALIGN) * ALIGN


def trailer(system_size: int, metadata: bytes, signature: bytes) -> bytes:
    """What follows the system in a bundle: padding, metadata, signature, footer."""
    start = align_up(system_size)
    footer = MAGIC + b"".join(b"%016d" % n for n in (start, len(metadata), len(signature)))
    return bytes(start - system_size) + metadata + signature + footer


@dataclass(frozen=True)
class Footer:
    metadata_offset: int
    metadata_size: int
    signature_size: int

    @property
    def signature_offset(self) -> int:
        return self.metadata_offset + self.metadata_size


def parse_footer(raw: bytes, file_size: int) -> Footer:
    """The footer (the last FOOTER_SIZE bytes of a file of ``file_size`` bytes), checked for sense."""
    if len(raw) != FOOTER_SIZE or not raw.startswith(MAGIC):
        raise BundleError("not a liveng update bundle (no bundle footer at its end: truncated, or another file)")
    fields = raw[len(MAGIC):]
    try:
        start, meta, sig = (int(fields[i:i + 16].decode("ascii")) for i in range(0, 48, 16))
    except ValueError:
        raise BundleError("the bundle footer is damaged") from None
    if not (0 < meta <= METADATA_CAP and 0 < sig <= SIGNATURE_CAP and start > 0 and start % ALIGN == 0
            and start + meta + sig + FOOTER_SIZE == file_size):
        raise BundleError("the bundle footer does not fit the file (truncated or damaged bundle)")
    return Footer(start, meta, sig)


def check_system_fits(meta: Metadata, footer: Footer) -> None:
    """The signed size of the system agrees with where the footer puts the metadata."""
    if align_up(meta.system_size) != footer.metadata_offset:
        raise BundleError("the bundle's layout does not match its signed metadata (damaged or altered bundle)")


@dataclass(frozen=True)
class Index:
    version: str
    target: str
    arch: str
    bundle: str  # a file name in the channel's directory
    size: int
    sha256: str

    def to_json(self) -> bytes:
        data = {"format": FORMAT, "version": self.version, "target": self.target, "arch": self.arch,
                "bundle": self.bundle, "size": self.size, "sha256": self.sha256}
        return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


def parse_index(raw: bytes) -> Index:
    """A channel's index (call only once its signature is verified)."""
    try:
        data = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"the channel index is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"the channel index is not format {FORMAT}")
    name = data.get("bundle")
    size = data.get("size")
    digest = data.get("sha256")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+~-]*", name):
        raise BundleError(f"the channel index names the bundle {name!r}, not a plain file name")
    if not isinstance(size, int) or isinstance(size, bool) or size <= FOOTER_SIZE:
        raise BundleError("the channel index has no sensible bundle size")
    if not isinstance(digest, str) or not SHA256_RE.fullmatch(digest):
        raise BundleError("the channel index has no bundle sha256")
    return Index(version=check_version(str(_field(data, "version", str))), target=str(_field(data, "target", str)),
                 arch=str(_field(data, "arch", str)), bundle=name, size=size, sha256=digest)


@dataclass(frozen=True)
class UpdateConfig:
    """The recipe's [update] table as the image keeps it (UPDATE_CONFIG_PATH)."""

    channel: str = ""  # the channel's URL (a directory holding INDEX_NAME); empty: none
    keep: tuple[str, ...] = UPDATE_KEEP_DEFAULT  # absolute paths, or ("/",) for the whole delta

    def to_json(self) -> str:
        return json.dumps({"channel": self.channel, "keep": list(self.keep)}, indent=1) + "\n"


KEEP_PATH_RE = re.compile(r"^/$|^(/[A-Za-z0-9._@+-]+)+$")


def check_keep(paths: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    for path in paths:
        # The type first: the list may come from JSON, and anything but a string has no split().
        parts = path.split("/")[1:] if isinstance(path, str) else []
        if not isinstance(path, str) or not KEEP_PATH_RE.fullmatch(path) or any(p in (".", "..") for p in parts):
            raise BundleError(f"keep path {path!r} is not an absolute path made of letters, digits and . _ @ + -")
        if path != "/" and parts[0] in ("proc", "sys", "dev", "run", "tmp", "boot"):
            raise BundleError(f"keep path {path!r}: /{parts[0]} is not part of the delta")
    return tuple(paths)


def parse_config(raw: bytes) -> UpdateConfig:
    try:
        data = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{UPDATE_CONFIG_PATH} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{UPDATE_CONFIG_PATH} is not a JSON object")
    channel, keep = data.get("channel", ""), data.get("keep", list(UPDATE_KEEP_DEFAULT))
    if not isinstance(channel, str) or not isinstance(keep, list):
        raise BundleError(f"{UPDATE_CONFIG_PATH}: 'channel' must be a string and 'keep' a list")
    return UpdateConfig(channel=channel, keep=check_keep(keep))
