"""The one way the device tool runs a command: output captured, failures as DeviceError."""

from __future__ import annotations

import subprocess


class DeviceError(Exception):
    """A device command could not do its work; the message says why and what to do."""


def run(argv: list[str], input: str | None = None) -> str:
    """Run ``argv``; its stdout, or DeviceError naming the command and its stderr."""
    try:
        proc = subprocess.run(argv, input=input, stdin=None if input is not None else subprocess.DEVNULL,
                              capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise DeviceError(f"{argv[0]} is not installed: this image lacks a package liveng needs") from None
    if proc.returncode != 0:
        raise DeviceError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def returncode(argv: list[str]) -> int:
    """Run ``argv`` with its output going where ours goes (a health check); its exit status."""
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, check=False).returncode
    except OSError as exc:
        raise DeviceError(f"{argv[0]} cannot run: {exc.strerror}") from None
