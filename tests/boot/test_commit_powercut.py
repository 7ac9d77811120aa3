"""Power cuts during `liveng commit` in ram mode: QEMU is killed at random moments of a commit;
every time the next boot must come up unattended (in ram mode, with the committed delta copied
into RAM) and show the delta wholly as it was before the commit or wholly as committed: files,
an xattr, a deleted system file (a whiteout) and a larger file all of the same generation.

LIVENG_COMMIT_POWERCUT_ROUNDS sets the number of cuts (default 10), LIVENG_POWERCUT_SEED the seed.
One boot per round.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from tests.boot import golden
from tests.boot.conftest import RAM_MEMORY as MEMORY
from tests.vm import Vm

pytestmark = pytest.mark.boot

ROUNDS = int(os.environ.get("LIVENG_COMMIT_POWERCUT_ROUNDS", "10"))
DELETED = "/etc/issue.net"  # a system file: deleted in odd generations (a whiteout), back in even ones
FILES = ("/root/gen/a", "/root/gen/b", "/etc/liveng-gen")

_WRITE = """set -e
mkdir -p /root/gen
for f in {files}; do echo {gen} > "$f"; done
python3 -c "import os; os.setxattr('/root/gen/a', 'user.liveng.gen', b'{gen}')"
head -c 8M /dev/urandom > /root/gen/blob
sha256sum < /root/gen/blob > /root/gen/blob.sum
if [ $(({gen} % 2)) = 1 ]; then rm -f {deleted}; else cp /root/issue.net.orig {deleted}; fi
sync"""

_READ = """for f in {files}; do cat "$f" 2>/dev/null || echo 0; done
python3 -c "import os; print(os.getxattr('/root/gen/a', 'user.liveng.gen').decode())" 2>/dev/null || echo 0
test -e {deleted} && echo present || echo deleted
if [ -e /root/gen/blob ]; then sha256sum < /root/gen/blob | cmp -s - /root/gen/blob.sum && echo blob-ok || echo blob-bad
else echo blob-none; fi"""


def generation(vm: Vm) -> int:
    """The generation the delta holds, checking that every part of it agrees."""
    lines = vm.sh(_READ.format(files=" ".join(FILES), deleted=DELETED)).splitlines()
    gens = {int(x) for x in lines[: len(FILES) + 1]}
    assert len(gens) == 1, f"a mixed delta: {lines}"
    gen = gens.pop()
    assert lines[-2] == ("deleted" if gen % 2 else "present"), lines
    assert lines[-1] == ("blob-none" if gen == 0 else "blob-ok"), lines
    return gen


def boot(vm: Vm) -> None:
    vm.wait_shell(timeout=900)
    check_ram_boot(vm)


def check_ram_boot(vm: Vm) -> None:
    assert "liveng.mode=ram" in vm.sh("cat /proc/cmdline")
    st = json.loads(vm.sh("liveng status --json"))
    # The boot switched a complete commit in or dropped a half-made one: nothing is left pending.
    assert st["pending"] is None and not st["switch_in_progress"], st
    assert vm.sh("test -e /run/live/liveng-persistence && echo mounted || echo no") == "no"


def test_power_cuts_during_commit(ram_golden: golden.Golden, tmp_path: Path) -> None:
    seed = int(os.environ.get("LIVENG_POWERCUT_SEED", str(time.time_ns())))
    rng = random.Random(seed)
    print(f"commit power-cut seed {seed}, {ROUNDS} rounds")
    log = tmp_path / "console.log"
    write = _WRITE.format(files=" ".join(FILES), deleted=DELETED, gen="{gen}")
    ram_copy = tmp_path / "ram-disk.img"
    with golden.resume(ram_golden, ram_copy, log) as vm:
        check_ram_boot(vm)
        assert generation(vm) == 0
        vm.sh(f"cp {DELETED} /root/issue.net.orig")
        vm.sh(write.format(gen=1))
        start = time.monotonic()
        vm.sh("liveng commit", timeout=600)
        duration = time.monotonic() - start
        vm.power_cut()  # right after a finished commit: the next boot must have it
    print(f"one commit takes {duration:.1f} s seen from the host")
    committed, attempted = 1, 1
    delay = 0.0
    outcomes: list[str] = []
    for i in range(ROUNDS):
        with Vm(ram_copy, log, memory=MEMORY) as vm:
            started = time.monotonic()
            boot(vm)
            gen = generation(vm)
            assert gen in (committed, attempted), (i, gen, committed, attempted)
            if i:
                outcomes.append(f"{delay:.1f}s:{'new' if gen == attempted else 'old'}")
            print(f"round {i}: boot {time.monotonic() - started:.0f} s, generation {gen}")
            committed = attempted = gen
            attempted = gen + 1
            vm.sh(write.format(gen=attempted))
            delay = rng.uniform(0, duration * 1.1)
            vm.proc.sendline("liveng commit")
            time.sleep(delay)
            vm.power_cut()
    with Vm(ram_copy, log, memory=MEMORY) as vm:
        boot(vm)
        gen = generation(vm)
        assert gen in (committed, attempted)
        outcomes.append(f"{delay:.1f}s:{'new' if gen == attempted else 'old'}")
        vm.poweroff()
    print("cuts (delay after the command: outcome):", " ".join(outcomes))
