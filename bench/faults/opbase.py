"""What every operation of the campaign is made of: its context in a round (Ctx), the Op it
subclasses, the user-file directories every round has, and the kernel check several operations share."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.vm import Vm

from . import guest
from .world import World

A_DIR = "/home/faults/a"  # fsynced before the operation: must be intact afterwards
B_DIR = "/home/faults/b"  # the set an operation decides the fate of (commit, restore): all or nothing
K_DIR = "/srv/keep/faults-k"  # ram-paths: on the card, fsynced
WRITER_DIR = {"base": "/home/faults/w", "ram-paths": "/srv/keep/faults-w"}  # none in ram mode: all in RAM
SET_SIZE = 20


@dataclass
class Ctx:
    vm: Vm
    rng: random.Random
    world: World
    kind: str
    disk_full: bool = False  # p7 filled before the operation: it may fail (cleanly); what it must keep, it keeps
    notes: dict[str, Any] = field(default_factory=dict)  # recorded with the round
    torn_data: bool = False  # the last write the guest gave was torn (a log appended in place: garbled there)
    sets: dict[str, dict[str, str]] = field(default_factory=dict)  # directory: {name: sha256}

    def write_set(self, directory: str) -> None:
        self.sets[directory] = guest.write_set(self.vm, directory, SET_SIZE, self.rng.randrange(2**32))


class Op:
    name = ""
    kinds: tuple[str, ...] = ("base",)  # the goldens it runs on (the first: when it is the round's operation)
    arches: tuple[str, ...] = ("pc", "arm64")
    regions: tuple[str, ...] = ("last",)  # where a torn sector may be (inject.py)
    window = 30.0  # seconds the fault moment is spread over, until a round measures the operation
    reboots = False  # the command ends in a reboot: the window covers the boot
    discards_delta = False  # A_DIR may be wholly gone afterwards
    writer = True  # the background writer runs during it
    pairs = True  # may run alongside another operation (fault "two-ops")

    def prepare(self, ctx: Ctx) -> None:
        pass

    def reboots_in(self, ctx: Ctx) -> bool:
        """Whether this round's command ends in a reboot (the fault window then covers the boot):
        always (``reboots``), or in the rounds whose prepare() drew notes["then_boot"]."""
        return self.reboots or bool(ctx.notes.get("then_boot"))

    def command(self, ctx: Ctx) -> str:
        raise NotImplementedError

    def check(self, ctx: Ctx, vm: Vm) -> list[str]:
        return []

    def check_host(self, ctx: Ctx, disk: Path) -> list[str]:
        return []


def kernel_problems(vm: Vm) -> list[str]:
    out = vm.sh("liveng kernel status --json")
    st = json.loads(out[out.index("{"):])
    order, running = st["order"], st["running"]
    problems = []
    if not order or order[-1] != "factory" or len(set(order)) != len(order):
        problems.append(f"kernel boot order {order}")
    if running not in order:
        problems.append(f"running {running}, not in the boot order {order}")
    if st.get("good") != running:
        problems.append(f"this boot ({running}) was not marked good ({st.get('good')})")
    return problems
