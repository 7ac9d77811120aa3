"""The operations that go through apt and dpkg: an upgrade of ordinary packages, and an upgrade of
the installed kernel package (dpkg unpacks /boot and /lib/modules, then the postinst makes the
initramfs and liveng's hook writes a kernel slot). After the fault, dpkg's own recovery first."""

from __future__ import annotations

import re

from liveng.host import trim
from tests.vm import Vm

from .opbase import Ctx, Op, kernel_problems
from .world import HOST, PACKAGE, World

APT = "DEBIAN_FRONTEND=noninteractive apt-get -y -q"


def upgraded(apt_output: str) -> set[str]:
    """The packages apt-get said it upgrades ("The following packages will be upgraded:")."""
    found = re.search(r"will be upgraded:\n(.*?)\n\d+ upgraded", apt_output, re.S)
    return set(found.group(1).split()) if found else set()


def apt_source(version: str, world: World, name: str = "faults") -> str:
    """Point apt at the campaign's repository ``version`` (a directory of it) through the list
    ``name``; only that list is fetched (the image ships no package lists)."""
    return (f"echo 'deb [trusted=yes] http://{HOST}:{world.repo_port}/{version}/ ./' "
            f"> /etc/apt/sources.list.d/{name}.list && "
            f"apt-get -q update -o Dir::Etc::sourcelist=sources.list.d/{name}.list -o Dir::Etc::sourceparts=- "
            "-o APT::Get::List-Cleanup=0")


# The packages with dpkg's "reinstallation required" flag (the third letter of db:Status-Abbrev).
REINST_REQUIRED = "dpkg-query -W -f '${db:Status-Abbrev} ${Package}\\n' | awk 'substr($1, 3, 1) == \"R\" {print $2}'"


# `apt-get update` of the campaign's own lists (apt_source's), one at a time as apt_source does.
UPDATE_OWN_LISTS = ("for list in /etc/apt/sources.list.d/faults*.list; do apt-get -q update "
                    "-o Dir::Etc::sourcelist=\"sources.list.d/${list##*/}\" -o Dir::Etc::sourceparts=- "
                    "-o APT::Get::List-Cleanup=0 || exit 1; done")
# What apt prints when the package lists it needs are not there (liveng-apt-recover removes a
# source's lists when the cut tore them).
NO_LISTS = ("has no installation candidate", "is not available", "Unable to locate package",
            "was not found", "Unable to fetch some archives")


def apt_retrying(vm: Vm, args: str, steps: list[str]) -> str:
    """``{APT} args``; when apt says its lists lack the package, what an owner does: `apt-get
    update`, then once more. Returns the output, ending "rc=N"."""
    out = vm.sh(f"{APT} {args}; echo rc=$?", timeout=1800)
    if not out.endswith("rc=0") and any(s in out for s in NO_LISTS):
        steps.append("apt-get update")
        vm.sh(UPDATE_OWN_LISTS, timeout=600, check=False)
        out = vm.sh(f"{APT} {args}; echo rc=$?", timeout=1800)
    return out


def dpkg_recover(vm: Vm, package: str) -> tuple[list[str], dict[str, object]]:
    """dpkg's own recovery after a cut, what an owner does when dpkg and apt say so: `dpkg
    --configure -a`; the packages dpkg marks "reinstallation required" (cut while unpacking: "in a
    very bad inconsistent state; you should reinstall it", which `apt-get -f install` refuses)
    reinstalled; then, if something is still broken (one that depends on it unconfigured), `apt-get
    -f install`; a reinstall of ``package`` if it is still not installed. Each apt step runs once
    more after `apt-get update` if apt says its lists lack the package. Returns (problems, the
    steps taken and the package's status)."""
    steps: list[str] = []
    notes: dict[str, object] = {"recovery": steps}
    if vm.sh("dpkg --audit", check=False):
        steps.append("dpkg --configure -a")
        out = vm.sh("dpkg --configure -a; echo rc=$?", timeout=1800)
        if not out.endswith("rc=0"):
            notes["configure_a"] = out[-300:]
    reinstall = vm.sh(REINST_REQUIRED, check=False).split()
    if reinstall:
        steps.append(f"apt-get install --reinstall {' '.join(reinstall)}")
        out = apt_retrying(vm, f"install --reinstall {' '.join(reinstall)}", steps)
        if not out.endswith("rc=0"):
            return [f"apt-get install --reinstall {' '.join(reinstall)} failed: {out[-300:]}"], notes
    query = f"dpkg-query -W -f '${{Status}} ${{Version}}' {package}"
    if vm.sh("dpkg --audit", check=False):
        steps.append("apt-get -f install")
        out = apt_retrying(vm, "-f install", steps)
        if not out.endswith("rc=0"):
            return [f"apt-get -f install failed: {out[-300:]}"], notes
    status = vm.sh(query, check=False)
    if not status.startswith("install ok installed"):
        steps.append("apt-get install --reinstall")
        out = apt_retrying(vm, f"install --reinstall {package}", steps)
        if not out.endswith("rc=0"):
            return [f"{package} ({status}) could not be reinstalled: {out[-300:]}"], notes
        status = vm.sh(query)
    notes["status"] = status
    problems = []
    audit = vm.sh("dpkg --audit", check=False)
    if audit:
        problems.append(f"dpkg --audit after the recovery: {audit[:300]}")
    bad = not_filtered(vm.sh(f"dpkg --verify {package}", check=False, timeout=900),
                       vm.sh("cat /etc/dpkg/dpkg.cfg.d/* 2>/dev/null || true"))
    if bad:
        problems.append(f"dpkg --verify {package}: {' | '.join(bad)[:300]}")
    return problems, notes


