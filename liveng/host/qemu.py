"""liveng run: boot an image in QEMU with the console on the terminal.

The QEMU system follows the image's architecture: amd64 on q35 (OVMF UEFI or SeaBIOS), arm64 on
virt (AAVMF UEFI) or, the Raspberry Pi 3 way, on raspi3b (U-Boot from the image's p1 as the
firmware's kernel). TCG only on the machines liveng is developed on; a fresh copy of the firmware
variables per boot (a reused OVMF vars file once fell into the EFI shell).
"""

from __future__ import annotations

import logging
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from liveng import layout
from liveng.host import preflight
from liveng.host.bootloader import rpi
from liveng.host.errors import CommandError, ImageError, UsageError
from liveng.host.imagefile import ImageFile, open_image
from liveng.host.runner import interactive, run

log = logging.getLogger("liveng.run")

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Secure Boot: the firmware built with it (and SMM, which guards the variables), and variables with
# Microsoft's keys enrolled and Secure Boot on, as a PC leaves the factory (Debian's ovmf package).
OVMF_SECBOOT_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
OVMF_MS_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
AAVMF_CODE = Path("/usr/share/AAVMF/AAVMF_CODE.fd")
AAVMF_VARS = Path("/usr/share/AAVMF/AAVMF_VARS.fd")

# Machines per image architecture; the first is the default.
MACHINES = {"amd64": ("q35",), "arm64": ("virt", "raspi3b")}
# Under TCG a Cortex-A72 (the Pi 4's core) runs faster than "max", which emulates pointer authentication.
ARM64_CPU = "cortex-a72"
RASPI3B_DTB = "bcm2837-rpi-3-b.dtb"
RASPI3B_MEMORY = 1024  # the board has 1 GiB; QEMU accepts no other size


@dataclass(frozen=True)
class VmConfig:
    image: Path
    bios: bool = False
    snapshot: bool = False
    memory: int = 1024
    cpus: int = 1
    disks: tuple[Path, ...] = ()
    qmp: Path | None = None
    forwards: tuple[str, ...] = ()  # "HOSTPORT:GUESTPORT" for TCP
    machine: str | None = None  # None: the first of MACHINES[arch]
    secure_boot: bool = False  # q35 only: OVMF with Secure Boot enforced and Microsoft's keys
    # A state saved by Qmp.save_state of a VM with the same configuration: the VM resumes from it
    # instead of booting (the disks must be as they were when it was saved).
    incoming: Path | None = None


def machine_for(cfg: VmConfig, arch: str) -> str:
    machines = MACHINES.get(arch)
    if machines is None:
        raise UsageError(f"{cfg.image}: images for {arch} cannot be run")
    machine = cfg.machine or machines[0]
    if machine not in machines:
        raise UsageError(f"--machine {machine}: an {arch} image runs on {', '.join(machines)}")
    if cfg.bios and machine != "q35":
        raise UsageError("--bios: only PC images have a BIOS boot; arm64 boots through UEFI or U-Boot")
    if cfg.secure_boot and (cfg.bios or machine != "q35"):
        raise UsageError("--secure-boot: only PC images boot with Secure Boot, through UEFI (not with --bios)")
    if machine == "raspi3b" and cfg.disks:
        raise UsageError("--disk: the raspi3b machine has one SD card slot and no other disk")
    if cfg.incoming is not None and not cfg.incoming.is_file():
        raise UsageError(f"--incoming {cfg.incoming}: no such saved VM state")
    return machine


def _common_tail(cfg: VmConfig) -> list[str]:
    argv = []
    if cfg.snapshot:
        argv.append("-snapshot")
    if cfg.qmp:
        argv += ["-qmp", f"unix:{cfg.qmp},server=on,wait=off"]
    if cfg.incoming:
        argv += ["-incoming", f"exec:cat {shlex.quote(str(cfg.incoming))}"]
    return argv


def _virtio_disks(cfg: VmConfig) -> list[str]:
    argv = []
    for i, d in enumerate((cfg.image, *cfg.disks)):
        cache = "unsafe" if cfg.snapshot else "writeback"
        argv += ["-drive", f"file={d},format=raw,if=none,id=disk{i},cache={cache}",
                 "-device", f"virtio-blk-pci,drive=disk{i}" + (",bootindex=0" if i == 0 else "")]
    net = "user,id=net0"
    for fwd in cfg.forwards:
        host_port, _, guest_port = fwd.partition(":")
        net += f",hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}"
    return [*argv, "-netdev", net, "-device", "virtio-net-pci,netdev=net0", "-device", "virtio-rng-pci"]


# TCG's translation cache: 256 MiB instead of QEMU 7.2's 1 GiB. Translations of the same code at other
# addresses (every process of the initramfs gets its own under address space randomisation) pile up
# per physical page, and when such a page is reused QEMU discards them with a walk quadratic in their
# number: PID 1 stalled 50-60 s after the switch to the real root. A smaller cache is flushed whole
# before that happens: a trixie PC image boots to a shell in 120 s instead of 209 s (bench/RESULTS.md).
TCG = "tcg,tb-size=256"


