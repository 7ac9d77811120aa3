"""The rpi target's pieces that need no build: boot menu, config.txt, device trees, QEMU machines, preflight."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from liveng import bootargs, layout, manifest
from liveng.host import preflight, qemu, recipe, rootfs, targets
from liveng.host.bootloader import grub, rpi
from liveng.host.errors import UsageError
from liveng.host.mirrors import Mirrors

BOARDS = tuple((p, f"dtbs/{d}") for p, d in rpi.BOARD_DTBS)

MIRRORS = Mirrors("http://m.example/debian", "http://m.example/debian-security")


def test_arm64_menu_loads_the_boards_device_tree_from_each_entrys_partition() -> None:
    cfg = grub.grub_cfg("12ab34cd", "boot=live", 3, "", BOARDS)
    assert "smbios --type 1 --get-string 5 --set liveng_board" in cfg
    assert "regexp '^Raspberry Pi 3 Model B' \"$liveng_board\"; then set liveng_dtb=dtbs/broadcom/bcm2837-rpi-3-b.dtb" \
        in cfg
    # One devicetree line per entry (the factory reset's two and the one-boot mode entries too), after
    # that entry's root is set, so the slot's own DTB is used.
    assert cfg.count("if devicetree /$liveng_dtb; then set liveng_dtb_arg=liveng.devicetree=$liveng_dtb; fi") == \
        len(layout.ENTRIES) + 2 + len(layout.MODES)
    assert "liveng.reset=yes $liveng_dtb_arg" in cfg and "liveng.reset=no $liveng_dtb_arg" in cfg
    assert cfg.count("liveng.boot=slot-a $liveng_dtb_arg") == 1
    assert "serial --unit=0" not in cfg  # the firmware's console is the serial console on arm64
    assert 'set liveng_cmdline="boot=live"' in cfg


def test_pi3_b_plus_is_matched_before_pi3_b() -> None:
    names = [p for p, _ in rpi.BOARD_DTBS]
    assert names.index("^Raspberry Pi 3 Model B Plus") < names.index("^Raspberry Pi 3 Model B")


def test_pc_menu_has_no_device_tree_and_a_serial_terminal() -> None:
    cfg = grub.grub_cfg("12ab34cd", "boot=live", 3, "console=tty0 console=ttyS0,115200n8")
    assert "devicetree" not in cfg and "smbios" not in cfg
    assert "serial --unit=0 --speed=115200" in cfg
    assert 'set liveng_cmdline="boot=live console=tty0 console=ttyS0,115200n8"' in cfg


def test_config_txt_boots_uboot_in_64_bit_with_the_serial_console() -> None:
    text = rpi.config_txt()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    for wanted in ("arm_64bit=1", "kernel=u-boot.bin", "enable_uart=1", "upstream_kernel=1", "[pi3]", "[pi4]"):
        assert wanted in lines
    assert lines[-1] == "[all]"  # whatever a user appends applies to every model


def test_kernel_dtbs_are_the_raspberry_pi_ones(tmp_path: Path) -> None:
    base = tmp_path / "usr/lib/linux-image-6.12.1-arm64/broadcom"
    base.mkdir(parents=True)
    for name in ("bcm2837-rpi-3-b.dtb", "bcm2711-rpi-4-b.dtb", "bcm4908-asus-gt-ac5300.dtb", "bcm2711-rpi-4-b.txt"):
        (base / name).write_bytes(b"x")
    found = manifest.kernel_dtbs(tmp_path, "6.12.1-arm64")
    assert list(found) == ["dtbs/broadcom/bcm2711-rpi-4-b.dtb", "dtbs/broadcom/bcm2837-rpi-3-b.dtb"]
    assert manifest.kernel_dtbs(tmp_path, "6.99-amd64") == {}


def test_machines_follow_the_architecture() -> None:
    cfg = qemu.VmConfig(image=Path("x.img"))
    assert qemu.machine_for(cfg, "amd64") == "q35"
    assert qemu.machine_for(cfg, "arm64") == "virt"
    assert qemu.machine_for(dataclasses.replace(cfg, machine="raspi3b"), "arm64") == "raspi3b"
    with pytest.raises(UsageError, match="runs on q35"):
        qemu.machine_for(dataclasses.replace(cfg, machine="raspi3b"), "amd64")
    with pytest.raises(UsageError, match="--bios"):
        qemu.machine_for(dataclasses.replace(cfg, bios=True), "arm64")
    with pytest.raises(UsageError, match="SD card"):
        qemu.machine_for(dataclasses.replace(cfg, machine="raspi3b", disks=(Path("d"),)), "arm64")


def test_raspi3b_console_is_the_second_serial_port() -> None:
    argv = qemu.raspi3b_argv(qemu.VmConfig(image=Path("x.img")), Path("card"), Path("u-boot.bin"), Path("d.dtb"))
    serials = [argv[i + 1] for i, a in enumerate(argv) if a == "-serial"]
    assert serials == ["null", "mon:stdio"]
    assert argv[argv.index("-m") + 1] == "1024"
    assert "file=card,format=raw,if=sd,cache=writeback" in argv


def test_sd_card_sizes() -> None:
    assert qemu.is_power_of_two(4 << 30)
    assert not qemu.is_power_of_two(2062 << 20)
    assert not qemu.is_power_of_two(0)


def test_sd_card_pads_a_copy_and_leaves_the_image_alone(tmp_path: Path) -> None:
    image = tmp_path / "x.img"
    image.write_bytes(b"\1" * 3000)
    card = qemu.sd_card(image, tmp_path)
    assert card != image and card.stat().st_size == 4096 and image.stat().st_size == 3000
    assert card.read_bytes()[:3000] == image.read_bytes()
    image.write_bytes(b"\1" * 4096)
    assert qemu.sd_card(image, tmp_path) == image


def _binfmt(tmp_path: Path, text: str | None, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr(preflight, "BINFMT_DIR", tmp_path)
    if text is not None:
        (tmp_path / "qemu-aarch64").write_text(text)
    return preflight.binfmt_problems("arm64", "amd64")


def test_binfmt_preflight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert preflight.binfmt_problems("amd64", "amd64") == []
    missing = _binfmt(tmp_path, None, monkeypatch)
    assert len(missing) == 1 and "qemu-user-static" in missing[0]
    good = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\n"
    assert _binfmt(tmp_path, good, monkeypatch) == []
    disabled = _binfmt(tmp_path, good.replace("enabled", "disabled"), monkeypatch)
    assert disabled == ["binfmt entry qemu-aarch64 is disabled: run update-binfmts --enable qemu-aarch64"]
    no_f = _binfmt(tmp_path, good.replace("PF", "P"), monkeypatch)
    assert len(no_f) == 1 and "F flag" in no_f[0]


def test_rpi_rootfs_downloads_the_boot_packages_and_keys_them() -> None:
    r = dataclasses.replace(recipe.load(None), target="rpi")
    spec = rootfs.spec_for(r, MIRRORS)
    assert spec.arch == "arm64" and "linux-image-arm64" in spec.packages
    assert set(spec.assets) == {"raspi-firmware", "u-boot-rpi", "grub-efi-arm64-bin"}
    assert "raspi-firmware" not in spec.packages  # its kernel hooks would rewrite p1
    assert "non-free-firmware" in spec.components
    assert dataclasses.replace(spec, assets=()).key("v") != spec.key("v")


def test_a_tarball_without_the_boot_packages_is_refused(tmp_path: Path) -> None:
    from liveng.host.errors import BuildError

    tree = tmp_path / "tree"
    (tree / rootfs.ASSETS_DIR).mkdir(parents=True)
    with pytest.raises(BuildError, match="lacks the boot packages raspi-firmware, u-boot-rpi, grub-efi-arm64-bin"):
        rootfs.take_assets(tree, tmp_path / "assets", targets.RPI.boot_assets)
    assert rootfs.take_assets(tree, tmp_path / "assets", ()) == {}


def test_no_kernel_argument_looks_like_an_efi_stub_file_option() -> None:
    # The EFI stub scans the command line for "dtb=" and "initrd=" anywhere, even inside a word; a
    # match makes it load a file that is not there, and the boot fails after GRUB (seen on raspi3b).
    cfg = grub.grub_cfg("12ab34cd", bootargs.kernel_cmdline("12ab34cd"), 3, "", BOARDS)
    linux_lines = [line for line in cfg.splitlines() if line.strip().startswith("linux ")]
    assert linux_lines
    for line in linux_lines:
        assert "dtb=" not in line and "initrd=" not in line
    for arg in (layout.KERNEL_ARG_DTB, layout.KERNEL_ARG_BOOT, layout.KERNEL_ARG_ID):
        assert "dtb=" not in f"{arg}=" and "initrd=" not in f"{arg}="


def test_tree_digest_sees_content_modes_and_links_but_not_times(tmp_path: Path) -> None:
    import os

    from liveng.host import squashcache

    tree = tmp_path / "t"
    (tree / "etc").mkdir(parents=True)
    (tree / "proc").mkdir()
    (tree / "etc/hostname").write_text("liveng\n")
    (tree / "etc/link").symlink_to("hostname")
    base = squashcache.tree_digest(tree)
    os.utime(tree / "etc/hostname", (1, 1))
    (tree / "proc/ignored").write_text("x")  # mksquashfs leaves proc/* out too
    assert squashcache.tree_digest(tree) == base
    (tree / "etc/hostname").write_text("other\n")
    assert squashcache.tree_digest(tree) != base
    (tree / "etc/hostname").write_text("liveng\n")
    (tree / "etc/hostname").chmod(0o600)
    assert squashcache.tree_digest(tree) != base
    (tree / "etc/hostname").chmod(0o644)
    (tree / "etc/link").unlink()
    (tree / "etc/link").symlink_to("elsewhere")
    assert squashcache.tree_digest(tree) != base


def test_a_saved_state_resumes_instead_of_booting(tmp_path: Path) -> None:
    state = tmp_path / "vm state"
    cfg = qemu.VmConfig(image=Path("x.img"), incoming=state)
    with pytest.raises(UsageError, match="no such saved VM state"):
        qemu.machine_for(cfg, "amd64")
    state.write_bytes(b"QEVM")
    assert qemu.machine_for(cfg, "amd64") == "q35"
    argv = qemu.q35_argv(cfg, tmp_path / "VARS.fd")
    assert argv[argv.index("-incoming") + 1] == f"exec:cat '{state}'"  # quoted: the path has a space
