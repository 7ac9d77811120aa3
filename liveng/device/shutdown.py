"""A clean end to every power-off: the small root in RAM that systemd returns to.

The persistence partition is the upper layer of the root overlay, so systemd-shutdown cannot
unmount it and leaves it read-write ("Unable to finalize remaining file systems"): every ordinary
power-off left p7 needing journal recovery at the next boot. systemd's own answer is the initrd
interface: when /run/initramfs/shutdown exists, systemd-shutdown switches root to /run/initramfs
(the old root at /oldroot) and executes it. Debian's initramfs-tools does not provide one; this
module does, with the image's busybox and the libraries it needs. It runs from the ExecStop of
liveng-shutdown.service, so the copies cost RAM only while the system goes down.
"""

from __future__ import annotations

import os
import re
import shutil
from importlib import resources
from pathlib import Path

from liveng.device.runner import DeviceError, run

RAM_ROOT = Path("/run/initramfs")
BUSYBOX = Path("/usr/bin/busybox")
SCRIPT = "data/shutdown/liveng-shutdown"
# Mount points the shutdown script and systemd's switch of root expect in the RAM root.
DIRECTORIES = ("bin", "dev", "proc", "sys", "oldroot")

# ldd's lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
_LDD_PATH = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")


def libraries(ldd_output: str) -> list[Path]:
    """The shared objects (loader included) a binary needs, from ldd's output."""
    return [Path(m.group(1)) for m in map(_LDD_PATH.search, ldd_output.splitlines()) if m]


def prepare(ram_root: Path = RAM_ROOT, busybox: Path = BUSYBOX) -> str:
    """Make ``ram_root`` a root systemd-shutdown can return to; a line saying what was done."""
    final = ram_root / "shutdown"
    if final.exists():
        return f"{final} exists (not liveng's): left as it is"
    if not busybox.is_file():
        raise DeviceError(f"{busybox} is missing: install busybox so that power-off unmounts the persistence cleanly")
    ram_root.mkdir(mode=0o755, exist_ok=True)
    if os.statvfs(ram_root).f_flag & os.ST_NOEXEC:
        # initramfs-tools mounts /run noexec, and systemd-shutdown only returns to a root whose
        # shutdown it may execute: a tmpfs of its own (it hides initramfs-tools' boot logs there, which
        # nothing reads at shutdown).
        run(["mount", "-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "liveng-shutdown", str(ram_root)])
    for name in DIRECTORIES:
        (ram_root / name).mkdir(mode=0o755, exist_ok=True)
    shutil.copyfile(busybox, ram_root / "bin/busybox")
    os.chmod(ram_root / "bin/busybox", 0o755)
    for lib in libraries(run(["ldd", str(busybox)])):
        dest = ram_root / lib.relative_to("/")
        dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.copyfile(lib, dest)
        os.chmod(dest, 0o755)
    # The script last, by rename: systemd uses the RAM root only once it is complete.
    tmp = ram_root / ".shutdown.tmp"
    tmp.write_bytes(resources.files("liveng.device").joinpath(SCRIPT).read_bytes())
    os.chmod(tmp, 0o755)
    os.replace(tmp, final)
    return f"{ram_root} ready: the persistence is unmounted at the end of this shutdown"
