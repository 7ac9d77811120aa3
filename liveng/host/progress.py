"""What a long build step is doing: mmdebstrap's phases and package counts, and how long each step
took the last time, so that nobody stares at "[1/8] rootfs ..." for six silent minutes."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("liveng.progress")

STEP_TIMES = "step-times.json"  # in the build cache directory
_NEWLY = re.compile(r"\b(\d+) newly installed\b")


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


class Mmdebstrap:
    """Fed mmdebstrap's stderr (``--verbose``) line by line; logs its phases ("I: ..." lines) and, while
    dpkg sets packages up, how many are done (of how many, once apt has said) at most every ``every``
    seconds. ``clock`` is for tests."""

    def __init__(self, every: float = 20, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self.start = clock()
        self.phase = ""
        self.total: int | None = None
        self.done = 0
        self.last_report = self.start

    def __call__(self, line: str) -> None:
        now = self.clock()
        if line.startswith("I: "):
            self.phase = line[3:].strip().rstrip(".")
            # The count of the packages apt downloads in one phase is the count dpkg sets up in the next.
            self.done = 0
            log.info("rootfs: %s (%s in)", self.phase, duration(now - self.start))
            self.last_report = now
            return
        if match := _NEWLY.search(line):
            self.total = int(match.group(1))
            return
        if line.startswith("Setting up "):
            self.done += 1
            if now - self.last_report >= self.every:
                of = f" of {self.total}" if self.total else ""
                log.info("rootfs: %s: %d%s packages set up (%s in)", self.phase or "dpkg", self.done, of,
                         duration(now - self.start))
                self.last_report = now


class StepTimes:
    """The duration of each build step the last time it ran for a target, kept in the cache directory."""

    def __init__(self, cache_dir: Path, target: str) -> None:
        self.path = cache_dir / STEP_TIMES
        self.target = target
        try:
            data = json.loads(self.path.read_text())
            self.times: dict[str, dict[str, float]] = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            self.times = {}

    def last(self, step: str) -> float | None:
        value = self.times.get(self.target, {}).get(step)
        return float(value) if isinstance(value, (int, float)) else None

    def record(self, step: str, seconds: float) -> None:
        entry = self.times.get(self.target)
        if not isinstance(entry, dict):
            entry = self.times[self.target] = {}
        entry[step] = round(seconds, 1)
        # A write that a crash or a second build cannot leave half-done: a temporary name, then rename.
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.times, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.path)
        except OSError as err:  # only a hint for the next build: never fail this one over it
            log.debug("step times not saved: %s", err)
