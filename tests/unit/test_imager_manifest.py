"""The Raspberry Pi Imager manifest liveng build writes beside the image, read as Imager reads it.

What is checked is what raspberrypi/rpi-imager documents and reads (doc/json-schema/os-list-schema.json,
src/oslistmodel.cpp, src/hwlistmodel.cpp): an ``os_list`` entry has the schema's required fields with their
types, ``init_format`` one Imager knows (it offers the OS customisation only with one), a file:// URL (the
only local form Imager takes), sizes and SHA-256 that match the files (Imager aborts a write whose
extracted SHA-256 differs), and device tags that ``imager.devices`` offers (Imager hides entries whose
tags no device has).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from liveng.host import imager
from liveng.host.errors import UsageError

# From Imager's schema: the required fields of an OS entry and their JSON types; its enums.
REQUIRED = {"name": str, "description": str, "icon": str, "url": str, "extract_size": int, "extract_sha256": str,
            "image_download_size": int, "release_date": str, "devices": list}
INIT_FORMATS = {"", "systemd", "cloudinit", "cloudinit-rpi", "rpi-preseed", "none"}
OS_CAPABILITIES = {"rpi_connect", "secure_boot", "passwordless_sudo", "i2c", "spi", "onewire", "serial", "usb_otg"}
DEVICE_REQUIRED = {"name": str, "description": str, "tags": list}
INFO = {"suite": "trixie", "target": "rpi", "arch": "arm64", "version": "2026.12.06", "built": "2026-12-06T05:00:00Z"}


def image_file(tmp: Path) -> Path:
    image = tmp / "liveng-rpi-trixie.img"
    with open(image, "wb") as f:
        f.write(os.urandom(1 << 20))
        f.truncate(16 << 20)  # sparse, as built images are
        f.seek(8 << 20)
        f.write(b"p7" * 1000)
    return image


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def local_path(url: str) -> Path:
    parts = urllib.parse.urlparse(url)
    assert parts.scheme == "file" and parts.netloc == "", url
    return Path(urllib.parse.unquote(parts.path))


def check_entry(doc: dict[str, Any]) -> dict[str, Any]:
    assert set(doc) <= {"imager", "os_list"} and isinstance(doc["os_list"], list) and len(doc["os_list"]) == 1
    entry: dict[str, Any] = doc["os_list"][0]
    for key, kind in REQUIRED.items():
        assert isinstance(entry.get(key), kind) and not isinstance(entry[key], bool), key
    assert entry["init_format"] in INIT_FORMATS - {"", "none"}  # with it Imager offers the customisation
    assert set(entry.get("capabilities", [])) <= OS_CAPABILITIES
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", entry["release_date"])
    for key in ("extract_sha256", "image_download_sha256"):
        assert key not in entry or re.fullmatch(r"[0-9a-f]{64}", entry[key]), key
    devices = doc["imager"]["devices"]
    for device in devices:
        for key, kind in DEVICE_REQUIRED.items():
            assert isinstance(device.get(key), kind), key
    offered = {tag for device in devices for tag in device["tags"]}
    assert entry["devices"] and set(entry["devices"]) <= offered
    return entry


def test_manifest_of_a_compressed_image(tmp_path: Path) -> None:
    image = image_file(tmp_path)
    packed = image.with_name(image.name + ".xz")
    packed.write_bytes(lzma.compress(image.read_bytes()))
    (image.with_name(image.name + ".bmap")).write_text("<bmap/>")
    path = imager.write(image, packed, INFO)
    assert path == tmp_path / "liveng-rpi-trixie.rpi-imager-manifest"
    entry = check_entry(json.loads(path.read_text()))
    assert local_path(entry["url"]) == packed  # Imager reads the compressed file and unpacks it
    assert entry["extract_size"] == 16 << 20 and entry["extract_sha256"] == sha256(image)
    assert entry["image_download_size"] == packed.stat().st_size and entry["image_download_sha256"] == sha256(packed)
    assert entry["init_format"] == "cloudinit" and entry["architecture"] == "armv8"
    assert set(entry["devices"]) == {"pi3-64bit", "pi4-64bit"} and "passwordless_sudo" in entry["capabilities"]
    assert local_path(entry["bmap_url"]) == image.with_name(image.name + ".bmap")
    assert "trixie" in entry["name"] and entry["release_date"] == "2026-12-06"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_manifest_of_a_plain_pc_image(tmp_path: Path) -> None:
    image = image_file(tmp_path)
    entry = check_entry(json.loads(imager.write(image, None, {**INFO, "target": "pc", "arch": "amd64"}).read_text()))
    assert local_path(entry["url"]) == image and entry["image_download_size"] == entry["extract_size"]
    assert "image_download_sha256" not in entry and "architecture" not in entry
    assert entry["devices"] == ["liveng-pc"]
    with pytest.raises(UsageError, match="target 'x' has no Raspberry Pi Imager devices"):
        imager.write(image, None, {**INFO, "target": "x"})
