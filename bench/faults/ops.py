"""The operations a fault lands in. Each brings the resumed VM to its state (prepare), gives the
shell line that starts it (command) and says what must hold after the fault and the boot that
follows (check, check_host). Files every round has (written by the runner, not the operation):
A_DIR, fsynced before the operation, and the background writer's WRITER_DIR (opbase.py). The apt and
dpkg operations are in ops_apt.py."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from liveng import layout
from liveng.host.disk import read_table
from liveng.host.qmp import Qmp
from tests.vm import Vm

from . import guest
from .opbase import A_DIR, B_DIR, Ctx, Op, kernel_problems
from .ops_apt import AptKernel, AptUpgrade
from .world import HOST


class Boot(Op):
    name = "boot"
    regions = ("grubenv", "fat", "last")
    reboots = True
    window = 10.0

    def prepare(self, ctx: Ctx) -> None:
        # Half the rounds cut the trial boot of a freshly written slot (GRUB counts its tries down).
        ctx.notes["trial"] = ctx.rng.random() < 0.5
        if ctx.notes["trial"]:
            ctx.vm.sh("liveng kernel install --force $(uname -r)", timeout=600)

    def command(self, ctx: Ctx) -> str:
        return "systemctl reboot"

    def check(self, ctx: Ctx, vm: Vm) -> list[str]:
        return kernel_problems(vm)


class KernelInstall(Op):
    name = "kernel-install"
    kinds = ("base", "ram")
    regions = ("grubenv", "fat", "last")
    window = 25.0

    def command(self, ctx: Ctx) -> str:
        return "liveng kernel install --force $(uname -r)"

    def check(self, ctx: Ctx, vm: Vm) -> list[str]:
        return kernel_problems(vm)


class Commit(Op):
    name = "commit-ram"
    kinds = ("ram",)
    arches = ("pc",)  # the RAM-mode images are built for the PC only (world.kinds_for)
    regions = ("grubenv", "fat", "last")
    window = 40.0

    def prepare(self, ctx: Ctx) -> None:
        ctx.write_set(B_DIR)

    def command(self, ctx: Ctx) -> str:
        return "liveng commit"

    def check(self, ctx: Ctx, vm: Vm) -> list[str]:
        problems, fate = guest.check_all_or_nothing(vm, B_DIR, ctx.sets[B_DIR], "set B (being committed)")
        ctx.notes["B"] = fate
        return problems


class CommitPaths(Commit):
    """ram-paths mode: a commit of paths (A and B, both only in RAM before it): both or neither."""

    name = "commit-ram-paths"
    kinds = ("ram-paths",)

    def command(self, ctx: Ctx) -> str:
        return f"liveng commit {A_DIR} {B_DIR}"

    def check(self, ctx: Ctx, vm: Vm) -> list[str]:
        problems = super().check(ctx, vm)
        more, fate = guest.check_all_or_nothing(vm, A_DIR, ctx.sets[A_DIR], "set A (committed with B)")
        if fate != ctx.notes["B"]:
            more.append(f"set A {fate} but set B {ctx.notes['B']}: one commit, half of it kept")
        return problems + more


class Restore(Op):
    name = "snapshot-restore"
    regions = ("grubenv", "fat", "last")
    reboots = True

    def prepare(self, ctx: Ctx) -> None:
        ctx.vm.sh("liveng snapshot create faults", timeout=900)
        ctx.write_set(B_DIR)  # after the snapshot: a restore that happened takes it away

    def command(self, ctx: Ctx) -> str:
        return "liveng snapshot restore faults && systemctl reboot"

    def check(self, ctx: Ctx, vm: Vm) -> list[str]:
        problems, fate = guest.check_all_or_nothing(vm, B_DIR, ctx.sets[B_DIR], "set B (made after the snapshot)")
        ctx.notes["B"] = fate
        return problems


class Reset(Op):
    name = "reset"
    regions = ("grubenv", "fat", "last")
    reboots = True
    discards_delta = True

    def command(self, ctx: Ctx) -> str:
        return "liveng reset --yes && systemctl reboot"


class Resize(Op):
    name = "resize"
    regions = ("ebr", "last")
    pairs = False  # the disk grows first, from the host

    def prepare(self, ctx: Ctx) -> None:
        assert ctx.vm.qmp_path is not None
        size = ctx.world.goldens[ctx.kind].disk.stat().st_size + (1 << 30)
        qmp = Qmp(ctx.vm.qmp_path)
        try:
            qmp.execute("block_resize", device="disk0", size=size)
        finally:
            qmp.close()
        ctx.vm.sh(f"until [ $(blockdev --getsize64 /dev/vda) = {size} ]; do sleep 1; done", timeout=120)
        ctx.notes["disk_size"] = size

    def command(self, ctx: Ctx) -> str:
        return "liveng resize"

    def check(self, ctx: Ctx, vm: Vm) -> list[str]:
        vm.sh("systemctl start liveng-resize.service || true", timeout=600)
        fs = int(vm.sh(f"{guest.P7_MOUNT}; df -B1 --output=size \"$P7\" | tail -n 1; "
                       "if [ -n \"$U\" ]; then umount /run/faults-p7; fi").splitlines()[-1])
        p7 = int(vm.sh("blockdev --getsize64 /dev/vda7"))
        return [] if fs > p7 - 300 * layout.MiB else [f"ext4 {fs} bytes on a {p7}-byte p7: not grown"]

    def check_host(self, ctx: Ctx, disk: Path) -> list[str]:
        table = read_table(disk)
        end = ctx.notes["disk_size"]
        p3, p7 = table.entry(3), table.entry(7)
        if p7.start + p7.size != end or p3.start + p3.size != end:
            return [f"after the boot p3 ends at {p3.start + p3.size}, p7 at {p7.start + p7.size}, the disk at {end}"]
        return []


class Settings(Op):
    name = "settings"
    regions = ("fat", "last")

    def prepare(self, ctx: Ctx) -> None:
        name = f"faults{ctx.rng.randrange(10**6)}"
        ctx.notes["hostname"] = name
        ctx.notes["hostname_before"] = ctx.vm.sh("cat /etc/hostname")
        text = f'hostname = "{name}"\n'
        ctx.vm.sh(f"mkdir -p /run/faults-p1 && mount /dev/vda1 /run/faults-p1 && "
                  f"printf %s {shlex.quote(text)} > /run/faults-p1/{layout.SETTINGS_PATH}.tmp && "
                  f"mv /run/faults-p1/{layout.SETTINGS_PATH}.tmp /run/faults-p1/{layout.SETTINGS_PATH} && "
                  "sync && umount /run/faults-p1")

    def command(self, ctx: Ctx) -> str:
        return "liveng settings apply"

    def check(self, ctx: Ctx, vm: Vm) -> list[str]:
        # Applied by the command or, when the cut came first, by liveng-settings.service at this boot.
        vm.sh("systemctl start liveng-settings.service || true", timeout=600)
        seen = vm.sh("cat /etc/hostname")
        allowed = {ctx.notes["hostname"]} | ({ctx.notes["hostname_before"]} if ctx.disk_full else set())
        return [] if seen in allowed else [f"hostname {seen!r}, the settings file says {ctx.notes['hostname']!r}"]


class ModeSet(Op):
    name = "mode-set"
    kinds = ("base", "ram")
    regions = ("grubenv", "fat")
    window = 10.0

    def prepare(self, ctx: Ctx) -> None:
        running = json.loads(ctx.vm.sh("liveng mode show --json"))["running"]
        ctx.notes["mode_before"] = running
        ctx.notes["mode"] = ctx.rng.choice([m for m in layout.MODES if m != running])

    def command(self, ctx: Ctx) -> str:
        return f"liveng mode set {ctx.notes['mode']}"

    def check(self, ctx: Ctx, vm: Vm) -> list[str]:
        running = json.loads(vm.sh("liveng mode show --json"))["running"]
        ctx.notes["mode_after"] = running
        allowed = (ctx.notes["mode_before"], ctx.notes["mode"])
        return [] if running in allowed else [f"booted in mode {running}, neither of {allowed}"]


class UserWrites(Op):
    name = "user-writes"
    window = 40.0
    writer = False  # it is the writer, at full speed
    DIR = "/home/faults/u"

    def command(self, ctx: Ctx) -> str:
        return f"python3 {guest.HELPER} writer {self.DIR} 0"

    def check(self, ctx: Ctx, vm: Vm) -> list[str]:
        problems, report = guest.check_writer(vm, self.DIR, "heavy writer", ctx.torn_data)
        ctx.notes["heavy"] = {k: report[k] for k in ("logged", "whole", "partial_log", "garbled_bytes")}
        return problems


class DbWrites(Op):
    """The user's application writing an SQLite database the careful way (guest_helper.db_writer):
    transactions of several rows, synchronous=FULL, each id logged once COMMIT returned. The
    journal, WAL or rollback, is the round's (rng). After the fault: integrity_check ok, every
    logged transaction whole, none partly there, nothing newer but the one in flight."""

    name = "db-writes"
    window = 40.0
    DIR = "/home/faults/db"

    def prepare(self, ctx: Ctx) -> None:
        ctx.notes["journal"] = ctx.rng.choice(("wal", "delete"))

    def command(self, ctx: Ctx) -> str:
        return guest.db_writer_line(self.DIR, ctx.notes["journal"], 0)

    def check(self, ctx: Ctx, vm: Vm) -> list[str]:
        problems, report = guest.check_db(vm, self.DIR, "database", ctx.torn_data)
        ctx.notes["db"] = {k: report.get(k) for k in ("journal", "integrity", "logged", "in_db", "in_flight",
                                                      "garbled")}
        if report.get("journal") not in (None, ctx.notes["journal"]):
            problems.append(f"database: journal_mode {report['journal']}, written in {ctx.notes['journal']}")
        return problems


class DbWritesPaths(DbWrites):
    """ram-paths mode: the database in a persistent path, on the card while the rest is in RAM."""

    name = "db-writes-ram-paths"
    kinds = ("ram-paths",)
    arches = ("pc",)
    DIR = "/srv/keep/faults-db"


class UpdateApply(Op):
    name = "update-apply"
    arches = ("pc",)
    regions = ("grubenv", "fat", "last")
    window = 45.0
    writer = False  # v2 gets a copy of /home made during the apply: later files are not carried, by design
    pairs = False

    def prepare(self, ctx: Ctx) -> None:
        # Half the rounds cut v2's first boot instead (Op.reboots_in: the window spans it; before
        # session 10, 2026-12-06, it did not, and those rounds were cut within ~55 s of the apply's start).
        ctx.notes["then_boot"] = ctx.rng.random() < 0.5

    def command(self, ctx: Ctx) -> str:
        url = f"http://{HOST}:{ctx.world.channel_port}/"
        return f"liveng update apply {url}" + (" && systemctl reboot" if ctx.notes["then_boot"] else "")

    def check(self, ctx: Ctx, vm: Vm) -> list[str]:
        out = vm.sh("liveng update status --json")
        st = json.loads(out[out.index("{"):])
        ctx.notes["running"] = running = str(st["running"])
        problems = [] if running == layout.SYSTEM_FACTORY or running.startswith("2_") else [f"running {running}"]
        return problems + kernel_problems(vm)


OPS: dict[str, Op] = {op.name: op for op in (Boot(), KernelInstall(), AptUpgrade(), AptKernel(), Commit(),
                                             CommitPaths(), Restore(), Reset(), Resize(), Settings(), ModeSet(),
                                             UserWrites(), DbWrites(), DbWritesPaths(), UpdateApply())}
