"""Secure Boot: the signed GRUB's built-in commands against the menu, the device's signature check,
the QEMU firmware choice (no image, no VM)."""

from __future__ import annotations

import contextlib
import dataclasses
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from liveng import layout
from liveng.device import kernel, secureboot, verify
from liveng.device.runner import DeviceError
from liveng.host import qemu
from liveng.host.bootloader import grub, rpi, signed
from liveng.host.errors import UsageError
from tests.efi_fixture import TRIXIE_SIGNED_MODULES, grub_efi

ID = "12ab34cd"


def pc_menu() -> str:
    return grub.grub_cfg(ID, "boot=live", 3, "console=ttyS0,115200")


def test_module_area_of_a_grub_image_is_read() -> None:
    modules, prefix = signed.image_contents(grub_efi(["normal", "linux", "search_fs_uuid"], "/EFI/debian"))
    assert modules == {"normal", "linux", "search_fs_uuid"} and prefix == "/EFI/debian"
    with pytest.raises(ValueError, match="not a PE image"):
        signed.image_contents(b"\x7fELF" + bytes(100))
    broken = bytearray(grub_efi(["normal"]))
    at = broken.index(b"mimg")
    broken[at:at + 4] = b"xxxx"
    with pytest.raises(ValueError, match="module info"):
        signed.image_contents(bytes(broken))


def test_script_commands_are_the_first_words_after_the_syntax() -> None:
    script = ("if [ \"$a\" = 1 ]; then set a=2; elif regexp --set=1:x '^([^ ]+) ?(.*)$' \"$y\"; then echo 'a; b'\n"
              "else load_env --file $f a; fi\nmenuentry 'x; y' --id x {\n    linux /k $z\n}\n# read comment\n")
    assert signed.script_commands(script) == {"[", "set", "regexp", "echo", "load_env", "menuentry", "linux"}


def test_every_command_of_the_menu_is_built_into_debians_signed_grub() -> None:
    commands = signed.command_modules()
    menu, stub = pc_menu(), signed.stub_config(ID)
    used = signed.script_commands(menu) | signed.script_commands(stub)
    # What the menu does: boot counting in grubenv, the fallback list, the confirmation submenu.
    assert {"load_env", "save_env", "regexp", "submenu", "menuentry", "linux", "initrd", "search", "configfile",
            "serial", "terminal_input"} <= used
    assert "read" not in used  # Debian's signed GRUB has no read
    assert signed.missing_commands([menu, stub], set(TRIXIE_SIGNED_MODULES), commands) == []
    # The check finds a command whose module is not built in, and a word that is no command.
    assert signed.missing_commands([menu + "read x\nfrobnicate\n"], set(TRIXIE_SIGNED_MODULES), commands) == [
        "frobnicate (not a GRUB command)", "read (module read is not built in)"]


def test_the_same_menu_runs_in_the_grub_images_liveng_makes() -> None:
    """BIOS core.img and the arm64 GRUB are made with grub.MODULES: the menu needs nothing else."""
    commands = signed.command_modules()
    assert signed.missing_commands([pc_menu(), grub.early_config(ID)], set(grub.MODULES["i386-pc"]), commands) == []
    arm = grub.grub_cfg(ID, "boot=live", 3, "console=ttyAMA0", rpi.BOARD_DTBS)
    # devicetree is in arm64-efi's command.lst only (module fdt), which an amd64 host lacks.
    assert signed.missing_commands([arm], set(grub.MODULES["arm64-efi"]), {**commands, "devicetree": "fdt"}) == []


def test_factory_reset_is_a_choice_without_a_timeout() -> None:
    menu = pc_menu()
    sub = menu[menu.index("submenu "):]
    sub = sub[:sub.index("\n}\n") + 3]
    no, yes = sub.split(f"--id {layout.ENTRY_FACTORY_RESET}-yes")
    assert "liveng.reset=no" in no and "save_env" not in no
    assert "set liveng_order=2" in yes and "save_env --file $liveng_env liveng_order liveng_tries" in yes
    assert "liveng.reset=yes" in yes and "timeout" not in sub


def test_populate_writes_shim_grub_and_the_stubs_or_refuses(tmp_path: Path) -> None:
    assets = {}
    for package, rel, _name in (signed.SHIM, signed.MOK_MANAGER, signed.GRUB):
        assets[package] = tmp_path / package
        (assets[package] / rel).parent.mkdir(parents=True, exist_ok=True)
        (assets[package] / rel).write_bytes(grub_efi(TRIXIE_SIGNED_MODULES) if package == signed.GRUB[0] else b"MZ")
    staging = tmp_path / "p1"
    signed.populate(staging, assets, ID, pc_menu())
    boot = staging / layout.EFI_BOOT_DIR
    assert sorted(p.name for p in boot.iterdir()) == ["BOOTX64.EFI", "grub.cfg", "grubx64.efi", "mmx64.efi"]
    assert not (boot / "fbx64.efi").exists()  # fallback would write NVRAM boot entries
    assert (boot / "grub.cfg").read_text() == (staging / "EFI/debian/grub.cfg").read_text() == signed.stub_config(ID)
    assert "--fs-uuid --set=root 12AB-34CD" in signed.stub_config(ID)
    lacking = [m for m in TRIXIE_SIGNED_MODULES if m != "loadenv"]
    (assets[signed.GRUB[0]] / signed.GRUB[1]).write_bytes(grub_efi(lacking))
    with pytest.raises(Exception, match=r"load_env \(module loadenv is not built in\)"):
        signed.populate(tmp_path / "p1-again", assets, ID, pc_menu())


