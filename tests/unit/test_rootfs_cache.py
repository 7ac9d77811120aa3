"""The rootfs cache key covers every input that shapes the rootfs, and nothing else."""

from __future__ import annotations

import dataclasses

from liveng.host import recipe, rootfs


def spec(**changes: object) -> rootfs.RootfsSpec:
    base = rootfs.spec_for(dataclasses.replace(recipe.load(None), target="pc"), "http://m.example/debian")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_same_inputs_same_key() -> None:
    assert spec().key("mmdebstrap 1.3.5") == spec().key("mmdebstrap 1.3.5")


def test_every_input_changes_the_key() -> None:
    base = spec().key("mmdebstrap 1.3.5")
    assert spec(suite="bookworm").key("mmdebstrap 1.3.5") != base
    assert spec(mirror="http://other.example/debian").key("mmdebstrap 1.3.5") != base
    assert spec(arch="arm64").key("mmdebstrap 1.3.5") != base
    assert spec(packages=(*spec().packages, "vim")).key("mmdebstrap 1.3.5") != base
    assert spec(components=("main", "contrib")).key("mmdebstrap 1.3.5") != base
    assert spec(overlay={"etc/x": b"y"}).key("mmdebstrap 1.3.5") != base
    assert spec().key("mmdebstrap 1.5.0") != base


def test_hostname_and_users_do_not_touch_the_rootfs() -> None:
    r = dataclasses.replace(recipe.load(None), target="pc", hostname="other", autologin=True)
    assert rootfs.spec_for(r, "http://m.example/debian").key("v") == spec().key("v")


def test_packages_include_what_liveng_needs() -> None:
    pkgs = spec().packages
    for needed in ("live-boot", "linux-image-amd64", "python3", "xorriso", "systemd-sysv"):
        assert needed in pkgs
    assert "live-config" not in pkgs  # it would bring the live user with its well-known password
