"""The liveng command on the device."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from liveng.device import kernel, system, verify
from liveng.device.bootstate import DeviceError


def cmd_status(args: argparse.Namespace) -> int:
    st = system.status()
    if args.json:
        print(json.dumps(asdict(st), indent=1))
        return 0
    print(f"image id:     {st.image_id or 'unknown (not booted by liveng GRUB)'}")
    print(f"booted from:  {st.boot_entry or 'unknown'}")
    print(f"kernel:       {st.kernel}")
    print(f"root:         {st.root_fstype}")
    print(f"system layer: {', '.join(st.lower) or '-'}")
    print(f"delta layer:  {st.upper or '-'} on {st.persistence_device or 'RAM'}")
    return 0


def cmd_kernel_status(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(kernel.status_dict(), indent=1))
    else:
        print("\n".join(kernel.status_lines()))
    return 0


def cmd_kernel_install(args: argparse.Namespace) -> int:
    try:
        result = kernel.install(args.version, args.initrd, force=args.force)
    except DeviceError as exc:
        if args.from_hook:
            # A package operation must not fail because of the slot: say it loudly, exit 0.
            print(f"liveng: kernel {args.version} was NOT written to a kernel slot: {exc}", file=sys.stderr)
            print("liveng: the running kernel and the factory kernel still boot; retry with "
                  f"'liveng kernel install {args.version}'", file=sys.stderr)
            return 0
        raise
    print(f"liveng: {result.message}", file=sys.stderr if args.from_hook else sys.stdout)
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
    for problem in report.problems:
        print(f"liveng: FAILED {problem}")
    if report.ok:
        print(f"liveng: verify OK: {report.checked} files match the build's SHA-256 manifests")
        return 0
    print(f"liveng: verify FAILED: {len(report.problems)} problem(s) in {report.checked} files checked")
    return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="liveng", description="liveng device tool")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("status", help="show this system's layout and boot state")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("verify", help="check the system partition and kernel slots against their manifests")
    p.set_defaults(func=cmd_verify)

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except DeviceError as exc:
        print(f"liveng: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
