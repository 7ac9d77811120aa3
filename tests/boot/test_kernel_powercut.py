"""Power cuts during kernel updates: QEMU is killed at random moments of `liveng kernel install`
(slot write, read-back, boot-order switch); every time the VM must boot unattended to a shell
with the old or the new kernel, and `liveng kernel status` must be consistent.

LIVENG_POWERCUT_ROUNDS sets the number of cuts (default 20), LIVENG_POWERCUT_SEED the random seed.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from tests.boot.test_kernel_slots import settle, slot_kernel
from tests.vm import Vm

# CI runs two workers: the power-cut test on one, the other boot tests together on the other.
pytestmark = [pytest.mark.boot, pytest.mark.xdist_group("powercut")]

ROUNDS = int(os.environ.get("LIVENG_POWERCUT_ROUNDS", "20"))


def check_consistent(st: dict[str, object], kernels: set[str]) -> None:
    order = st["order"]
    assert isinstance(order, list) and order and order[-1] == "factory", st
    assert len(set(order)) == len(order) and set(order) <= {"slot-a", "slot-b", "factory"}, st
    head = order[0]
    if head != "factory":
        # Whatever the order points at first is a whole, readable slot.
        assert slot_kernel(st, head[-1]) in kernels, st
    assert st["running"] in order or st["running"] == "factory", st


def test_power_cuts_during_kernel_updates(fresh_copy: Path, tmp_path: Path) -> None:
    seed = int(os.environ.get("LIVENG_POWERCUT_SEED", str(time.time_ns())))
    rng = random.Random(seed)
    print(f"power-cut seed {seed}, {ROUNDS} rounds")
    log = tmp_path / "console.log"
    with Vm(fresh_copy, log, bios=True) as vm:
        vm.wait_shell()
        settle(vm)
        factory = vm.sh("uname -r")
        vm.sh("apt-get update -q", timeout=1200)
        vm.sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-image-cloud-amd64", timeout=2400)
        cloud = str(slot_kernel(json.loads(vm.sh("liveng kernel status --json")), "b"))
        # How long one update takes, to spread the cuts over it.
        start = time.monotonic()
        vm.sh(f"liveng kernel install --force {factory}")
        duration = time.monotonic() - start
        vm.poweroff()
    print(f"one slot update takes {duration:.1f} s seen from the host")
    kernels = {factory, cloud}
    outcomes: list[str] = []
    for i in range(ROUNDS):
        vm = Vm(fresh_copy, log, bios=True)
        vm.wait_shell(timeout=900)
        st = settle(vm)
        check_consistent(st, kernels)
        running = vm.sh("uname -r")
        assert running in kernels
        outcomes.append(f"{st['running']}:{running}")
        new = cloud if running == factory else factory
        delay = rng.uniform(0, duration * 1.2)
        vm.proc.sendline(f"liveng kernel install --force {new}")
        time.sleep(delay)
        vm.power_cut()
        print(f"round {i + 1}: running {running} on {st['running']}, cut {delay:.2f} s into the update")
    with Vm(fresh_copy, log, bios=True) as vm:
        vm.wait_shell(timeout=900)
        st = settle(vm)
        check_consistent(st, kernels)
        assert vm.sh("uname -r") in kernels
        vm.poweroff()
    print("boots after the cuts:", " ".join(outcomes))
