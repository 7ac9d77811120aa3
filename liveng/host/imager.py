"""A Raspberry Pi Imager manifest beside each built image (IMAGE.rpi-imager-manifest).

Imager offers its OS customisation (user, SSH key, Wi-Fi, host name, locale) only for an image it knows
from a manifest entry with ``init_format``; an image picked with "Use custom" gets none. Opened in Imager
(double-click, or App Options > Content Repository > Use custom file), this manifest lists the image with
its sizes and SHA-256 (Imager refuses a write whose extracted SHA-256 differs) and ``init_format =
"cloudinit"``: Imager 1.8 and later then write user-data, network-config and meta-data onto p1, which the
device applies at boot (liveng/device/seedfiles.py). The fields are those of Imager's os-list schema
(doc/json-schema/os-list-schema.json in raspberrypi/rpi-imager) and what its OS list model reads.

Imager takes local files only as file:// URLs (it resolves no relative ones): the manifest names the
image where it was built; after moving both, write it again with ``liveng imager-manifest IMAGE``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from liveng import __version__, manifest
from liveng.durable import fsync_dir
from liveng.host.errors import UsageError

SUFFIX = ".rpi-imager-manifest"
# cloud-init's NoCloud files: every Imager from 1.8 writes them; rpi-preseed.toml (2.0.11 on) is read too.
INIT_FORMAT = "cloudinit"
# Imager's device tags (its own OS list's) for the boards a liveng rpi image boots; "liveng-pc" is ours.
DEVICES: dict[str, list[dict[str, Any]]] = {
    "rpi": [
        {"name": "Raspberry Pi 4", "description": "Pi 4 Model B, Pi 400, Compute Module 4", "tags": ["pi4-64bit"],
         "matching_type": "exclusive", "architecture": "armv8", "default": True},
        {"name": "Raspberry Pi 3 / Zero 2 W", "description": "Pi 3 Model B, B+, A+ and Pi Zero 2 W",
         "tags": ["pi3-64bit"], "matching_type": "exclusive", "architecture": "armv8"},
    ],
    "pc": [
        {"name": "PC (x86-64)", "description": "64-bit PCs and virtual machines, UEFI or BIOS (a USB stick or a disk)",
         "tags": ["liveng-pc"], "matching_type": "exclusive", "default": True},
    ],
}
ARCHITECTURE = {"arm64": "armv8"}


def manifest_path(image: Path) -> Path:
    return image.with_name(image.name.removesuffix(".img") + SUFFIX)


def entry(image: Path, packed: Path | None, info: dict[str, Any]) -> dict[str, Any]:
    """The os_list entry: ``packed`` is the compressed image (what Imager reads, when there is one)."""
    source = packed or image
    item: dict[str, Any] = {
        "name": f"liveng {info['suite']} {info['target']} {info['version']}",
        "description": f"Debian {info['suite']} ({info['arch']}) as a liveng system: read-only, with A/B kernels and "
                       f"settings from the boot partition (liveng {__version__})",
        "icon": "",
        "url": source.absolute().as_uri(),
        "extract_size": image.stat().st_size,
        "extract_sha256": manifest.sha256_file(image),
        "image_download_size": source.stat().st_size,
        "release_date": str(info["built"])[:10],
        "init_format": INIT_FORMAT,
        "devices": [tag for device in DEVICES[info["target"]] for tag in device["tags"]],
        # The customisation offers passwordless sudo: liveng's sudo_nopasswd.
        "capabilities": ["passwordless_sudo"],
    }
    if packed is not None:
        item["image_download_sha256"] = manifest.sha256_file(packed)
    if info["arch"] in ARCHITECTURE:
        item["architecture"] = ARCHITECTURE[info["arch"]]
    bmap = image.with_name(image.name + ".bmap")
    if bmap.is_file():
        item["bmap_url"] = bmap.absolute().as_uri()
    return item


def write(image: Path, packed: Path | None, info: dict[str, Any]) -> Path:
    """Write IMAGE.rpi-imager-manifest (whole or not at all); returns its path."""
    if info.get("target") not in DEVICES:
        raise UsageError(f"{image}: target {info.get('target')!r} has no Raspberry Pi Imager devices")
    doc = {"imager": {"devices": DEVICES[info["target"]]}, "os_list": [entry(image, packed, info)]}
    path = manifest_path(image)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path
