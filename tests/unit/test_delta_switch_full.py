"""The initramfs switch (live-premount/liveng-delta) on a REAL full or inode-exhausted p7 stand-in
(a small tmpfs or ext4 on a loop device), and with one step failing at a time: no kept file is
ever lost, the delta is the old one or the new one whole, the cause is named, "done" only when done,
and a later boot (room freed) completes."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from liveng import layout
from liveng.requests import Request
from tests.unit.test_delta_switch import make_p7, run_output

KEEP = "/srv/keep,/var/lib/app"
LEFTOVERS = (layout.SWITCH_PATH, layout.PENDING_PATH, layout.STAGED_DIR, layout.OLD_DELTA_DIR,
             layout.RESET_DELTA_DIR)

SCENARIOS = {
    "restore": (Request(action=layout.ACTION_RESTORE, snapshot="s1", created="2026-01-01T00:00:00Z"), "", "new"),
    "reset-request": (Request(action=layout.ACTION_RESET, delete_snapshots=True), "", "empty"),
    "menu-reset": (None, "liveng.reset=yes", "empty"),
    "menu-reset-fresh": (None, "liveng.reset=yes", "empty"),  # no liveng/ directory on p7 yet
    "menu-reset-over-restore": (Request(action=layout.ACTION_RESTORE, snapshot="s1"), "liveng.reset=yes", "empty"),
    "commit-keep": (Request(action=layout.ACTION_COMMIT, created="2026-01-01T00:00:00Z", keep=KEEP), "", "new"),
}


@pytest.fixture(params=["tmpfs", "ext4"])
def stand_in(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """tmp_path/p7 as a small filesystem of its own; yields (root, kind)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a stand-in p7 needs root")
    p7 = tmp_path / "p7"
    p7.mkdir()
    if request.param == "tmpfs":
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,nr_inodes=200", "none", str(p7)], check=True)
    else:
        image = tmp_path / "p7.img"
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-N", "200", "-O", "^has_journal", str(image), "4M"],
                       check=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(p7)], check=True)
    try:
        yield tmp_path, request.param
    finally:
        subprocess.run(["umount", str(p7)], check=True)


