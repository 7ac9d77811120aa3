"""liveng's initramfs scripts take layout.py's paths and arguments from the file the image build
writes (rootfs.initramfs_functions: layout.initramfs_constants() + the shared command line parser)
and retype none of them."""

from __future__ import annotations

import subprocess
from importlib import resources
from pathlib import Path

import pytest

from liveng import bootargs, layout
from liveng.host import luks, rootfs

DATA = Path(str(resources.files("liveng.device").joinpath("data/initramfs")))
SCRIPTS = sorted(p for p in DATA.glob("*/*") if p.parent.name != "lib")
# What the scripts used to retype: each now comes from layout.py.
RETYPED = ("liveng/pending", "liveng/switch", "rw.new", "rw.next", "rw.old", "rw.reset", "liveng/persistent-paths",
           "liveng/paths-work", "/dev/disk/by-partuuid", "-07", "-02", "persistence.key", "liveng.id=",
           "liveng.mode=", "liveng.paths=", "liveng.reset=", "/run/live/liveng-persistence",
           "/usr/lib/liveng/tar")


def shell(functions: Path, code: str, cmdline: str = "") -> str:
    (functions.parent / "cmdline").write_text(cmdline + "\n")
    proc = subprocess.run(["sh", "-c", f'. "{functions}"; {code}'], capture_output=True, text=True, check=True)
    return proc.stdout


@pytest.fixture()
def functions(tmp_path: Path) -> Path:
    path = tmp_path / "liveng-functions"
    path.write_bytes(rootfs.initramfs_functions())
    return path


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_scripts_retype_no_layout_value(script: Path) -> None:
    code = "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))
    assert not [v for v in RETYPED if v in code]


def test_the_constants_are_layouts(functions: Path) -> None:
    out = shell(functions, 'printf "%s\\n" "$LIVENG_PENDING_PATH" "$LIVENG_SWITCH_PATH" "$LIVENG_STAGED_DIR" '
                '"$LIVENG_OLD_DELTA_DIR" "$LIVENG_RESET_DELTA_DIR" "$LIVENG_DELTA_DIR" "$LIVENG_KEY_FILE" '
                '"$LIVENG_TAR"')
    assert out.splitlines() == [layout.PENDING_PATH, layout.SWITCH_PATH, layout.STAGED_DIR, layout.OLD_DELTA_DIR,
                                layout.RESET_DELTA_DIR, layout.DELTA_DIR, f"/{luks.KEY_FILE_PATH}",
                                f"/{layout.INITRAMFS_TAR_PATH}"]


def test_the_command_line_parser(functions: Path) -> None:
    cmdline = bootargs.kernel_cmdline("12ab34cd", (bootargs.mode_args("12ab34cd", layout.MODE_RAM_PATHS, "50%",
                                                                  ("/srv/a", "/var/b")), "liveng.reset=yes"))
    out = shell(functions, f'liveng_cmdline "{functions.parent}/cmdline"; printf "%s\\n" "$LIVENG_ID" '
                '"$LIVENG_MODE" "$LIVENG_PATHS" "$LIVENG_RESET" "$LIVENG_SYSTEM_DEV" "$LIVENG_PERSISTENCE_DEV"',
                cmdline)
    assert out.splitlines() == ["12ab34cd", layout.MODE_RAM_PATHS, "/srv/a,/var/b", "yes",
                                layout.partuuid_path("12ab34cd", layout.Role.SYSTEM),
                                layout.partuuid_path("12ab34cd", layout.Role.PERSISTENCE)]
    bad = shell(functions, f'liveng_cmdline "{functions.parent}/cmdline"; echo "[$LIVENG_ID]"',
                "boot=live liveng.id=../../x")
    assert bad == "[]\n"


def test_the_file_is_in_the_rootfs_overlay() -> None:
    assert rootfs.initramfs_overlay()[rootfs.FUNCTIONS_PATH] == rootfs.initramfs_functions()


def test_every_script_and_hook_is_in_the_rootfs_overlay() -> None:
    overlay = rootfs.initramfs_overlay()
    for script in SCRIPTS:
        where = "hooks" if script.parent.name == "hooks" else f"scripts/{script.parent.name}"
        assert overlay.get(f"etc/initramfs-tools/{where}/{script.name}") == script.read_bytes(), script
