"""Making a rename or a new file survive a power cut: the directory that holds it synced too.

Standard library only: shared by the host (flash, shipped images) and the device (boot state,
delta requests, settings).
"""

from __future__ import annotations

import os
from pathlib import Path

# p7's ext4 default mount options (tune2fs -o, kept in its superblock, so live-boot's mount and
# every other take them). Programs that replace a file by renaming a new one over it without fsync
# (depmod's module indexes, many daemons' state) rely on ext4 writing the data before the rename
# commits; with delayed allocation ext4 does that only for a rename over a file of the same
# filesystem, and in the delta the first such rename after flashing replaces the squashfs's file.
# Any fsync (dpkg makes many) then commits the rename while the data is still unallocated, and a
# power cut leaves the file empty (campaign arm64 seed 473855384: no module loaded at any later
# boot). Allocating at write time lets data=ordered write the data before that commit.
PERSISTENCE_MOUNT_DEFAULTS = "nodelalloc"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
