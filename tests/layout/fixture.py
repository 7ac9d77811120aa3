"""A tiny rootfs tarball that stands in for mmdebstrap's output in offline layout tests."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

from liveng.host import rootfs
from liveng.host.bootloader import signed
from tests.efi_fixture import TRIXIE_SIGNED_MODULES, grub_efi

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


def boot_assets(where: Path) -> dict[str, Path]:
    """.debs standing in for the PC's boot packages (targets.PC.boot_assets): shim and MokManager as bare
    PE headers, the signed GRUB with the module list of Debian's (the build checks the menu against it)."""
    contents = {signed.SHIM: b"MZ shim", signed.MOK_MANAGER: b"MZ mokmanager",
                signed.GRUB: grub_efi(TRIXIE_SIGNED_MODULES)}
    debs = {}
    for (package, rel, _name), data in contents.items():
        root = where / package
        (root / "DEBIAN").mkdir(parents=True)
        (root / "DEBIAN/control").write_text(f"Package: {package}\nVersion: 1\nArchitecture: amd64\n"
                                             "Maintainer: liveng tests <tests@liveng.invalid>\nDescription: stand-in\n")
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_bytes(data)
        debs[package] = where / f"{package}_1_amd64.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "--build", root, debs[package]], check=True,
                       capture_output=True)
    return debs


def make(path: Path) -> Path:
    """Write the tarball; the kernel and initrd are random bytes (the layout test never boots)."""
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(path, "w") as tar:
        for deb in boot_assets(Path(tmp)).values():
            tar.add(deb, arcname=f"./{rootfs.ASSETS_DIR}/{deb.name}")

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
