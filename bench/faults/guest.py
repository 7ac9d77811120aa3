"""The guest side of a round: the helper uploaded into a VM, user files written and checked."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from tests.vm import Vm

from .guest_helper import db_problems, garbled_problem

HELPER = "/run/liveng-faults.py"  # in RAM: nothing of the campaign's own lands in the delta
_SOURCE = Path(__file__).with_name("guest_helper.py")


def upload(vm: Vm) -> None:
    """Copy the helper in through the console, base64 in short lines (the tty's line limit)."""
    encoded = base64.b64encode(_SOURCE.read_bytes()).decode()
    lines = [encoded[i:i + 76] for i in range(0, len(encoded), 76)]
    vm.sh(f"base64 -d > {HELPER} <<'EOF'\n" + "\n".join(lines) + "\nEOF\ntrue")  # the terminator alone on its line


def helper(vm: Vm, *args: str, timeout: float = 300) -> Any:
    out = vm.sh(f"python3 {HELPER} {' '.join(args)}", timeout=timeout)
    return json.loads(out.splitlines()[-1])


def write_set(vm: Vm, directory: str, count: int, seed: int) -> dict[str, str]:
    result: dict[str, str] = helper(vm, "write-set", directory, str(count), str(seed))
    return result


def hashes(vm: Vm, directory: str) -> dict[str, str]:
    result: dict[str, str] = helper(vm, "hashes", directory)
    return result


def writer_line(directory: str, pause: float) -> str:
    """A shell fragment starting the background writer (it dies with the power)."""
    return f"(python3 {HELPER} writer {directory} {pause} >/dev/null 2>&1 &)"


def check_set(vm: Vm, directory: str, expected: dict[str, str], what: str, *, may_vanish: bool = False) -> list[str]:
    """Problems with a set of files fsynced before the fault: each must be there with its content
    (``may_vanish``: or the whole set gone, as a reset or restore that happened leaves it)."""
    found = hashes(vm, directory)
    if may_vanish and not found:
        return []
    missing = sorted(set(expected) - set(found))
    changed = sorted(n for n in expected if n in found and found[n] != expected[n])
    extra = sorted(set(found) - set(expected))
    problems = []
    if missing:
        problems.append(f"{what}: {len(missing)} of {len(expected)} fsynced files missing ({', '.join(missing[:5])})")
    if changed:
        problems.append(f"{what}: {len(changed)} fsynced files changed ({', '.join(changed[:5])})")
    if extra:
        problems.append(f"{what}: unexpected files {', '.join(extra[:5])}")
    return problems


def check_all_or_nothing(vm: Vm, directory: str, expected: dict[str, str], what: str) -> tuple[list[str], str]:
    """A set whose fate the fault decided (committed or not, restored away or not): all or none of it."""
    found = hashes(vm, directory)
    if not found:
        return [], "absent"
    if found == expected:
        return [], "present"
    return [f"{what}: a mixed set ({len(found)} of {len(expected)} files, "
            f"{sum(found.get(n) == h for n, h in expected.items())} with their content)"], "mixed"


def check_writer(vm: Vm, directory: str, what: str, torn: bool) -> tuple[list[str], dict[str, Any]]:
    """``torn``: the round tore a sector of p7's data (the writer's log may then be garbled in one sector)."""
    report: dict[str, Any] = helper(vm, "check-writer", directory, timeout=600)
    problems = []
    if report["lost"]:
        problems.append(f"{what}: {len(report['lost'])} of {report['logged']} logged (fsynced) files lost or "
                        f"changed ({', '.join(report['lost'][:5])})")
    if report["torn"]:
        problems.append(f"{what}: {len(report['torn'])} files torn under their final name "
                        f"({', '.join(report['torn'][:5])})")
    return problems + garbled_problem(report.get("garbled_bytes"), what, torn), report


def db_writer_line(directory: str, journal: str, pause: float) -> str:
    return f"python3 {HELPER} db-writer {directory} {journal} {pause}"


def check_db(vm: Vm, directory: str, what: str, torn: bool) -> tuple[list[str], dict[str, Any]]:
    report: dict[str, Any] = helper(vm, "check-db", directory, timeout=600)
    return db_problems(report, what, torn), report


P7_MOUNT = ("P7=$(findmnt -n -o TARGET -S /dev/vda7 | head -n 1); U=; "
            "if [ -z \"$P7\" ]; then mkdir -p /run/faults-p7 && mount /dev/vda7 /run/faults-p7 && P7=/run/faults-p7 "
            "&& U=1; fi")


def fill_p7(vm: Vm, what: str) -> dict[str, Any]:
    """p7 with no free blocks (``blocks``) or no free inodes (``inodes``), filled outside the delta."""
    out = vm.sh(f"{P7_MOUNT}; python3 {HELPER} fill-{what} \"$P7/faults-fill\"; rc=$?; "
                "if [ -n \"$U\" ]; then umount /run/faults-p7; fi; [ $rc = 0 ]", timeout=900)
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result
