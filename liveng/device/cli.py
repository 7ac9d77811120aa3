"""The liveng command on the device."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from liveng import layout
from liveng.device import updatecmd
from liveng.device.runner import DeviceError, run
from liveng.settings import SettingsError

if TYPE_CHECKING:
    from liveng.device import (
        aptrecover,
        bootstate,
        delta,
        firstboot,
        install,
        kernel,
        kernelfit,
        ram,
        resize,
        shutdown,
        snapshot,
        status,
        verify,
    )
else:
    class _Lazy(ModuleType):
        """A device module imported when first used: every boot runs this tool three times (settings,
        resize, mark-good), and each needs a few of the modules; under a slow CPU the imports dominate."""

        def __getattr__(self, attr: str) -> object:
            return getattr(importlib.import_module(f"liveng.device.{self.__name__}"), attr)

    _NAMES = ("aptrecover", "bootstate", "delta", "firstboot", "install", "kernel", "kernelfit", "ram", "resize",
              "shutdown", "snapshot", "status", "verify")
    (aptrecover, bootstate, delta, firstboot, install, kernel, kernelfit, ram, resize, shutdown, snapshot, status,
     verify) = (_Lazy(n) for n in _NAMES)


def cmd_status(args: argparse.Namespace) -> int:
    report = status.collect()
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print("\n".join(status.lines(report)))
    return 0


def cmd_snapshot_create(args: argparse.Namespace) -> int:
    name = args.name or snapshot.default_name()
    with delta.persistence_root() as root:
        path, warnings = snapshot.create(root, name, args.to)
    for w in warnings:
        print(f"liveng: tar: {w}", file=sys.stderr)
    print(f"liveng: snapshot {name} written to {path} ({path.stat().st_size} bytes)")
    return 0


def cmd_snapshot_list(args: argparse.Namespace) -> int:
    with delta.persistence_root() as root:
        snaps = snapshot.list_snapshots(root)
    if args.json:
        print(json.dumps([{"name": s.name, "created": s.created, "size": s.size, "delta_bytes": s.delta_bytes}
                          for s in snaps], indent=1))
    elif not snaps:
        print("no snapshots ('liveng snapshot create' makes one)")
    else:
        for s in snaps:
            print(f"{s.name:<24} {s.created}  {s.size / 2**20:9.1f} MiB")
    return 0


def cmd_snapshot_delete(args: argparse.Namespace) -> int:
    with delta.persistence_root() as root:
        snapshot.delete(root, args.name)
    print(f"liveng: snapshot {args.name} deleted")
    return 0


def cmd_snapshot_restore(args: argparse.Namespace) -> int:
    with delta.persistence_root() as root:
        request = snapshot.request_restore(root, args.name, kernelfit.adjust_order)
    print(f"liveng: {request.describe()}")
    print("liveng: changes made from now until the reboot are discarded; 'liveng cancel' withdraws it")
    return 0


def _confirm(question: str, command: str = "reset") -> bool:
    if not sys.stdin.isatty():
        raise DeviceError(f"liveng {command} needs a confirmation: run it on a terminal or give --yes")
    print(question, end=" ", flush=True)
    return sys.stdin.readline().strip() == "yes"


def cmd_reset(args: argparse.Namespace) -> int:
    what = "and every snapshot " if args.delete_snapshots else ""
    if not args.yes and not _confirm(f"Discard every change made to this system {what}at the next boot? "
                                      "Type yes to confirm:"):
        print("liveng: no reset")
        return 1
    with delta.persistence_root() as root:
        request = snapshot.request_reset(root, args.delete_snapshots, kernelfit.adjust_order)
    print(f"liveng: {request.describe()}; 'liveng cancel' withdraws it")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with delta.persistence_root() as root:
        if delta.switch_in_progress(root):
            raise DeviceError("the switch has begun (the boot was interrupted); it completes at the next boot")
        request = delta.drop_pending(root)
    if request is None:
        print("liveng: nothing pending")
        return 0
    kernelfit.restore_order(request.order)
    print(f"liveng: cancelled the {request.action} requested {request.created}")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    def confirm(question: str) -> bool:
        return args.yes or _confirm(question, "install")

    if not install.install(args.device, args.with_delta, confirm, lambda msg: print(f"liveng: {msg}", flush=True)):
        print("liveng: nothing was written")
        return 1
    print(f"liveng: installed on {args.device}; it boots on its own (BIOS and UEFI). It carries this system's id: "
          "remove this disk before booting both in one machine")
    return 0


def cmd_commit(args: argparse.Namespace) -> int:
    with delta.persistence_root() as root:
        request = ram.commit(root, args.paths, adjust_order=kernelfit.adjust_order)
    print(f"liveng: {request.describe()}; every mode boots with it from then on")
    return 0


def cmd_mode_show(args: argparse.Namespace) -> int:
    state = bootstate.read_state()
    running = ram.running_mode()
    with delta.persistence_root(writable=False) as root:
        device_paths = ram.read_paths(root)
    report = {"running": running, "default": state.mode, "recipe_paths": ram.recipe_paths(),
              "device_paths": device_paths, "mounted_paths": ram.mounted_paths()}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"running:    {running}")
    print(f"next boots: {state.mode} (change: liveng mode set {'|'.join(layout.MODES)})")
    print(f"persistent paths (ram-paths mode): {', '.join([*ram.recipe_paths(), *device_paths]) or 'none'}")
    return 0


def cmd_mode_set(args: argparse.Namespace) -> int:
    ram.set_default_mode(args.mode)
    print(f"liveng: the next boots are in {args.mode} mode")
    return 0


def cmd_mode_paths(args: argparse.Namespace) -> int:
    with delta.persistence_root() as root:
        paths = ram.change_paths(root, args.add or [], args.remove or [])
    print(f"liveng: this device's persistent paths: {', '.join(paths) or 'none'} "
          f"(and the recipe's: {', '.join(ram.recipe_paths()) or 'none'}); used from the next ram-paths boot")
    return 0


def cmd_resize(args: argparse.Namespace) -> int:
    try:
        changed = resize.resize(say=lambda msg: print(f"liveng: {msg}", flush=True))
    except resize.RebootNeeded as exc:
        if not args.auto:
            print(f"liveng: {exc}: reboot to use it")
            return 0
        print(f"liveng: {exc}: rebooting", flush=True)
        run(["systemctl", "reboot"])
        return 0
    if not changed and not args.auto:
        print("liveng: the persistence partition already fills the disk")
    return 0


def cmd_apt_recover(args: argparse.Namespace) -> int:
    report = aptrecover.recover(say=lambda msg: print(f"liveng: apt: {msg}", flush=True))
    if not report.removed and not report.set_aside:
        print("liveng: apt's downloads, lists and states are whole")
    return 0


def cmd_kernel_status(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(kernel.status_dict(), indent=1))
    else:
        print("\n".join(kernel.status_lines()))
    return 0


def cmd_kernel_install(args: argparse.Namespace) -> int:
    try:
        result = kernel.install(args.version, args.initrd, force=args.force, from_hook=args.from_hook)
    except DeviceError as exc:
        if args.from_hook:
            # A package operation must not fail because of the slot: say it loudly, exit 0.
            print(f"liveng: kernel {args.version} was NOT written to a kernel slot: {exc}", file=sys.stderr)
            print("liveng: the running kernel and the factory kernel still boot; retry with "
                  f"'liveng kernel install {args.version}'", file=sys.stderr)
            return 0
        raise
    print(f"liveng: {result.message}", file=sys.stderr if args.from_hook else sys.stdout)
    if result.warning:
        print(f"liveng: WARNING: {result.warning}", file=sys.stderr)
    return 0


def cmd_kernel_mark_good(args: argparse.Namespace) -> int:
    print(f"liveng: boot of {kernel.mark_good()} marked good")
    return 0


def cmd_kernel_rollback(args: argparse.Namespace) -> int:
    print(f"liveng: {kernel.rollback()}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    report = verify.Report()
    verify.verify_system(report)
    verify.verify_slots(report)
    verify.verify_updated_systems(report)
    for problem in report.problems:
        print(f"liveng: FAILED {problem}")
    if report.ok:
        print(f"liveng: verify OK: {report.checked} files match the build's SHA-256 manifests")
        return 0
    print(f"liveng: verify FAILED: {len(report.problems)} problem(s) in {report.checked} files checked")
    return 1


def cmd_settings_apply(args: argparse.Namespace) -> int:
    try:
        outcome = firstboot.apply_boot_partition(force=args.force)
    except SettingsError as exc:
        print(f"liveng: the settings were NOT applied (nothing was changed; the boot goes on): {exc}",
              file=sys.stderr)
        print(f"liveng: fix the file on the boot partition and boot again; the reason is also in "
              f"{layout.SETTINGS_ERROR_PATH} there", file=sys.stderr)
        return 1
    print(f"liveng: {outcome.message}")
    return 0


def cmd_settings_check(args: argparse.Namespace) -> int:
    try:
        s = firstboot.check_file(args.file)
    except SettingsError as exc:
        print(f"liveng: {exc}", file=sys.stderr)
        return 1
    print("liveng: the settings are valid" + (" (and empty)" if s.empty else ""))
    return 0


def cmd_prepare_shutdown(args: argparse.Namespace) -> int:
    print(f"liveng: {shutdown.prepare()}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="liveng", description="liveng device tool")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("status", help="show this system's layout and boot state")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("verify", help="check the system partition and kernel slots against their manifests")
    p.set_defaults(func=cmd_verify)

    snap = sub.add_parser("snapshot", help="archives of the delta: create, list, restore, delete")
    ssub = snap.add_subparsers(dest="snapshot_command", required=True)
    p = ssub.add_parser("create", help="archive the delta (on the persistence partition, or --to elsewhere)")
    p.add_argument("name", nargs="?", help="snapshot name (default: the date and time, UTC)")
    p.add_argument("--to", type=Path, metavar="PATH", help="write the archive to this file or directory instead")
    p.set_defaults(func=cmd_snapshot_create)
    p = ssub.add_parser("list", help="snapshots on the persistence partition")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_snapshot_list)
    p = ssub.add_parser("restore", help="replace the delta with a snapshot at the next boot")
    p.add_argument("name", help="snapshot name, or the path of an archive made with --to")
    p.set_defaults(func=cmd_snapshot_restore)
    p = ssub.add_parser("delete", help="delete a snapshot")
    p.add_argument("name")
    p.set_defaults(func=cmd_snapshot_delete)

    p = sub.add_parser("reset", help="factory reset: discard the delta at the next boot (asks first)")
    p.add_argument("--yes", action="store_true", help="do not ask (needed without a terminal)")
    p.add_argument("--delete-snapshots", action="store_true", help="delete the snapshots too")
    p.set_defaults(func=cmd_reset)
    p = sub.add_parser("cancel", help="withdraw a pending restore or reset")
    p.set_defaults(func=cmd_cancel)
    p = sub.add_parser("install", help="copy this system to another disk (erases it) that then boots on its own")
    p.add_argument("device", type=Path, help="the whole disk, e.g. /dev/sdb")
    p.add_argument("--with-delta", action="store_true", help="carry the current delta (every change) over")
    p.add_argument("--yes", action="store_true", help="do not ask (needed without a terminal)")
    p.set_defaults(func=cmd_install)
    p = sub.add_parser("commit", help="RAM modes: keep the changes made in RAM (or PATHs of them) from the next "
                                      "boot on")
    p.add_argument("paths", nargs="*", metavar="PATH", help="commit only these paths (default: everything)")
    p.set_defaults(func=cmd_commit)
    m = sub.add_parser("mode", help="boot modes: show, set the default, persistent paths")
    m.set_defaults(func=cmd_mode_show, json=False)
    msub = m.add_subparsers(dest="mode_command")
    p = msub.add_parser("show", help="the running mode, the default and the persistent paths")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_mode_show)
    p = msub.add_parser("set", help="the mode of the next boots")
    p.add_argument("mode", choices=layout.MODES)
    p.set_defaults(func=cmd_mode_set)
    p = msub.add_parser("paths", help="this device's persistent paths for ram-paths mode")
    p.add_argument("--add", action="append", metavar="PATH", help="keep this directory on the card")
    p.add_argument("--remove", action="append", metavar="PATH", help="no longer keep it on the card")
    p.set_defaults(func=cmd_mode_paths)
    p = sub.add_parser("resize", help="grow the persistence partition to the end of the disk")
    p.add_argument("--auto", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_resize)
    p = sub.add_parser("apt-recover", help="after a power cut: remove apt's cached downloads, lists that do not "
                                           "match their release and an unreadable extended_states (run by "
                                           "liveng-apt-recover.service)")
    p.set_defaults(func=cmd_apt_recover)
    p = sub.add_parser("prepare-shutdown", help="make this shutdown end in RAM, so the persistence is unmounted "
                                                "cleanly (run by liveng-shutdown.service)")
    p.set_defaults(func=cmd_prepare_shutdown)

    st = sub.add_parser("settings", help="the settings on the boot partition (liveng-settings.toml, Raspberry Pi "
                                         "Imager's rpi-preseed.toml or cloud-init files) and a NoCloud seed disk")
    stsub = st.add_subparsers(dest="settings_command", required=True)
    p = stsub.add_parser("apply", help="apply them if they changed (run at every boot by liveng-settings.service)")
    p.add_argument("--force", action="store_true", help="apply them even if they have not changed")
    p.set_defaults(func=cmd_settings_apply)
    p = stsub.add_parser("check", help="check the settings on the boot partition and a seed disk (or FILE, a "
                         "liveng-settings.toml) against this system; apply nothing")
    p.add_argument("file", nargs="?", type=Path)
    p.set_defaults(func=cmd_settings_check)

    k = sub.add_parser("kernel", help="kernel slots: status, install, mark-good, rollback")
    ksub = k.add_subparsers(dest="kernel_command", required=True)
    p = ksub.add_parser("status", help="slots, versions, boot order, tries, last good boot")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_kernel_status)
    p = ksub.add_parser("install", help="write an installed kernel to the inactive slot and boot it next")
    p.add_argument("version", help="kernel version, as in /boot/vmlinuz-VERSION")
    p.add_argument("--initrd", type=Path, help="initramfs to use (default /boot/initrd.img-VERSION)")
    p.add_argument("--force", action="store_true", help="write a slot even if the next boot has this kernel")
    p.add_argument("--from-hook", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_kernel_install)
    p = ksub.add_parser("mark-good", help="confirm this boot (run by liveng-boot-ok.service)")
    p.set_defaults(func=cmd_kernel_mark_good)
    p = ksub.add_parser("rollback", help="boot the kernel in the other slot next")
    p.set_defaults(func=cmd_kernel_rollback)
    updatecmd.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except DeviceError as exc:
        print(f"liveng: error: {exc}", file=sys.stderr)
        return 1
    except PermissionError as exc:
        print(f"liveng: error: {exc}: run liveng as root", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"liveng: error:{where}: {exc.strerror or exc}: check that the card is in and healthy (dmesg), "
              "then run the command again", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
