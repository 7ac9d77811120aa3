"""liveng kernel: A/B kernel slots with boot counting and automatic fallback.

An update goes to the slot that is not running; only once it is written and read back does the
boot order point at it, with a fresh try counter. The first boot that reaches multi-user and
passes the health checks marks itself good (liveng-boot-ok.service), which makes the slot
permanent. A slot that never gets there is dropped by GRUB after its tries.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from liveng import layout, manifest
from liveng.device import bootenv, bootstate, runner, secureboot, slots, system, verify
from liveng.device.bootstate import BootState, DeviceError, mounted

HEALTH_DIR = Path("/etc/liveng/health.d")
MODULES_DIR = Path("/lib/modules")  # the running kernel's modules: /lib/modules/$(uname -r)
FACTORY = layout.ENTRY_FACTORY


def booted_entry() -> str | None:
    return system.cmdline_args().get(layout.KERNEL_ARG_BOOT)


def slot_of(entry: str | None) -> str | None:
    for name, e in layout.ENTRY_SLOT.items():
        if e == entry:
            return name
    return None


def target_slot(state: BootState, booted: str | None) -> str:
    """The slot an update may overwrite: never the running one."""
    running = slot_of(booted)
    if running is not None:
        return "b" if running == "a" else "a"
    # Running the factory kernel (or unknown): prefer a slot the order does not use.
    for name, entry in layout.ENTRY_SLOT.items():
        if entry not in state.order:
            return name
    return "b" if state.preferred == layout.ENTRY_SLOT["a"] else "a"


def normalized(order: list[str]) -> tuple[str, ...]:
    """No duplicates, only known entries, and the factory kernel always last."""
    known = set(layout.ENTRY_SLOT.values())
    out: list[str] = []
    for entry in order:
        if entry in known and entry not in out:
            out.append(entry)
    return (*out, FACTORY)


@dataclass(frozen=True)
class InstallResult:
    slot: str | None
    message: str
    warning: str | None = None  # written anyway, but this machine would refuse to boot it


def newer_installed(kernel: str, boot: Path = Path("/boot")) -> str | None:
    """The newest kernel in ``boot`` with its initramfs made, if newer than ``kernel`` (Debian's
    version order, by linux-version sort)."""
    versions = {p.name.removeprefix("vmlinuz-") for p in boot.glob("vmlinuz-*")
                if (boot / f"initrd.img-{p.name.removeprefix('vmlinuz-')}").is_file()}
    if not versions or versions == {kernel}:
        return None
    ordered = runner.run(["linux-version", "sort", *sorted(versions | {kernel})]).split()
    newest = ordered[-1] if ordered else kernel
    return newest if newest != kernel else None


def install(kernel: str, initrd: Path | None = None, force: bool = False, from_hook: bool = False) -> InstallResult:
    """Write ``kernel`` to the slot that is not running and put it first in the boot order.

    The boot-state lock is held throughout, so two installs (an apt hook and a person) run one
    after the other, and the second chooses its slot from the order the first left. From a
    package hook, a kernel older than the newest installed one is left alone:
    ``update-initramfs -u -k all`` calls the hook once per kernel, newest first, and the
    newest must stay first in the boot order.
    """
    if from_hook:
        newer = newer_installed(kernel)
        if newer is not None:
            return InstallResult(None, f"kernel {kernel} is older than the installed {newer}: the kernel "
                                       "slots keep the newest ('liveng kernel install' writes it anyway)")
    with bootenv.locked():
        return _install(kernel, initrd, force)


def _install(kernel: str, initrd: Path | None, force: bool) -> InstallResult:
    vmlinuz = Path(f"/boot/vmlinuz-{kernel}")
    initrd = initrd or Path(f"/boot/initrd.img-{kernel}")
    for f in (vmlinuz, initrd):
        if not f.is_file():
            raise DeviceError(f"{f} does not exist: is the kernel package {kernel} installed and its "
                              "initramfs made (update-initramfs -c -k VERSION)?")
    state = bootstate.read_state()
    booted = booted_entry()
    files = {layout.KERNEL_PATH: vmlinuz, layout.INITRD_PATH: initrd, **manifest.kernel_dtbs(Path("/"), kernel)}
    wanted = {rel: manifest.sha256_file(src) for rel, src in files.items()}
    preferred = slot_of(state.preferred)
    if preferred is not None and not force:
        current = slots.read_slot(preferred)
        if current.kernel == kernel and all(current.files.get(k) == v for k, v in wanted.items()):
            return InstallResult(None, f"kernel {kernel} is already in slot {preferred.upper()}: nothing to do")
    target = target_slot(state, booted)
    entry = layout.ENTRY_SLOT[target]
    refused = secureboot.refusal(vmlinuz)
    # First take the slot out of the order, so that a power cut during the write cannot leave
    # GRUB pointing at half a slot.
    if entry in state.order:
        bootstate.update_state(order=normalized([e for e in state.order if e != entry]))
    # The kernel belongs to the running system: the slot boots it with that system's squashfs and delta.
    slots.write_slot(target, kernel, files, wanted, system.booted_system())
    rest = [e for e in state.order if e != entry]
    if booted and booted != FACTORY and booted not in rest:
        rest.insert(0, booted)
    bootstate.update_state(order=normalized([entry, *rest]), tries=layout.TRIES)
    message = (f"kernel {kernel} written to slot {target.upper()}; it boots next, and "
               f"falls back to {rest[0] if rest else FACTORY} if it does not come up")
    if system.cmdline_args().get(layout.KERNEL_ARG_MODE, layout.MODE_PERSISTENT) != layout.MODE_PERSISTENT:
        # Its modules were installed into the RAM delta: without a commit the next boot lacks them.
        message += "; RAM mode: run 'liveng commit' before rebooting, or its modules are lost"
    warning = None
    if refused is not None:
        warning = (f"kernel {kernel}: {refused}. Shim will refuse to start it: the next boot falls back to "
                   f"{rest[0] if rest else FACTORY} after about 15 s. Sign it with an enrolled Machine Owner Key "
                   "(README: Secure Boot) or use a Debian-signed kernel")
    return InstallResult(target, message, warning)


def health_checks() -> list[str]:
    """Run the executables in /etc/liveng/health.d; return the names of those that failed."""
    failed = []
    # Built in: the running kernel has its modules. A kernel installed in a RAM mode has them only
    # in the RAM delta; booted without a commit it has none and must not be confirmed.
    if not (MODULES_DIR / os.uname().release).is_dir():
        failed.append(f"built-in: no {MODULES_DIR / os.uname().release} (a kernel installed in a RAM mode "
                      "without 'liveng commit'?)")
    if HEALTH_DIR.is_dir():
        for check in sorted(HEALTH_DIR.iterdir()):
            if check.is_file() and os.access(check, os.X_OK) and runner.returncode([str(check)]) != 0:
                failed.append(check.name)
    return failed


def mark_good() -> str:
    booted = booted_entry()
    if booted is None:
        raise DeviceError("this boot has no liveng.boot= on the kernel command line: not started by liveng GRUB")
    failed = health_checks()
    if failed:
        raise DeviceError(f"health checks failed: {', '.join(failed)}; this boot is not marked good, so GRUB "
                          "falls back after the remaining tries")
    with bootenv.locked():
        state = bootstate.read_state()
        order = confirmed_order(state.order, booted, lambda e: (name := slot_of(e)) is None or bootable(name))
        confirmed = layout.order_to_env(order)
        if (order, layout.TRIES, booted, confirmed) == (state.order, state.tries, state.good, state.confirmed) \
                and not state.damaged:
            # Nothing to record (a RAM-mode boot GRUB did not count): the card is not written.
            return booted
        bootstate.update_state(order=order, tries=layout.TRIES, good=booted, confirmed=confirmed)
    return booted


def bootable(name: str) -> bool:
    """Whether slot ``name`` holds an intact kernel that this machine would start: under Secure Boot,
    GRUB also skips one that shim refuses, intact as it is."""
    if not verify.intact(name):
        return False
    if not secureboot.enabled():
        return True
    try:
        with mounted(layout.SLOTS[name], "iso9660") as root:
            return secureboot.refusal(root / layout.KERNEL_PATH) != secureboot.NOT_TRUSTED
    except DeviceError:
        return True  # cannot tell: keep it, as before Secure Boot was considered


def confirmed_order(order: tuple[str, ...], booted: str, intact: Callable[[str], bool]) -> tuple[str, ...]:
    """The boot order after a good boot of ``booted``.

    GRUB boots the first entry unless it cannot load it (then it falls back to the next) or a
    person chose another entry at the menu. Entries in front of ``booted`` whose slot no longer
    holds an intact kernel are what GRUB skipped: they are dropped. Intact ones stay, so that
    booting the factory kernel by hand once does not throw the updated kernels away.
    """
    if booted not in order:
        return normalized(list(order))
    ahead = order[: order.index(booted)]
    return normalized([e for e in order if e not in ahead or intact(e)])


def rollback() -> str:
    with bootenv.locked():
        return _rollback()


def _rollback() -> str:
    state = bootstate.read_state()
    booted = booted_entry()
    current = slot_of(state.preferred) or slot_of(booted)
    other = "b" if current == "a" else "a"
    info = slots.read_slot(other)
    if info.kernel is None:
        raise DeviceError(f"slot {other.upper()} holds no kernel to roll back to")
    if not verify.intact(other):
        raise DeviceError(f"slot {other.upper()} (kernel {info.kernel}) is damaged: its files do not match its "
                          "manifest (liveng verify shows which); the boot order is unchanged")
    bootstate.update_state(order=normalized([info.entry, *state.order]), tries=layout.TRIES)
    return f"slot {other.upper()} (kernel {info.kernel}) boots next"


def status_lines() -> list[str]:
    state = bootstate.read_state()
    booted = booted_entry()
    lines = [f"running:   {booted or 'unknown'} (kernel {os.uname().release})",
             f"boot order: {' '.join(state.order)}   tries left for {state.preferred}: "
             f"{state.tries if state.tries is not None else '?'}",
             f"last good: {state.good or 'none yet'}"]
    if state.damaged:
        lines.append(f"boot env:  {' and '.join(state.damaged)} copy damaged; repaired at the next change")
    for name in layout.ENTRY_SLOT:
        info = slots.read_slot(name)
        what = f"kernel {info.kernel}, written {info.written}" if info.kernel else "empty"
        lines.append(f"slot {name.upper()}:    {what}")
    return lines


def status_dict() -> dict[str, object]:
    state = bootstate.read_state()
    return {
        "running": booted_entry(),
        "kernel": os.uname().release,
        "order": list(state.order),
        "tries": state.tries,
        "good": state.good,
        # Copies of p1's env found damaged now (repaired at the next change, mark-good included).
        "env_damaged": list(state.damaged),
        "slots": {name: {"kernel": i.kernel, "written": i.written, "system": i.system}
                  for name in layout.ENTRY_SLOT for i in [slots.read_slot(name)]},
    }
