"""The update bundle format (liveng/bundle.py): trailer and footer, metadata, channel index, [update]
config; every refusal of the parse_* functions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from liveng import bundle, layout

SHA = "ab" * 32


def metadata(**changes: Any) -> bundle.Metadata:
    base: dict[str, Any] = dict(version="1.2", target="rpi", arch="arm64", layout=2, built="2026-01-01T00:00:00Z",
                                kernel="6.12.0-1-arm64", system_size=5000, system_sha256=SHA,
                                files={layout.KERNEL_PATH: "01" * 32, layout.INITRD_PATH: "02" * 32,
                                       layout.SQUASHFS_PATH: "03" * 32, layout.IMAGE_INFO_PATH: "04" * 32})
    base.update(changes)
    return bundle.Metadata(**base)


def test_trailer_and_footer_round_trip() -> None:
    meta = metadata().to_json()
    sig = b"\x88signature"
    system = b"S" * 5000
    data = system + bundle.trailer(len(system), meta, sig)
    footer = bundle.parse_footer(data[-bundle.FOOTER_SIZE:], len(data))
    assert footer.metadata_offset == 8192  # the system padded to the next 4096
    assert data[5000:8192] == bytes(3192)
    assert data[footer.metadata_offset:footer.signature_offset] == meta
    assert data[footer.signature_offset:footer.signature_offset + footer.signature_size] == sig
    assert data[-bundle.FOOTER_SIZE:].startswith(bundle.MAGIC)
    parsed = bundle.parse_metadata(meta)
    assert parsed == metadata()
    bundle.check_system_fits(parsed, footer)
    assert parsed.system_name == f"1.2_{SHA[:12]}"


def test_a_system_of_whole_blocks_gets_no_padding() -> None:
    meta = metadata(system_size=8192).to_json()
    tail = bundle.trailer(8192, meta, b"sig")
    assert tail.startswith(meta)
    assert bundle.parse_footer(tail[-bundle.FOOTER_SIZE:], 8192 + len(tail)).metadata_offset == 8192


def footer(start: int = 8192, meta: int = 500, sig: int = 100) -> bytes:
    return bundle.MAGIC + b"%016d%016d%016d" % (start, meta, sig)


def size(start: int = 8192, meta: int = 500, sig: int = 100) -> int:
    return start + meta + sig + bundle.FOOTER_SIZE


@pytest.mark.parametrize(("raw", "file_size", "message"), [
    (footer()[1:], size(), "not a liveng update bundle"),
    (b"X" + footer()[1:], size(), "not a liveng update bundle"),
    (bundle.MAGIC + b"x" * 48, size(), "the bundle footer is damaged"),
    (bundle.MAGIC + "é".encode() * 24, size(), "the bundle footer is damaged"),
    (footer(), size() + 1, "does not fit the file"),
    (footer(), size() - 1, "does not fit the file"),
    (footer(meta=0), size(meta=0), "does not fit"),
    (footer(sig=0), size(sig=0), "does not fit"),
    (footer(meta=bundle.METADATA_CAP + 1), size(meta=bundle.METADATA_CAP + 1), "does not fit"),
    (footer(sig=bundle.SIGNATURE_CAP + 1), size(sig=bundle.SIGNATURE_CAP + 1), "does not fit"),
    (footer(start=0), size(start=0), "does not fit"),
    (footer(start=8000), size(start=8000), "does not fit"),
])
def test_parse_footer_refuses(raw: bytes, file_size: int, message: str) -> None:
    with pytest.raises(bundle.BundleError, match=message):
        bundle.parse_footer(raw, file_size)


def test_the_signed_size_must_match_the_footer() -> None:
    with pytest.raises(bundle.BundleError, match="does not match its signed metadata"):
        bundle.check_system_fits(metadata(system_size=8193), bundle.Footer(8192, 500, 100))
    bundle.check_system_fits(metadata(system_size=8192), bundle.Footer(8192, 500, 100))


def meta_json(**changes: Any) -> bytes:
    data = json.loads(metadata().to_json())
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize(("raw", "message"), [
    (b"{not json", "the metadata is not JSON"),
    (b"\xff\xfe", "the metadata is not JSON"),
    (b"[1, 2]", "the metadata is not a JSON object"),
    (meta_json(format=2), "bundle format 2: this liveng reads format 1"),
    (meta_json(format=None), "bundle format None"),
    (meta_json(system=None), "the metadata's 'system' is missing or not a dict"),
    (meta_json(system={"size": 0, "sha256": SHA}), "system size or sha256 is missing or malformed"),
    (meta_json(system={"size": True, "sha256": SHA}), "system size or sha256"),
    (meta_json(system={"size": "5000", "sha256": SHA}), "system size or sha256"),
    (meta_json(system={"size": 5000, "sha256": SHA.upper()}), "system size or sha256"),
    (meta_json(system={"size": 5000}), "system size or sha256"),
    (meta_json(files=None), "the metadata's 'files' is missing"),
    (meta_json(files=["live/vmlinuz"]), "the metadata's 'files' is missing or not a dict"),
    (meta_json(files={layout.KERNEL_PATH: "00"}), "file entry 'live/vmlinuz' is malformed"),
    (meta_json(files={layout.KERNEL_PATH: 5}), "file entry 'live/vmlinuz' is malformed"),
    (meta_json(files={"live/../etc/passwd": SHA}), "file entry 'live/../etc/passwd' is malformed"),
    (meta_json(files={"live/a b": SHA}), "file entry 'live/a b' is malformed"),
    (meta_json(files={layout.KERNEL_PATH: SHA, layout.INITRD_PATH: SHA}), "lists no live/filesystem.squashfs"),
    (meta_json(files={layout.INITRD_PATH: SHA, layout.SQUASHFS_PATH: SHA}), "lists no live/vmlinuz"),
    (meta_json(files={layout.KERNEL_PATH: SHA, layout.SQUASHFS_PATH: SHA}), "lists no live/initrd.img"),
    (meta_json(layout=None), "the metadata's 'layout' is missing or not a int"),
    (meta_json(layout="2"), "'layout' is missing or not a int"),
    (meta_json(layout=True), "'layout' is missing or not a int"),
    (meta_json(version=None), "'version' is missing or not a str"),
    (meta_json(version="latest"), "version 'latest' is not a Debian-style version"),
    (meta_json(target=None), "'target' is missing or not a str"),
    (meta_json(arch=7), "'arch' is missing or not a str"),
    (meta_json(built=None), "'built' is missing"),
    (meta_json(kernel=None), "'kernel' is missing"),
])
def test_parse_metadata_refuses(raw: bytes, message: str) -> None:
    with pytest.raises(bundle.BundleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bundle.parse_metadata(raw)


@pytest.mark.parametrize("version", ["1", "1.0", "0.20260101.120000", "2.1+site1", "1.0~rc1", "3-2", "9" * 64])
def test_good_versions(version: str) -> None:
    assert bundle.check_version(version) == version


@pytest.mark.parametrize("version", ["", "v1", "1:2", "1.0 beta", "1/2", "9" * 65, ".1", "1_0"])
def test_bad_versions(version: str) -> None:
    with pytest.raises(bundle.BundleError, match="is not a Debian-style version"):
        bundle.check_version(version)


def test_system_name_needs_a_version_and_a_hash() -> None:
    assert bundle.system_name("1.0", SHA) == "1.0_abababababab"
    with pytest.raises(bundle.BundleError, match="cannot name a system"):
        bundle.system_name("1.0", "XYZ" * 10)


def index(**changes: Any) -> bundle.Index:
    base: dict[str, Any] = dict(version="1.2", target="pc", arch="amd64", bundle="kiosk-1.2.bundle", size=10_000,
                                sha256=SHA)
    base.update(changes)
    return bundle.Index(**base)


def test_index_round_trip() -> None:
    assert bundle.parse_index(index().to_json()) == index()


def index_json(**changes: Any) -> bytes:
    data = json.loads(index().to_json())
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize(("raw", "message"), [
    (b"<html>", "the channel index is not JSON"),
    (b"\xff", "the channel index is not JSON"),
    (b'"index"', "the channel index is not format 1"),
    (index_json(format=2), "the channel index is not format 1"),
    (index_json(bundle="../etc/passwd"), "names the bundle '../etc/passwd', not a plain file name"),
    (index_json(bundle="sub/x.bundle"), "not a plain file name"),
    (index_json(bundle=".hidden.bundle"), "not a plain file name"),
    (index_json(bundle=None), "names the bundle None"),
    (index_json(size=bundle.FOOTER_SIZE), "no sensible bundle size"),
    (index_json(size=True), "no sensible bundle size"),
    (index_json(size="10000"), "no sensible bundle size"),
    (index_json(sha256="00"), "has no bundle sha256"),
    (index_json(sha256=None), "has no bundle sha256"),
    (index_json(version="new"), "version 'new' is not a Debian-style version"),
    (index_json(version=None), "'version' is missing"),
    (index_json(target=None), "'target' is missing"),
    (index_json(arch=None), "'arch' is missing"),
])
def test_parse_index_refuses(raw: bytes, message: str) -> None:
    with pytest.raises(bundle.BundleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bundle.parse_index(raw)


def test_config_round_trip_and_default() -> None:
    config = bundle.UpdateConfig(channel="https://u.example/c", keep=("/home", "/var/lib/app"))
    assert bundle.parse_config(config.to_json().encode()) == config
    assert bundle.parse_config(b"{}") == bundle.UpdateConfig()
    assert bundle.parse_config(bundle.UpdateConfig(keep=("/",)).to_json().encode()).keep == ("/",)


@pytest.mark.parametrize(("raw", "message"), [
    (b"{", "is not JSON"),
    (b"[]", "is not a JSON object"),
    (b'{"channel": 5}', "'channel' must be a string and 'keep' a list"),
    (b'{"keep": "/home"}', "'channel' must be a string and 'keep' a list"),
    (b'{"keep": [1]}', "keep path 1 is not an absolute path"),
    (b'{"keep": ["home"]}', "keep path 'home' is not an absolute path"),
    (b'{"keep": ["/run/x"]}', "/run is not part of the delta"),
])
def test_parse_config_refuses(raw: bytes, message: str) -> None:
    with pytest.raises(bundle.BundleError, match=message):
        bundle.parse_config(raw)


@pytest.mark.parametrize("path", ["", "home", "/home/", "//home", "/home/./x", "/home/../etc", "/a b", "/tmp",
                                  "/proc/1", "/sys", "/dev/sda", "/boot", "/x\n"])
def test_check_keep_refuses(path: str) -> None:
    with pytest.raises(bundle.BundleError, match="keep path"):
        bundle.check_keep([path])


def test_check_keep_takes_the_delta_and_paths() -> None:
    assert bundle.check_keep(["/"]) == ("/",)
    assert bundle.check_keep(list(bundle.UPDATE_KEEP_DEFAULT)) == bundle.UPDATE_KEEP_DEFAULT
    assert bundle.check_keep(("/var/lib/my-app", "/etc/ssh/ssh_host_ed25519_key")) == (
        "/var/lib/my-app", "/etc/ssh/ssh_host_ed25519_key")
