"""What must hold after every round, whatever the operation: a shell with nobody at the console
(the runner waits for it), the system settled, `liveng status` and `liveng verify` content and in
agreement; then, the VM powered off, p2 as built, p1's boot files' sectors as built (nothing the
device writes may reach them: liveng/host/fatlayout.py) and p7's ext4 clean to `e2fsck -fn`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from liveng import layout
from liveng.host.disk import read_table
from tests.boot.conftest import partition_hash
from tests.boot.p1fence import boot_sector_changes
from tests.vm import Vm


def in_guest(vm: Vm, notes: dict[str, Any], disk_full: bool) -> list[str]:
    problems = []
    vm.sh("systemctl start liveng-boot-ok.service || true", timeout=600)
    state = vm.sh("timeout 300 systemctl is-system-running --wait", check=False).splitlines()[-1:]
    notes["systemd"] = state[0] if state else "?"
    failed = vm.sh("systemctl --failed --plain --no-legend | awk '{print $1}'")
    if failed:
        notes["failed_units"] = failed.split()
        if not disk_full:  # on a full p7 a service that must write may fail: its unit says so, honestly
            problems.append(f"failed units: {' '.join(failed.split())}")
    out = vm.sh("liveng status --json; echo rc=$?", timeout=600)
    body, _, rc = out.rpartition("rc=")
    status: dict[str, Any] = {}
    if rc != "0":
        problems.append(f"liveng status exited {rc}: {body[-300:]}")
    else:
        status = json.loads(body[body.index("{"):])
        if status.get("errors"):
            problems.append(f"liveng status errors: {status['errors']}")
        if status.get("pending"):
            problems.append(f"a request still pending after the boot: {status['pending']}")
        if status.get("switch_in_progress"):
            problems.append("a delta switch still in progress after the boot")
    out = vm.sh("liveng verify; echo rc=$?", timeout=1200)
    verified = out.endswith("rc=0") and "verify OK" in out
    if not verified:
        problems.append(f"liveng verify: {out[-400:]}")
    if status and not status.get("errors") and not verified:
        problems.append("liveng status reports no error but verify fails: they disagree")
    slots = status.get("kernel_slots") or {}
    if slots and slots.get("running") not in (slots.get("order") or []):
        problems.append(f"status: running {slots.get('running')} not in the boot order {slots.get('order')}")
    notes["status"] = {"mode": (status.get("mode") or {}).get("running"), "kernel": slots.get("running"),
                       "order": slots.get("order"), "free": (status.get("persistence") or {}).get("free"),
                       "warnings": status.get("warnings") or []}
    return problems


def on_host(disk: Path, built: Path, system_hash: str, powered_off: bool) -> list[str]:
    """``built``: the golden's disk, for where p2 and p7 start (a torn table must not hide them);
    ``powered_off``: the check boot ended in a clean power-off (else p7 may rightly need its journal)."""
    problems = []
    table = read_table(built)
    if partition_hash(disk, layout.Role.SYSTEM, table_of=built) != system_hash:
        problems.append("p2 (the system) is not as built")
    problems += boot_sector_changes(built, disk, layout_too=False)
    p7 = table.entry(layout.partition(layout.Role.PERSISTENCE).number).start
    with open(disk, "rb") as f:
        f.seek(p7 + 1024)
        sb = f.read(1024)
    # The superblock's RECOVER flag: set while mounted, cleared by a clean unmount.
    if powered_off and int.from_bytes(sb[0x60:0x64], "little") & 0x0004:
        problems.append("p7 still has its journal to replay after a clean power-off")
    fsck = subprocess.run(["e2fsck", "-fn", f"{disk}?offset={p7}"], capture_output=True, text=True)
    if fsck.returncode != 0:
        problems.append(f"e2fsck -fn p7 exited {fsck.returncode}: " + " | ".join(
            line for line in fsck.stdout.splitlines() if not line.startswith("Pass "))[-600:])
    return problems
