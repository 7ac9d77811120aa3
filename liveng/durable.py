"""Making a rename or a new file survive a power cut: the directory that holds it synced too.

Standard library only: shared by the host (flash, shipped images) and the device (boot state,
delta requests, settings).
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
