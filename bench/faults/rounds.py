"""One round: resume a golden, prepare, start the operation (and the background writer), inject
the fault at a moment drawn from the round's seed, boot with nobody at the console, check."""

from __future__ import annotations

import random
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect

from tests.boot import golden
from tests.vm import Vm, VmError

from . import checks, guest, inject
from .opbase import A_DIR, K_DIR, WRITER_DIR, Ctx, Op
from .ops import OPS
from .world import World

FAULTS = ("cut", "torn", "full", "inodes", "two-ops")
BOOT_BOUND = 900.0  # seconds from power-on to a shell with nobody at the console (a cold boot: 100-130 s)
WRITER_PAUSE = 0.05
_DONE = re.compile(r"@@OPDONE(\d+)@@")


@dataclass(frozen=True)
class Spec:
    seed: int
    op: str
    fault: str
    partner: str | None = None  # "two-ops": the operation started alongside


def partners(op: Op, arch: str) -> list[str]:
    kind = op.kinds[0]
    return [o.name for o in OPS.values() if o is not op and o.pairs and not o.reboots and kind in o.kinds
            and arch in o.arches]


def applies(op: Op, fault: str, arch: str) -> bool:
    if arch not in op.arches:
        return False
    if fault == "two-ops":
        return op.pairs and not op.reboots and bool(partners(op, arch))
    return True


def applicable(op: str, fault: str, arch: str) -> bool:
    """rounds.applies by name, for the record (record.Applies)."""
    return applies(OPS[op], fault, arch)


def window(op: Op, durations: dict[str, float], g: golden.Golden, ctx: Ctx) -> float:
    seconds = durations.get(op.name, op.window)
    return seconds + (g.boot_seconds if op.reboots_in(ctx) else 0.0)


def _prepare_common(ctx: Ctx) -> None:
    vm = ctx.vm
    vm.sh(f"mkdir -p {A_DIR.rsplit('/', 1)[0]}")
    ctx.write_set(A_DIR)
    if ctx.kind == "ram":
        # In a RAM mode only a commit keeps files: A is committed before the operation.
        vm.sh("liveng commit", timeout=900)
    elif ctx.kind == "ram-paths":
        # A persistent path is on the card at once. A is left to the operation's commit of paths (a
        # second commit of paths is refused while one is staged, by design).
        ctx.write_set(K_DIR)


def _check_common(ctx: Ctx, vm: Vm, op: Op, ops: list[Op]) -> list[str]:
    problems = []
    if ctx.kind != "ram-paths":  # there A is the operation's (ops.CommitPaths)
        discard = any(o.discards_delta for o in ops)
        problems += guest.check_set(vm, A_DIR, ctx.sets[A_DIR], "set A (fsynced before)", may_vanish=discard)
    if K_DIR in ctx.sets:
        problems += guest.check_set(vm, K_DIR, ctx.sets[K_DIR], "set K (persistent path)")
    wdir = WRITER_DIR.get(ctx.kind)
    if wdir and all(o.writer for o in ops):
        found, report = guest.check_writer(vm, wdir, "background writer", ctx.torn_data)
        problems += found
        ctx.notes["writer"] = {k: report.get(k) for k in ("logged", "whole", "absent", "garbled_bytes")}
    return problems


