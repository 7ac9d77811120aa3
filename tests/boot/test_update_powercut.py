"""Power cuts during system updates: QEMU is killed at a random moment of `liveng update apply`
(download, checks, the system written and read back, the delta staged, the slot written, the boot
order switched), or of the first boot of the new system (the initramfs's delta swap). Every time the
VM must boot unattended into v1 or v2, never neither, with the owner's data whole and `liveng
verify` content; a v2 is then rolled back to v1 for the next round.

LIVENG_UPDATE_POWERCUT_ROUNDS sets the number of cuts (default 20; even rounds cut the apply, odd
ones the first boot after it), LIVENG_POWERCUT_SEED the random seed.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from liveng import layout
from tests.boot import golden
from tests.boot.conftest import PACKAGE, partition_hash
from tests.boot.test_update import CONTENT, DATA, HOST, ustatus
from tests.httpserve import serve
from tests.vm import Vm

pytestmark = [pytest.mark.boot]

ROUNDS = int(os.environ.get("LIVENG_UPDATE_POWERCUT_ROUNDS", "20"))
APPLY_SECONDS = 30.0  # an apply in the VM, seen from the host (about 20 s measured), until a round measures it
BOOT_SECONDS = 60.0  # power-on to the initramfs's work being done, about


def settled(vm: Vm) -> dict[str, object]:
    vm.sh("systemctl start liveng-boot-ok.service || true")
    return ustatus(vm)


def back_to_v1(vm: Vm) -> Vm:
    """A round that ended on v2: the other slot (v1) boots next, as a person would roll back."""
    vm.sh("liveng kernel rollback")
    vm.reboot()
    st = settled(vm)
    assert st["running"] == layout.SYSTEM_FACTORY, st
    return vm


def test_power_cuts_during_system_updates(bios_golden: golden.Golden, v2_channel: Path, tmp_path: Path) -> None:
    seed = int(os.environ.get("LIVENG_POWERCUT_SEED", str(time.time_ns())))
    rng = random.Random(seed)
    print(f"update power-cut seed {seed}, {ROUNDS} rounds")
    disk, log = tmp_path / "disk.img", tmp_path / "console.log"
    apply_seconds = APPLY_SECONDS
    outcomes: list[str] = []
    with serve(v2_channel) as channel:
        url = f"http://{HOST}:{channel.port}/"
        vm = golden.resume(bios_golden, disk, log)
        try:
            system_before = partition_hash(disk, layout.Role.SYSTEM)
            vm.sh("mkdir -p /home/tester && head -c 300000 /dev/urandom > /home/tester/data.bin && sync")
            data, content = vm.sh(DATA), vm.sh(CONTENT)
            for i in range(ROUNDS):
                during_boot = i % 2 == 1
                if during_boot:
                    start = time.monotonic()
                    vm.sh(f"liveng update apply {url}", timeout=2400)
                    apply_seconds = time.monotonic() - start
                    delay = rng.uniform(0, BOOT_SECONDS)
                    vm.proc.sendline("systemctl reboot")
                else:
                    delay = rng.uniform(0, apply_seconds * 1.2)
                    vm.proc.sendline(f"liveng update apply {url}")
                time.sleep(delay)
                vm.power_cut()
                what = "the first boot of v2" if during_boot else "the apply"
                vm = Vm(disk, log, bios=True)
                vm.wait_shell(timeout=900)
                st = settled(vm)
                running = str(st["running"])
                print(f"round {i + 1}: cut {delay:.1f} s into {what}; booted {running}")
                outcomes.append("v1" if running == layout.SYSTEM_FACTORY else "v2")
                assert running == layout.SYSTEM_FACTORY or running.startswith("2_"), st
                if running == layout.SYSTEM_FACTORY:  # its own delta: exactly as it was
                    assert vm.sh(DATA) == data, f"round {i + 1}: the owner's data changed"
                else:  # a copy of the kept paths: the same files
                    assert vm.sh(CONTENT) == content, f"round {i + 1}: the owner's files changed"
                assert "verify OK" in vm.sh("liveng verify", timeout=900), f"round {i + 1}"
                kst = json.loads(vm.sh("liveng kernel status --json"))
                assert kst["good"] == kst["running"], kst
                if running != layout.SYSTEM_FACTORY:
                    assert vm.sh(f"dpkg-query -W -f '${{Status}}' {PACKAGE}") == "install ok installed"
                    vm = back_to_v1(vm)
                    assert vm.sh(DATA) == data
            vm.poweroff()
        finally:
            vm.close()
    assert partition_hash(disk, layout.Role.SYSTEM) == system_before
    print("systems booted after each cut:", " ".join(outcomes))
