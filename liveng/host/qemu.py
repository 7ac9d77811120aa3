"""liveng run: boot an image in QEMU with the console on the terminal.

TCG only on the machines liveng is developed on; a fresh copy of the firmware variables per boot
(a reused OVMF vars file once fell into the EFI shell).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from liveng.host import preflight
from liveng.host.errors import UsageError
from liveng.host.imagefile import open_image
from liveng.host.runner import interactive

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


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


def qemu_argv(cfg: VmConfig, arch: str, vars_copy: Path | None) -> list[str]:
    if arch != "amd64":
        raise UsageError(f"{cfg.image}: images for {arch} cannot be run yet")
    argv = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-m", str(cfg.memory),
            "-smp", str(cfg.cpus), "-nodefaults", "-no-user-config"]
    if not cfg.bios:
        assert vars_copy is not None
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
    for i, d in enumerate((cfg.image, *cfg.disks)):
        argv += ["-drive", f"file={d},format=raw,if=none,id=disk{i},cache=unsafe" if cfg.snapshot
                 else f"file={d},format=raw,if=none,id=disk{i},cache=writeback",
                 "-device", f"virtio-blk-pci,drive=disk{i}" + (",bootindex=0" if i == 0 else "")]
    net = "user,id=net0"
    for fwd in cfg.forwards:
        host_port, _, guest_port = fwd.partition(":")
        net += f",hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}"
    argv += ["-netdev", net, "-device", "virtio-net-pci,netdev=net0", "-device", "virtio-rng-pci",
             "-vga", "std", "-display", "none", "-serial", "mon:stdio"]
    if cfg.snapshot:
        argv.append("-snapshot")
    if cfg.qmp:
        argv += ["-qmp", f"unix:{cfg.qmp},server=on,wait=off"]
    return argv


def run_vm(cfg: VmConfig) -> int:
    image = open_image(cfg.image)
    for d in cfg.disks:
        if not d.exists():
            raise UsageError(f"{d}: no such disk image")
    preflight.check_run([] if cfg.bios else [OVMF_CODE, OVMF_VARS])
    with tempfile.TemporaryDirectory(prefix="liveng-run-") as tmp:
        vars_copy = None
        if not cfg.bios:
            vars_copy = Path(tmp) / "OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, vars_copy)
        return interactive(qemu_argv(cfg, image.arch, vars_copy))