def run(world: World, spec: Spec, durations: dict[str, float], workdir: Path, logdir: Path) -> dict[str, Any]:
    """Run one round; return its record (outcome "recovered", "failed" or "error": the harness's own)."""
    rng = random.Random(spec.seed)
    op = OPS[spec.op]
    ops = [op] + ([OPS[spec.partner]] if spec.partner else [])
    kind = op.kinds[0]
    g = world.goldens[kind]
    disk = workdir / "round.img"
    log = logdir / f"{world.arch}-{spec.seed}.log"
    log.unlink(missing_ok=True)
    record: dict[str, Any] = {"seed": spec.seed, "op": spec.op, "fault": spec.fault, "partner": spec.partner,
                              "arch": world.arch, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    start = time.monotonic()
    phases: dict[str, float] = {}  # seconds each part of the round took: where a round's time goes
    record["phases"] = phases

    last = start

    def lap(name: str) -> None:
        nonlocal last
        now = time.monotonic()
        phases[name] = round(now - last, 1)
        last = now

    vm = golden.resume(g, disk, log)
    lap("resume")
    ctx = Ctx(vm, rng, world, kind, disk_full=spec.fault in ("full", "inodes"))
    record["notes"] = ctx.notes
    try:
        guest.upload(vm)
        _prepare_common(ctx)
        for o in ops:
            o.prepare(ctx)
        if spec.fault in ("full", "inodes"):
            ctx.notes["fill"] = guest.fill_p7(vm, "blocks" if spec.fault == "full" else "inodes")
        lap("prepare")
        trace = workdir / "writes.trace"
        if spec.fault == "torn":  # the guest's writes from here on: the last of them is the one that tears
            assert vm.qmp_path is not None
            inject.trace_writes(vm.qmp_path, trace)
        span = max(window(o, durations, g, ctx) for o in ops)
        fraction = rng.random()
        delay = fraction * span * 1.2
        record.update(window=round(span, 1), delay=round(delay, 2))
        line = " & ".join(f"( {o.command(ctx)} )" for o in ops) + (" & wait" if len(ops) > 1 else "")
        wdir = WRITER_DIR.get(kind)
        if wdir and all(o.writer for o in ops):
            line = f"{guest.writer_line(wdir, WRITER_PAUSE)}; {line}"
        vm.proc.sendline(f"{line}; echo @@OPDO''NE$?@@")
        started = time.monotonic()
        try:
            vm.proc.expect(_DONE, timeout=delay)
            finished = time.monotonic() - started
            record["op_seconds"] = round(finished, 1)
            record["op_rc"] = int(vm.proc.match.group(1))  # type: ignore[union-attr]
            time.sleep(max(0.0, delay - finished))
        except pexpect.TIMEOUT:
            pass
        vm.power_cut()
        lap("operation")
    except Exception as exc:  # a harness failure is recorded; the campaign goes on
        vm.close()
        record.update(outcome="error", problems=[f"before the fault: {exc!r}"[:600]],
                      trace=traceback.format_exc()[-1500:], seconds=round(time.monotonic() - start))
        return record
    if spec.fault == "torn":
        regions = tuple(sorted({r for o in ops for r in o.regions}))
        try:
            record["torn"] = inject.tear(disk, g.disk, rng, regions, trace)
            ctx.torn_data = record["torn"].get("region") == "last" and bool(record["torn"].get("changed"))
        except Exception as exc:
            record.update(outcome="error", problems=[f"tearing a sector: {exc!r}"[:600]],
                          trace=traceback.format_exc()[-1500:], seconds=round(time.monotonic() - start))
            return record
    problems: list[str] = []
    powered_off = False
    vm = Vm(disk, log, bios=g.bios, memory=g.memory, machine=g.machine)
    try:
        record["boot_seconds"] = round(vm.wait_shell(timeout=BOOT_BOUND))
        lap("boot")
        guest.upload(vm)
        ctx.vm = vm
        problems += checks.in_guest(vm, ctx.notes, ctx.disk_full)
        problems += _check_common(ctx, vm, op, ops)
        for o in ops:
            problems += o.check(ctx, vm)
        lap("checks")
        vm.poweroff()
        powered_off = True
        lap("poweroff")
    except VmError as exc:
        problems.append(f"{exc}"[:400])
        record["console"] = exc.console[-1500:]  # in the state file; the RESULTS line stays short
        vm.close()
    except Exception as exc:
        problems.append(f"check failed: {exc!r}"[:600])
        record["trace"] = traceback.format_exc()[-1500:]
        vm.close()
    try:
        problems += checks.on_host(disk, g.disk, world.system_hash[kind], powered_off)
    except Exception as exc:
        problems.append(f"host checks: {exc!r}")
    for o in ops:
        try:
            problems += o.check_host(ctx, disk)
        except Exception as exc:
            problems.append(f"{o.name} host check: {exc!r}")
    lap("host")
    record.update(outcome="failed" if problems else "recovered", problems=problems,
                  seconds=round(time.monotonic() - start))
    return record