def q35_argv(cfg: VmConfig, vars_copy: Path | None) -> list[str]:
    # Secure Boot: SMM on, and the firmware's flash writable only from SMM (edk2's OvmfPkg/README),
    # else the variables holding the keys could be rewritten by the OS.
    machine = "q35,smm=on" if cfg.secure_boot else "q35"
    argv = ["qemu-system-x86_64", "-machine", machine, "-accel", TCG, "-m", str(cfg.memory),
            "-smp", str(cfg.cpus), "-nodefaults", "-no-user-config"]
    if cfg.secure_boot:
        argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    if not cfg.bios:
        assert vars_copy is not None
        code = OVMF_SECBOOT_CODE if cfg.secure_boot else OVMF_CODE
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
    argv += [*_virtio_disks(cfg), "-vga", "std", "-display", "none", "-serial", "mon:stdio"]
    return argv + _common_tail(cfg)


def virt_argv(cfg: VmConfig, vars_copy: Path) -> list[str]:
    argv = ["qemu-system-aarch64", "-machine", "virt", "-accel", TCG, "-cpu", ARM64_CPU,
            "-m", str(cfg.memory), "-smp", str(cfg.cpus), "-nodefaults", "-no-user-config",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={AAVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
            *_virtio_disks(cfg), "-display", "none", "-serial", "mon:stdio"]
    return argv + _common_tail(cfg)


def raspi3b_argv(cfg: VmConfig, card: Path, uboot: Path, dtb: Path) -> list[str]:
    # The SoC's first UART (PL011) carries Bluetooth on a Pi 3; the console is the mini UART,
    # QEMU's second serial port. The firmware stage is QEMU's: it loads U-Boot like start.elf would.
    argv = ["qemu-system-aarch64", "-machine", "raspi3b", "-accel", f"{TCG},thread=single", "-m", str(RASPI3B_MEMORY),
            "-kernel", str(uboot), "-dtb", str(dtb),
            "-drive", f"file={card},format=raw,if=sd,cache={'unsafe' if cfg.snapshot else 'writeback'}",
            "-display", "none", "-serial", "null", "-serial", "mon:stdio"]
    return argv + _common_tail(cfg)


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def sd_card(image: Path, tmp: Path) -> Path:
    """The image as QEMU's SD card, whose size must be a power of two: the image itself if it is one."""
    size = image.stat().st_size
    if is_power_of_two(size):
        return image
    padded = 1 << (size - 1).bit_length()
    log.warning("%s is %d MiB, not a power of two as QEMU's SD card must be: booting a padded copy, so "
                "changes are NOT kept. To boot the image itself: truncate -s %dM %s", image, size // layout.MiB,
                padded // layout.MiB, image)
    card = tmp / "sdcard.img"
    run(["cp", "--sparse=always", image, card])
    with open(card, "r+b") as f:
        f.truncate(padded)
    return card


def boot_file(image: ImageFile, name: str, dest: Path) -> Path:
    """Copy one file out of the image's p1 (mtools reads the image in place)."""
    boot = image.table.entry(layout.partition(layout.Role.BOOT).number)
    out = dest / name
    try:
        run(["mcopy", "-n", "-i", f"{image.path}@@{boot.start}", f"::/{name}", out],
            env={"MTOOLS_SKIP_CHECK": "1"})
    except CommandError as exc:
        raise ImageError(f"{image.path}: no {name} on the boot partition, so it cannot boot as a Raspberry Pi "
                         f"({exc.stderr.strip()})") from None
    return out


def run_vm(cfg: VmConfig) -> int:
    image = open_image(cfg.image, damaged_ok=True)
    machine = machine_for(cfg, image.arch)
    for d in cfg.disks:
        if not d.exists():
            raise UsageError(f"{d}: no such disk image")
    pc_firmware = [OVMF_SECBOOT_CODE, OVMF_MS_VARS] if cfg.secure_boot else [OVMF_CODE, OVMF_VARS]
    firmware = {"q35": [] if cfg.bios else pc_firmware, "virt": [AAVMF_CODE, AAVMF_VARS], "raspi3b": []}[machine]
    preflight.check_run(image.arch, firmware)
    with tempfile.TemporaryDirectory(prefix="liveng-run-") as name:
        tmp = Path(name)
        if machine == "raspi3b":
            if cfg.snapshot:
                log.info("--snapshot: the SD card is written to a temporary overlay")
            argv = raspi3b_argv(cfg, sd_card(cfg.image, tmp), boot_file(image, rpi.UBOOT_NAME, tmp),
                                boot_file(image, RASPI3B_DTB, tmp))
        else:
            vars_copy = None
            if firmware:
                vars_copy = tmp / "VARS.fd"
                shutil.copyfile(firmware[1], vars_copy)
            argv = q35_argv(cfg, vars_copy) if machine == "q35" else virt_argv(cfg, vars_copy or Path())
        return interactive(argv)