def signature_list(kind: uuid.UUID, entries: list[bytes]) -> bytes:
    size = 16 + max(len(e) for e in entries)
    body = b"".join(uuid.uuid4().bytes_le + e.ljust(size - 16, b"\0") for e in entries)
    return kind.bytes_le + struct.pack("<III", 28 + len(body), 0, size) + body


def test_certificates_are_read_from_db_and_the_mok_list(tmp_path: Path) -> None:
    efivars, mok = tmp_path / "efivars", tmp_path / "mok"
    efivars.mkdir()
    mok.mkdir()
    sha256 = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")
    db = signature_list(sha256, [bytes(32)]) + signature_list(secureboot.CERT_X509, [b"cert-ms-1"])
    (efivars / f"db-{secureboot.SECURITY_DB_GUID}").write_bytes(b"\x07\0\0\0" + db)
    (mok / "MokListRT").write_bytes(signature_list(secureboot.CERT_X509, [b"cert-debian"]))
    assert secureboot.trusted_certificates(efivars, mok) == [b"cert-ms-1", b"cert-debian"]
    # Without mok-variables in sysfs: the split EFI variables.
    (efivars / f"MokListRT-{secureboot.SHIM_LOCK_GUID}").write_bytes(
        b"\x06\0\0\0" + signature_list(secureboot.CERT_X509, [b"cert-a"]))
    (efivars / f"MokListRT1-{secureboot.SHIM_LOCK_GUID}").write_bytes(
        b"\x06\0\0\0" + signature_list(secureboot.CERT_X509, [b"cert-b"]))
    assert secureboot.trusted_certificates(efivars, tmp_path / "none") == [b"cert-ms-1", b"cert-a", b"cert-b"]
    assert secureboot.x509_certificates(b"\xff" * 40) == []  # garbage ends the walk


def test_secure_boot_state_from_the_efi_variable(tmp_path: Path) -> None:
    assert not secureboot.enabled(tmp_path)  # BIOS boot: no variable
    var = tmp_path / f"SecureBoot-{secureboot.GLOBAL_GUID}"
    var.write_bytes(b"\x06\0\0\0\x01")
    assert secureboot.enabled(tmp_path)
    var.write_bytes(b"\x06\0\0\0\x00")
    assert not secureboot.enabled(tmp_path)


def test_pem_wraps_der_in_64_columns() -> None:
    text = secureboot.pem(bytes(100))
    lines = text.splitlines()
    assert lines[0] == "-----BEGIN CERTIFICATE-----" and lines[-1] == "-----END CERTIFICATE-----"
    assert all(len(line) <= 64 for line in lines[1:-1]) and len(lines) == 5


def test_qemu_secure_boot_firmware_smm_and_secure_flash() -> None:
    cfg = qemu.VmConfig(image=Path("x.img"), secure_boot=True)
    argv = qemu.q35_argv(cfg, Path("/tmp/VARS.fd"))
    assert argv[argv.index("-machine") + 1] == "q35,smm=on"
    assert "driver=cfi.pflash01,property=secure,value=on" in argv
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={qemu.OVMF_SECBOOT_CODE}" in argv
    plain = qemu.q35_argv(dataclasses.replace(cfg, secure_boot=False), Path("/tmp/VARS.fd"))
    assert "q35" in plain and not any("smm" in a or "secure" in a for a in plain)
    assert qemu.OVMF_MS_VARS.name == "OVMF_VARS_4M.ms.fd"
    with pytest.raises(UsageError, match="--secure-boot"):
        qemu.machine_for(dataclasses.replace(cfg, bios=True), "amd64")
    with pytest.raises(UsageError, match="--secure-boot"):
        qemu.machine_for(cfg, "arm64")


def test_sbverify_is_asked_once_per_certificate_until_one_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def sbverify(argv: list[str]) -> str:
        asked.append(Path(argv[2]).read_text())
        if "ZGViaWFu" not in asked[-1]:  # base64 of "debian"
            raise DeviceError("sbverify failed (1): Signature verification failed")
        return "Signature verification OK\n"

    monkeypatch.setattr(secureboot, "run", sbverify)
    assert secureboot.signed_by(Path("/boot/vmlinuz"), [b"microsoft", b"debian", b"other"])
    assert len(asked) == 2
    asked.clear()
    assert not secureboot.signed_by(Path("/boot/vmlinuz"), [b"microsoft", b"other"]) and len(asked) == 2


def test_a_slot_that_shim_refuses_is_not_bootable_under_secure_boot(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    @contextlib.contextmanager
    def mounted(role: layout.Role, fstype: str) -> Iterator[Path]:
        yield tmp_path

    checked: list[Path] = []

    def refusal(kern: Path) -> str:
        checked.append(kern)
        return secureboot.NOT_TRUSTED

    monkeypatch.setattr(verify, "intact", lambda name: True)
    monkeypatch.setattr(kernel, "mounted", mounted)
    monkeypatch.setattr(secureboot, "refusal", refusal)
    monkeypatch.setattr(secureboot, "enabled", lambda: False)
    assert kernel.bootable("a") and checked == []  # Secure Boot off: intact is enough
    monkeypatch.setattr(secureboot, "enabled", lambda: True)
    assert not kernel.bootable("a") and checked == [tmp_path / layout.KERNEL_PATH]
    monkeypatch.setattr(secureboot, "refusal", lambda k: None)
    assert kernel.bootable("a")
    # The good boot of slot B after GRUB skipped the refused slot A drops A from the order.
    assert kernel.confirmed_order(("slot-a", "slot-b", "factory"), "slot-b", lambda e: e != "slot-a") == (
        "slot-b", "factory")
