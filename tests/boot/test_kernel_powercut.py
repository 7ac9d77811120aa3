"""Power cuts during kernel updates: QEMU is killed at random moments of `liveng kernel install`
(slot write, read-back, boot-order switch); every time the VM must boot unattended to a shell
from the old slot or the new one, and `liveng kernel status` must be consistent.

LIVENG_POWERCUT_ROUNDS sets the number of cuts (default 20), LIVENG_POWERCUT_SEED the random seed.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from tests.boot import golden
from tests.boot.test_kernel_slots import settle, slot_kernel
from tests.vm import Vm

pytestmark = pytest.mark.boot

ROUNDS = int(os.environ.get("LIVENG_POWERCUT_ROUNDS", "20"))


def slot_written(status: dict[str, object], name: str) -> object:
    slots = status["slots"]
    assert isinstance(slots, dict)
    return slots[name].get("written")


def check_consistent(st: dict[str, object], kernels: set[str]) -> None:
    order = st["order"]
    assert isinstance(order, list) and order and order[-1] == "factory", st
    assert len(set(order)) == len(order) and set(order) <= {"slot-a", "slot-b", "factory"}, st
    head = order[0]
    if head != "factory":
        # Whatever the order points at first is a whole, readable slot.
        assert slot_kernel(st, head[-1]) in kernels, st
    assert st["running"] in order or st["running"] == "factory", st


def test_power_cuts_during_kernel_updates(bios_golden: golden.Golden, tmp_path: Path) -> None:
    """Each round rewrites the slot that is not running (the same kernel package each time: the slot
    written, the order switched and the boot that follows are what a cut can break, not the version)
    and cuts the power at a random moment of it; then boots with nobody at the console."""
    seed = int(os.environ.get("LIVENG_POWERCUT_SEED", str(time.time_ns())))
    rng = random.Random(seed)
    print(f"power-cut seed {seed}, {ROUNDS} rounds")
    disk = tmp_path / "disk.img"
    log = tmp_path / "console.log"
    vm = golden.resume(bios_golden, disk, log)
    settle(vm)
    kernel = vm.sh("uname -r")
    # How long one update takes, to spread the cuts over it; afterwards both slots hold a kernel.
    start = time.monotonic()
    assert "slot B" in vm.sh(f"liveng kernel install --force {kernel}")
    duration = time.monotonic() - start
    print(f"one slot update takes {duration:.1f} s seen from the host")
    kernels = {kernel}
    outcomes: list[str] = []
    for i in range(ROUNDS):
        st = settle(vm)
        check_consistent(st, kernels)
        assert vm.sh("uname -r") == kernel
        written_before = {name: slot_written(st, name) for name in ("a", "b")}
        delay = rng.uniform(0, duration * 1.2)
        vm.proc.sendline(f"liveng kernel install --force {kernel}")
        time.sleep(delay)
        vm.power_cut()
        print(f"round {i + 1}: running {st['running']} (slots written {written_before}), cut {delay:.2f} s "
              "into the update")
        vm = Vm(disk, log, bios=True)
        vm.wait_shell(timeout=900)
        outcomes.append(str(settle(vm)["running"]))
    st = settle(vm)
    check_consistent(st, kernels)
    assert vm.sh("uname -r") == kernel
    vm.poweroff()
    print("entries booted after each cut:", " ".join(outcomes))
