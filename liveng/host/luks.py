"""Encrypted persistence: p7 as LUKS2 with the ext4 already inside, made without device-mapper.

Builds mount nothing and open no dm devices (they run in containers), so the ext4 cannot be written
through an opened LUKS mapping. Instead the ext4 image is made as usual (mkfs.ext4 -d), 16 MiB
short of p7, and `cryptsetup reencrypt --encrypt --reduce-device-size` encrypts it in place: offline
LUKS2 encryption runs in user space (the kernel crypto API, no dm) on a plain file and puts the
header in front. The device boots with a finished filesystem; nothing is formatted at first boot.

Every device flashed from one image shares its LUKS volume key (as any copy of one LUKS disk
does); `cryptsetup reencrypt` on the device gives it its own (README).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from liveng import layout
from liveng.host.recipe import Persistence, passphrase
from liveng.host.runner import run

# Room for the LUKS2 header in front of the data (reencrypt moves the data behind it).
HEADER_ROOM_MIB = 16
# The build also appends the key file to the initramfs it ships.
KEY_FILE_PATH = layout.KEY_FILE_PATH
KERNEL_ARG = "persistence-encryption=luks"
# argon2id with fixed costs: no benchmark at build time (the build host is not the device), and
# an unlock costs the same everywhere: memory from the recipe, 4 passes.
_KDF_ITERATIONS = 4


def luks_label(image_id: str) -> str:
    # Not the ext4 label inside: two devices with one label would make /dev/disk/by-label ambiguous.
    return f"{layout.persistence_label(image_id)}-luks"


def _kdf(p: Persistence) -> list[str]:
    return ["--pbkdf", "argon2id", "--pbkdf-memory", str(p.kdf_memory * 1024),
            "--pbkdf-force-iterations", str(_KDF_ITERATIONS), "--pbkdf-parallel", "4"]


def _write_secret(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


def encrypt(part: Path, size_mib: int, p: Persistence, image_id: str, workdir: Path) -> None:
    """Turn ``part``, an ext4 image of ``size_mib - HEADER_ROOM_MIB`` MiB, into LUKS2 of ``size_mib`` MiB."""
    with open(part, "r+b") as f:
        f.truncate(size_mib * layout.MiB)
    keys = []
    if p.passphrase_file is not None:
        keys.append(_write_secret(workdir / "luks-passphrase", passphrase(p.passphrase_file.read_bytes())))
    if p.key_file is not None:
        keys.append(p.key_file)
    try:
        run(["cryptsetup", "reencrypt", "--encrypt", "--type", "luks2", "--batch-mode",
             "--reduce-device-size", f"{HEADER_ROOM_MIB}M", "--label", luks_label(image_id),
             "--key-file", keys[0], *_kdf(p), part])
        for extra in keys[1:]:
            run(["cryptsetup", "luksAddKey", "--batch-mode", "--key-file", keys[0], *_kdf(p), part, extra])
    finally:
        (workdir / "luks-passphrase").unlink(missing_ok=True)


def _cpio_entry(name: str, mode: int, data: bytes = b"") -> bytes:
    fields = (0, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
    header = b"070701" + b"".join(b"%08X" % v for v in fields) + name.encode() + b"\0"
    pad = b"\0" * (-len(header) % 4)
    return header + pad + data + b"\0" * (-len(data) % 4)


def key_cpio(key: bytes) -> bytes:
    """An uncompressed newc archive holding the key file (what the initramfs hook would add)."""
    parts = []
    path = ""
    dirs = KEY_FILE_PATH.split("/")[:-1]
    for i, component in enumerate(dirs):
        path = f"{path}/{component}" if path else component
        # The kernel sets the mode of a directory that exists already: /etc keeps its usual one.
        parts.append(_cpio_entry(path, 0o040700 if i == len(dirs) - 1 else 0o040755))
    parts.append(_cpio_entry(KEY_FILE_PATH, 0o100400, key))
    parts.append(_cpio_entry("TRAILER!!!", 0))
    return b"".join(parts)


def append_key(initrd: Path, key: bytes) -> None:
    """Append the key to an initramfs: the kernel unpacks concatenated archives, each 4-byte aligned."""
    with open(initrd, "ab") as f:
        size = f.tell()
        f.write(b"\0" * (-size % 512))
        f.write(key_cpio(key))
    os.chmod(initrd, 0o600)


def cpio_names(data: bytes) -> list[tuple[str, int, bytes]]:
    """(name, mode, content) of the newc archive at the start of ``data`` (for tests)."""
    out: list[tuple[str, int, bytes]] = []
    pos = 0
    while True:
        fields = struct.unpack("8s" * 13, data[pos + 6:pos + 110])
        values = [int(v, 16) for v in fields]
        namesize, filesize, mode = values[11], values[6], values[1]
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        content = data[pos:pos + filesize]
        pos += filesize + (-filesize % 4)
        if name == "TRAILER!!!":
            return out
        out.append((name, mode, content))
