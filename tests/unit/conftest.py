"""Fixtures the unit tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

# The initramfs scripts' file operations, wrapped to simulate a power cut or a failure at each one
# (tests/unit/test_delta_switch.py, test_system_switch.py): each wrapped command counts itself; at
# CRASH_AT it kills the script (the power goes) instead of running; at FAIL_AT it fails without doing
# anything (an I/O error, a full disk).
WRAPPED = ("mv", "rm", "mkdir", "sync", "chmod", "chown")
WRAPPER = """#!/bin/sh
n=$(cat "$COUNTER"); n=$((n + 1)); echo "$n" >"$COUNTER"
if [ "$n" -ge "$CRASH_AT" ]; then kill -9 "$PPID"; exit 1; fi
if [ "$n" -eq "${{FAIL_AT:-0}}" ]; then echo "{name}: injected failure" >&2; : >"$COUNTER.failed"; exit 1; fi
exec /bin/{name} "$@"
"""


@pytest.fixture()
def bin_dir(tmp_path: Path) -> Path:
    """A directory of the wrapped commands, put first in the scripts' PATH."""
    d = tmp_path / "bin"
    d.mkdir()
    for name in WRAPPED:
        (d / name).write_text(WRAPPER.format(name=name))
        (d / name).chmod(0o755)
    return d
