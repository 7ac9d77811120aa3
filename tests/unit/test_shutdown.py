"""The RAM root systemd-shutdown returns to (item 12 of the reliability issue: a clean power-off
left p7 needing journal recovery). Its boot half is in tests/boot (p7 clean after a power-off)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from liveng.device import shutdown
from liveng.device.runner import DeviceError

LDD_ARM64 = """\tlinux-vdso.so.1 (0x0000ffff8d5d2000)
\tlibresolv.so.2 => /lib/aarch64-linux-gnu/libresolv.so.2 (0x0000ffff8d560000)
\tlibc.so.6 => /lib/aarch64-linux-gnu/libc.so.6 (0x0000ffff8d3b0000)
\t/lib/ld-linux-aarch64.so.1 (0x0000ffff8d595000)
"""


def test_ldd_output_gives_every_library_and_the_loader_but_not_the_vdso() -> None:
    assert shutdown.libraries(LDD_ARM64) == [Path("/lib/aarch64-linux-gnu/libresolv.so.2"),
                                             Path("/lib/aarch64-linux-gnu/libc.so.6"),
                                             Path("/lib/ld-linux-aarch64.so.1")]


def test_prepared_root_has_the_binary_its_libraries_and_the_script(tmp_path: Path) -> None:
    binary = Path(shutil.which("true") or "/bin/true")
    root = tmp_path / "initramfs"
    message = shutdown.prepare(root, binary)
    assert "ready" in message
    assert (root / "bin/busybox").read_bytes() == binary.read_bytes()
    script = root / "shutdown"
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/bin/busybox sh\n")
    for name in shutdown.DIRECTORIES:
        assert (root / name).is_dir()
    libs = list(root.glob("lib*/**/libc.so.6")) + list(root.glob("usr/lib*/**/libc.so.6"))
    assert libs, "libc was not copied"
    assert not (root / ".shutdown.tmp").exists()


def test_someone_elses_shutdown_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "shutdown").write_text("#!/bin/sh\n")
    assert "left as it is" in shutdown.prepare(tmp_path, Path("/nonexistent/busybox"))
    assert (tmp_path / "shutdown").read_text() == "#!/bin/sh\n"
    assert not (tmp_path / "bin").exists()


def test_without_busybox_the_error_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="install busybox"):
        shutdown.prepare(tmp_path / "r", tmp_path / "busybox")
    assert not (tmp_path / "r" / "shutdown").exists()


def test_the_script_ends_every_path_in_the_reboot_call() -> None:
    """PID 1 must not exit: the kernel would panic instead of powering off."""
    text = (Path(shutdown.__file__).parent / shutdown.SCRIPT).read_text()
    assert text.rstrip().endswith("done")
    assert "while :; do" in text and "umount -l /oldroot" in text
