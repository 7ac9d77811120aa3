"""Build progress: mmdebstrap's phases and package counts, step times kept for the next build, and the
runner handing a command's stderr over line by line while it runs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from liveng.host import progress
from liveng.host.errors import CommandError
from liveng.host.runner import run


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_phases_and_package_counts() -> None:
    clock = Clock()
    feed = progress.Mmdebstrap(every=20, clock=clock)
    collect = Collect()
    logger = logging.getLogger("liveng.progress")
    logger.addHandler(collect)
    old_level = logger.level
    logger.setLevel(logging.INFO)  # the CLI's logging set-up, run by other tests, must not matter here
    clock.now = 5
    feed("I: downloading packages with apt...")
    feed("0 upgraded, 40 newly installed, 0 to remove and 0 not upgraded.")
    feed("I: installing remaining packages inside the chroot...")  # apt counted them in the phase before
    for i in range(40):
        clock.now = 10 + i  # one package a second: reported every 20 s, not for each
        feed(f"Setting up pkg{i} (1.0) ...")
    logger.removeHandler(collect)
    logger.setLevel(old_level)
    messages = collect.messages
    assert messages[0] == "rootfs: downloading packages with apt (5 s in)"
    assert messages[1] == "rootfs: installing remaining packages inside the chroot (5 s in)"
    counts = messages[2:]
    assert counts == ["rootfs: installing remaining packages inside the chroot: 16 of 40 packages set up (25 s in)",
                      "rootfs: installing remaining packages inside the chroot: 36 of 40 packages set up (45 s in)"]


def test_step_times_survive_and_tolerate_damage(tmp_path: Path) -> None:
    times = progress.StepTimes(tmp_path, "rpi")
    assert times.last("squashfs") is None
    times.record("squashfs", 51.26)
    again = progress.StepTimes(tmp_path, "rpi")
    assert again.last("squashfs") == 51.3
    assert progress.StepTimes(tmp_path, "pc").last("squashfs") is None
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    (tmp_path / progress.STEP_TIMES).write_text("{not json")
    damaged = progress.StepTimes(tmp_path, "rpi")
    assert damaged.last("squashfs") is None
    damaged.record("squashfs", 3)  # a damaged file is replaced, not a reason to fail a build
    assert progress.StepTimes(tmp_path, "rpi").last("squashfs") == 3


def test_duration_text() -> None:
    assert progress.duration(42.4) == "42 s"
    assert progress.duration(365) == "6 min 5 s"


def test_runner_streams_stderr_and_keeps_it_for_errors() -> None:
    seen: list[str] = []
    proc = run(["sh", "-c", "echo one >&2; echo two >&2"], progress=seen.append)
    assert seen == ["one", "two"] and proc.stderr == b"one\ntwo\n"
    with pytest.raises(CommandError) as err:
        run(["sh", "-c", "echo broken >&2; exit 3"], progress=seen.append)
    assert err.value.returncode == 3 and "broken" in str(err.value)
    assert run(["sh", "-c", "exit 4"], progress=seen.append, check=False).returncode == 4
