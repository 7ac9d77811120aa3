"""The per-target table: every target has what the rest of the host tool looks up by its name or
architecture, and a way to boot."""

from __future__ import annotations

import pytest

from liveng.host import imager, preflight, qemu, recipe, rootfs, trim
from liveng.host.targets import TARGETS, Target


@pytest.mark.parametrize("target", TARGETS.values(), ids=list(TARGETS))
def test_every_target_is_complete(target: Target) -> None:
    assert target.arch in qemu.MACHINES and target.arch in preflight.RUN_TOOLS
    assert target.arch in preflight.QEMU_BINFMT
    assert target.name in imager.DEVICES
    assert target.kernel_packages and target.boot_assets and "main" in target.components
    # Something the firmware starts: GRUB's BIOS image, the signed UEFI chain or the Pi's firmware.
    assert target.bios or target.signed_uefi or target.pi_firmware
    # A rootfs of the target carries its packages and boot assets, with its filters.
    r = recipe.with_overrides(recipe.load(None), target=target.name)
    assert r.platform is target and r.arch == target.arch
    assert set(target.packages) | set(target.kernel_packages) <= set(rootfs.packages(r))
    filters = trim.dpkg_filters(r)
    assert filters[len(filters) - len(target.dpkg_filters):] == target.dpkg_filters

