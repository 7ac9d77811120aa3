"""The one way the device tool runs a command: output captured, failures as DeviceError."""

from __future__ import annotations

import subprocess
import tempfile
from typing import IO


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


def pipeline(first: list[str], second: list[str], stdin: IO[bytes] | None, stdout: IO[bytes] | int) -> tuple[
        int, str, int, str]:
    """first | second, the data never passing through Python; returns both exit codes and stderrs."""
    with tempfile.TemporaryFile() as err1, tempfile.TemporaryFile() as err2:
        p1 = subprocess.Popen(first, stdin=stdin or subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err1)
        p2 = subprocess.Popen(second, stdin=p1.stdout, stdout=stdout, stderr=err2)
        assert p1.stdout is not None
        p1.stdout.close()  # p2 holds the pipe; p1 gets SIGPIPE if p2 dies
        rc2 = p2.wait()
        rc1 = p1.wait()
        err1.seek(0)
        err2.seek(0)
        return rc1, err1.read().decode(errors="replace").strip(), rc2, err2.read().decode(errors="replace").strip()
