"""A tiny rootfs tarball that stands in for mmdebstrap's output in offline layout tests."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

KERNEL = "6.1.0-liveng-test"

_UNIT = "[Unit]\nDescription={0}\n\n[Service]\nExecStart=/bin/true\n\n[Install]\nWantedBy=multi-user.target\n"

FILES: dict[str, bytes] = {
    "etc/passwd": b"root:x:0:0:root:/root:/bin/bash\n",
    "etc/group": b"root:x:0:\nsudo:x:27:\n",
    "etc/shadow": b"root:*:20000:0:99999:7:::\n",
    "etc/gshadow": b"root:*::\nsudo:*::\n",
    "etc/hostname": b"builder\n",
    "etc/apt/sources.list": b"deb http://old.example/debian trixie main\n",
    "etc/machine-id": b"0123456789abcdef0123456789abcdef\n",
    "etc/ssh/ssh_host_ed25519_key": b"secret\n",
    "usr/lib/systemd/system/systemd-networkd.service": _UNIT.format("networkd").encode(),
    "usr/lib/systemd/system/systemd-resolved.service": _UNIT.format("resolved").encode(),
    "usr/lib/systemd/system/ssh.service": _UNIT.format("ssh").encode(),
    "usr/sbin/sshd": b"",
    "usr/lib/systemd/system/wpa_supplicant@.service": _UNIT.format("wpa").encode(),
    "usr/lib/systemd/system-generators/systemd-ssh-generator": b"",
    "usr/share/zoneinfo/Europe/Berlin": b"TZif2",
    "var/lib/apt/lists/deb.example_dists_trixie_InRelease": b"x" * 100,
}


def make(path: Path) -> Path:
    """Write the tarball; the kernel and initrd are random bytes (the layout test never boots)."""
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))

        for d in ("boot", "root", "tmp", "home", "var/lib/dbus", "usr/sbin", "etc/systemd/system"):
            info = tarfile.TarInfo("./" + d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for name, data in FILES.items():
            add(name, data, 0o640 if "shadow" in name else 0o644)
        add(f"boot/vmlinuz-{KERNEL}", os.urandom(3 << 20))
        add(f"boot/initrd.img-{KERNEL}", os.urandom(5 << 20))
        link = tarfile.TarInfo("./vmlinuz")
        link.type = tarfile.SYMTYPE
        link.linkname = f"boot/vmlinuz-{KERNEL}"
        tar.addfile(link)
    return path
