"""Booted VMs saved once and resumed by the tests whose subject is not that first boot.

A cold boot of a test image costs minutes under TCG; resuming a saved VM state costs seconds. A
"golden" is one real boot of a fresh copy of an image (firmware, GRUB, live-boot, systemd, the
first-boot services, liveng-boot-ok), stopped at the shell and saved with QEMU's migration
stream; its disk is kept as it was at that moment. A test resumes a sparse copy of that disk with
that state and goes on from the running system: every reboot, power cut and boot after that is
real. The tests that check a first boot itself (firmware, settings from p1, resize, encryption)
still boot cold.

pytest-xdist's workers share the directory the goldens are made in; a file lock makes each one
once per run, whichever worker needs it first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from liveng.host.qmp import Qmp
from tests.vm import PROMPT, Vm, VmError

SETTLE = ("systemctl is-system-running --wait >/dev/null; "
          "until systemctl is-active -q liveng-boot-ok; do sleep 1; done; sync")


@dataclass(frozen=True)
class Golden:
    disk: Path  # the disk as it was when the state was saved
    state: Path  # QEMU's migration stream of the running VM
    bios: bool
    memory: int
    blank_disks: tuple[int, ...]  # sizes of the blank disks attached as vdb, vdc, ...
    boot_seconds: float  # power-on to shell of the boot that made it
    machine: str | None = None  # liveng run --machine (arm64: virt)


def shared_dir(factory: pytest.TempPathFactory) -> Path:
    """A directory every xdist worker of this run sees (the parent of the workers' base temps)."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def copy(src: Path, dest: Path) -> Path:
    subprocess.run(["cp", "--sparse=always", src, dest], check=True)
    return dest


def blank(path: Path, size: int) -> Path:
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def make(image: Path, where: Path, name: str, *, bios: bool = False, memory: int = 1024,
         blank_disks: tuple[int, ...] = (), machine: str | None = None) -> Golden:
    """Boot a fresh copy of ``image`` once and save it at the shell (or reuse what another worker saved)."""
    disk, state, facts = where / f"{name}.img", where / f"{name}.state", where / f"{name}.seconds"
    with locked(state):
        if not state.exists():
            copy(image, disk)
            disks = tuple(blank(where / f"{name}-blank{i}.img", size) for i, size in enumerate(blank_disks))
            sock = where / f"{name}.qmp"
            sock.unlink(missing_ok=True)
            with Vm(disk, where / f"{name}.console.log", bios=bios, memory=memory, disks=disks, qmp=sock,
                    machine=machine) as vm:
                seconds = vm.wait_shell()
                vm.sh(SETTLE, timeout=900)
                qmp = Qmp(sock)
                try:
                    qmp.save_state(state)
                finally:
                    qmp.close()
            facts.write_text(f"{seconds:.1f}\n")
    return Golden(disk, state, bios, memory, blank_disks, float(facts.read_text()), machine)


def resume(golden: Golden, dest: Path, log: Path, disks: tuple[Path, ...] = (),
           forwards: tuple[str, ...] = ()) -> Vm:
    """A running VM from ``golden``, on ``dest`` (a copy of its disk). ``disks``: the blank disks'
    stand-ins (fresh blank ones when not given), attached as when it was saved."""
    copy(golden.disk, dest)
    if not disks:
        disks = tuple(blank(dest.with_name(f"{dest.stem}-blank{i}.img"), size)
                      for i, size in enumerate(golden.blank_disks))
    assert len(disks) == len(golden.blank_disks), "a resumed VM has the disks it was saved with"
    sock = dest.with_name(f"{dest.stem}.qmp")
    sock.unlink(missing_ok=True)
    vm = Vm(dest, log, bios=golden.bios, memory=golden.memory, disks=disks, qmp=sock, incoming=golden.state,
            forwards=forwards, machine=golden.machine)
    qmp = Qmp(sock)
    try:
        deadline = time.monotonic() + 300
        while qmp.execute("query-status")["status"] == "inmigrate":
            if time.monotonic() > deadline:
                raise VmError(f"the saved state {golden.state} did not load; console log: {log}")
            time.sleep(0.1)
        qmp.execute("cont")  # saved stopped, so it loads stopped
    finally:
        qmp.close()
    vm.proc.sendline("")
    vm.proc.expect_exact(PROMPT, timeout=120)
    # The guest's clock stood still while the state was on disk.
    vm.sh(f"date -s @{int(time.time())} >/dev/null")
    return vm