def fill(path: Path, what: str) -> None:
    """Use up the filesystem's room (one big file) or its inodes (empty files), as the user's files."""
    path.mkdir(parents=True)
    if what == "space":
        with open(path / "big", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        try:  # the last partial block
            while True:
                with open(path / "big", "ab") as f:
                    f.write(b"\0" * 1024)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    n = 0
    try:  # inodes: all of them; room: what is left of the last blocks (tmpfs: a few inodes)
        while n < (10**6 if what == "inodes" else 16):
            (path / f"f{n}").touch() if what == "inodes" else (path / f"d{n}").mkdir()
            n += 1
    except OSError as exc:
        assert exc.errno == errno.ENOSPC


def setup(root: Path, scenario: str) -> Path:
    request_, cmdline, _ = SCENARIOS[scenario]
    p7 = make_p7(root, pending=request_, staged=request_ is not None, cmdline=cmdline)
    if request_ and request_.action == layout.ACTION_RESET:
        shutil.rmtree(p7 / layout.STAGED_DIR / "etc")  # a reset stages an empty delta
    if scenario == "menu-reset-fresh":
        shutil.rmtree(p7 / layout.DELTA_STATE_DIR)
    if request_ and request_.keep:
        (p7 / "rw/srv/keep").mkdir(parents=True)
        (p7 / "rw/srv/keep/data").write_text("kept\n")
        # The staged delta has no /srv: the move needs a new directory (an inode, a block).
    return p7


def state(p7: Path, scenario: str) -> str:
    """old, new or empty, each whole; fails on a mix."""
    rw = p7 / "rw"
    if (rw / "etc/only-old").exists():
        assert (rw / "etc/marker").read_text() == "old\n" and (rw / "filler").is_dir()
        return "old"
    assert not (rw / "filler").exists()
    files = sorted(str(p.relative_to(rw)) for p in rw.rglob("*"))
    if files == []:
        return "empty"
    expected = ["etc", "etc/marker"]
    if scenario == "commit-keep":
        expected += ["srv", "srv/keep", "srv/keep/data"]
    assert files == expected and (rw / "etc/marker").read_text() == "new\n", files
    return "new"


def kept_somewhere(p7: Path) -> bool:
    return any((p7 / d / "srv/keep/data").is_file() for d in ("rw", layout.OLD_DELTA_DIR))


def done_message(scenario: str) -> str:
    request_, cmdline, _ = SCENARIOS[scenario]
    return f"liveng: {'factory reset' if cmdline or request_ is None else request_.action} done"


def check_boot(p7: Path, scenario: str, out: str) -> bool:
    """The invariants after one boot; True if the switch is done."""
    expected = SCENARIOS[scenario][2]
    if scenario == "commit-keep":
        assert kept_somewhere(p7), out
    if done_message(scenario) in out:
        assert state(p7, scenario) == expected, out
        assert not any((p7 / p).exists() for p in LEFTOVERS), out
        if scenario == "reset-request":
            assert not (p7 / layout.SNAPSHOT_DIR).exists()
        return True
    # The switch itself names the cause (not only a shell's error message).
    assert any(line.startswith("liveng: ") and ("full" in line or "inodes" in line) for line in out.splitlines()), out
    if not (p7 / layout.SWITCH_PATH).exists():  # not begun or put back: the old delta, whole
        assert state(p7, scenario) == "old", out
    return False


@pytest.mark.parametrize("what", ["space", "inodes"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_full_partition(stand_in: tuple[Path, str], bin_dir: Path, scenario: str, what: str) -> None:
    root, _ = stand_in
    p7 = setup(root, scenario)
    fill(p7 / "rw/filler", what)
    out = run_output(root, bin_dir)
    assert out is not None
    if not check_boot(p7, scenario, out):
        # The owner frees room (deletes the files filling it) and boots again.
        for d in ("rw", layout.OLD_DELTA_DIR):
            shutil.rmtree(p7 / d / "filler", ignore_errors=True)
        (root / "cmdline").write_text("boot=live liveng.id=12ab34cd\n")
        out = run_output(root, bin_dir)
        assert out is not None and check_boot(p7, scenario, out), out


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_one_failing_step(tmp_path: Path, bin_dir: Path, scenario: str) -> None:
    """Each file operation in turn fails (nothing done, non-zero exit): every result is checked."""
    failures = 0
    for fail_at in range(1, 100):
        root = tmp_path / f"run{fail_at}"
        root.mkdir()
        p7 = setup(root, scenario)
        (p7 / "rw/filler").mkdir()
        out = run_output(root, bin_dir, fail_at=fail_at)
        assert out is not None
        if not (root / "counter.failed").exists():  # every operation ran: the end
            assert check_boot(p7, scenario, out)
            break
        failures += 1
        if done_message(scenario) not in out:
            assert "cannot " in out and "liveng: " in out, out  # the failure is reported
        if scenario == "commit-keep":
            assert kept_somewhere(p7), out
        if done_message(scenario) in out:
            assert state(p7, scenario) == SCENARIOS[scenario][2], out
        elif not (p7 / layout.SWITCH_PATH).exists() and not (p7 / layout.RESET_DELTA_DIR).exists():
            assert state(p7, scenario) == "old", out
        # The next boot, without the menu's liveng.reset=yes: a switch begun is finished, a request
        # put back is applied, a menu reset not begun is not done.
        (root / "cmdline").write_text("boot=live liveng.id=12ab34cd\n")
        out = run_output(root, bin_dir)
        assert out is not None
        request_, cmdline, expected = SCENARIOS[scenario]
        final = state(p7, scenario)
        if cmdline:
            assert final in ("old", expected, "new" if request_ else "old"), out
        else:
            assert final == expected, out
        assert not any((p7 / p).exists() for p in LEFTOVERS), out
    assert failures >= 3
