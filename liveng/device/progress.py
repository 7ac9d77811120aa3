"""Progress of long device operations (a download, a hash over a system) on the console."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from liveng import layout

# (bytes done, total bytes or None while unknown); the last call of a success has done == total.
Progress = Callable[[int, int | None], None]

PROGRESS_INTERVAL = 0.25


class ConsoleProgress:
    """Progress on stderr: one line redrawn on a terminal; otherwise (a log) only a line at the start
    and one at the end. download and check_system label it for each operation (begin)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.begin("")

    def begin(self, verb: str) -> None:
        self.verb, self.started, self.ended = verb, False, False

    def __call__(self, done: int, total: int | None) -> None:
        if self.ended:
            return
        stream = self.stream or sys.stderr  # looked up late: whatever stderr is when it prints
        end = total is not None and done >= total
        mib = f"{done // layout.MiB}/{total // layout.MiB} MiB" if total is not None else f"{done // layout.MiB} MiB"
        line = " ".join(filter(None, ("liveng:", self.verb, f"{100 * done // total}%" if total else "", f"({mib})")))
        if stream.isatty():
            stream.write("\r" + line + ("\n" if end else ""))
        elif not self.started or end:
            stream.write(line + "\n")
        self.started, self.ended = True, end
        stream.flush()

    def close(self) -> None:
        """Ends a redrawn line an error cut short, so that the error starts a line of its own."""
        if self.started and not self.ended and (self.stream or sys.stderr).isatty():
            (self.stream or sys.stderr).write("\n")
        self.ended = True


print_progress = ConsoleProgress()  # the default progress


class Throttled:
    """Hands progress on a few times a second, and always the final call."""

    def __init__(self, progress: Progress | None, verb: str) -> None:
        self.progress, self.last = progress or print_progress, float("-inf")
        if isinstance(self.progress, ConsoleProgress):
            self.progress.begin(verb)

    def __enter__(self) -> Throttled:
        return self

    def __exit__(self, *exc: object) -> None:
        if isinstance(self.progress, ConsoleProgress):
            self.progress.close()

    def __call__(self, done: int, total: int | None, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            self.progress(done, total)
