"""Reading a file the user names, with a size cap: /dev/zero or a FIFO must not eat the memory or hang.

Standard library only: the device tool uses it too.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

SETTINGS_CAP = 1024 * 1024  # a settings file or a recipe is a few KiB


class ReadError(ValueError):
    """The file is not a regular file, too large or unreadable; the message names it and says why."""

    def __init__(self, path: Path, reason: str, missing: bool = False) -> None:
        super().__init__(f"{path}: {reason}")
        self.reason = reason
        self.missing = missing


def read_regular(path: Path, cap: int) -> bytes:
    """At most ``cap`` bytes of a regular file (symbolic links followed); anything else is refused."""
    try:
        # O_NONBLOCK: opening a FIFO does not wait for a writer; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ReadError(path, f"cannot be read: {exc.strerror or exc}", isinstance(exc, FileNotFoundError)) from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ReadError(path, "not a regular file: name a plain file")
        try:
            data = f.read(cap + 1)
        except OSError as exc:
            raise ReadError(path, f"cannot be read: {exc.strerror or exc}") from None
    if len(data) > cap:
        raise ReadError(path, f"larger than {cap} bytes, more than such a file can be")
    return data