def not_filtered(verify: str, dpkg_cfg: str) -> list[str]:
    """`dpkg --verify` lines, without the "missing" files the image's dpkg path filters left out on
    purpose (liveng/host/trim.py)."""
    filters = [line.strip() for line in dpkg_cfg.splitlines()]
    return [line for line in verify.splitlines() if line.strip()
            and not (line.startswith("missing") and trim.excluded(filters, line.split()[-1]))]


class AptUpgrade(Op):
    name = "apt-upgrade"
    window = 60.0

    def prepare(self, ctx: Ctx) -> None:
        ctx.vm.sh(apt_source("1", ctx.world), timeout=600)
        ctx.vm.sh(f"{APT} install {PACKAGE}", timeout=900)
        ctx.vm.sh(apt_source("2", ctx.world), timeout=600)

    def command(self, ctx: Ctx) -> str:
        return f"{APT} upgrade"

    def check(self, ctx: Ctx, vm: Vm) -> list[str]:
        problems, ctx.notes["dpkg"] = dpkg_recover(vm, PACKAGE)
        status = ctx.notes["dpkg"].get("status")
        if status is not None and status not in ("install ok installed 1", "install ok installed 2"):
            problems.append(f"{PACKAGE}: {status}")
        return problems


class AptKernel(Op):
    """`apt-get upgrade` of linux-image-$(uname -r) (and its metapackage) to the newer build the
    campaign's repository serves (kernelrepo.py): the same kernel version, so the new initramfs is written
    to the other slot, first in the boot order with its tries. Half the rounds (rng) then reboot
    into that slot: the fault may land in its trial boot."""

    name = "apt-kernel"
    regions = ("grubenv", "fat", "last")
    window = 300.0  # until a round measures it: dpkg, update-initramfs, the slot write (pc, TCG: 293 s)

    def prepare(self, ctx: Ctx) -> None:
        kernel = ctx.world.kernel
        assert kernel is not None, "the world was made without the kernel repository"
        ctx.notes["then_boot"] = ctx.rng.random() < 0.5
        ctx.notes["kernel_package"] = kernel.package
        ctx.vm.sh(apt_source(kernel.repo, ctx.world, "faults-kernel"), timeout=600)
        # Downloaded before: the fault lands in dpkg and its hooks, not in a transfer apt restarts anyway.
        out = ctx.vm.sh(f"{APT} --download-only upgrade && sync", timeout=900)
        # Others may come along: with apt-upgrade as the partner (two-ops), its package's new version.
        if not {kernel.package, *kernel.also} <= upgraded(out):
            raise RuntimeError(f"apt would not upgrade {kernel.package} and {', '.join(kernel.also)}: {out[-500:]}")

    def command(self, ctx: Ctx) -> str:
        assert ctx.world.kernel is not None
        return f"{APT} upgrade" + (" && systemctl reboot" if ctx.notes["then_boot"] else "")

    def check(self, ctx: Ctx, vm: Vm) -> list[str]:
        kernel = ctx.world.kernel
        assert kernel is not None
        problems, ctx.notes["dpkg"] = dpkg_recover(vm, kernel.package)
        status = ctx.notes["dpkg"].get("status")
        allowed = {f"install ok installed {v}" for v in (kernel.installed, kernel.upgrade)}
        if status is not None and status not in allowed:
            problems.append(f"{kernel.package}: {status}")
        for also in kernel.also:  # the metapackage: either version, configured
            version = vm.sh(f"dpkg-query -W -f '${{Status}} ${{Version}}' {also}", check=False)
            if not version.startswith("install ok installed ") or not version.endswith(
                    (kernel.installed, kernel.upgrade)):
                problems.append(f"{also}: {version}")
        # The initramfs dpkg leaves (made again by --configure -a if the cut came first) is whole.
        initrd = vm.sh("f=/boot/initrd.img-$(uname -r); lsinitramfs $f >/dev/null && echo ok", check=False,
                       timeout=600)
        if not initrd.endswith("ok"):
            problems.append(f"the initramfs of the running kernel cannot be read: {initrd[-300:]}")
        return problems + kernel_problems(vm)
