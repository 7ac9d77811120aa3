"""The liveng command on the device."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from liveng.device import system


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="liveng", description="liveng device tool")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("status", help="show this system's layout and boot state")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
