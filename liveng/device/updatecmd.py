"""The `liveng update` commands (check, apply, status); the work is in liveng/device/update.py."""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any


def _update() -> Any:
    # Imported when used: the other commands (three of them run at every boot) do not pay for it.
    return importlib.import_module("liveng.device.update")


def cmd_check(args: argparse.Namespace) -> int:
    print(f"liveng: {_update().check(args.url)}")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    print(f"liveng: {_update().apply(args.source, allow_downgrade=args.allow_downgrade)}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = importlib.import_module("liveng.device.updatestatus")
    report = status.status_dict()
    print(json.dumps(report, indent=1) if args.json else "\n".join(status.status_lines(report)))
    return 0


def register(sub: Any) -> None:
    u = sub.add_parser("update", help="whole-system updates from signed bundles: check, apply, status")
    usub = u.add_subparsers(dest="update_command", required=True)
    p = usub.add_parser("check", help="ask the channel (URL, or the recipe's) whether a newer system exists")
    p.add_argument("url", nargs="?")
    p.set_defaults(func=cmd_check)
    p = usub.add_parser("apply", help="install a signed bundle (channel URL, bundle URL or file) and boot it next")
    p.add_argument("source", nargs="?", help="a channel URL, a bundle URL or a bundle file (default: the channel)")
    p.add_argument("--allow-downgrade", action="store_true", help="install a version that is not newer")
    p.set_defaults(func=cmd_apply)
    p = usub.add_parser("status", help="the running system, the installed ones and their deltas")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
