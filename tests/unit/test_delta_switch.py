"""The initramfs switch (live-premount/liveng-delta) on a directory standing in for p7, with a power
cut simulated before every file operation it makes: the next run must end with the old delta or
the new one, whole, and with nothing left over."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest

from liveng import layout
from liveng.device import bootstate, delta
from liveng.host.rootfs import initramfs_functions
from liveng.requests import Request

SCRIPT = Path(str(resources.files("liveng.device").joinpath("data/initramfs/live-premount/liveng-delta")))
def make_p7(root: Path, *, pending: Request | None, staged: bool, cmdline: str = "") -> Path:
    p7 = root / "p7"
    (p7 / "rw/etc").mkdir(parents=True)
    (p7 / "rw/etc/marker").write_text("old\n")
    (p7 / "rw/etc/only-old").write_text("x\n")
    (p7 / "work/work").mkdir(parents=True)
    (p7 / layout.PERSISTENCE_CONF).write_text(layout.PERSISTENCE_CONF_CONTENT)
    (p7 / layout.SNAPSHOT_DIR).mkdir(parents=True)
    (p7 / layout.SNAPSHOT_DIR / "s1.tar.zst").write_bytes(b"snap")
    if staged:
        (p7 / layout.STAGED_DIR / "etc").mkdir(parents=True)
        (p7 / layout.STAGED_DIR / "etc/marker").write_text("new\n")
    if pending:
        (p7 / layout.PENDING_PATH).write_text(pending.text())
    (root / "cmdline").write_text(f"boot=live liveng.id=12ab34cd {cmdline}\n")
    (root / "scripts").mkdir()
    (root / "scripts/liveng-functions").write_bytes(initramfs_functions())  # what the image build writes
    return p7


def run_output(root: Path, bin_dir: Path, crash_at: int = 10**6, fail_at: int = 0) -> str | None:
    """Run the script; its output if it ran to the end, None if cut by a simulated power cut."""
    counter = root / "counter"
    counter.write_text("0")
    env = {**os.environ, "LIVENG_DELTA_TEST_ROOT": str(root), "COUNTER": str(counter), "CRASH_AT": str(crash_at),
           "FAIL_AT": str(fail_at), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return proc.stdout + proc.stderr
    assert proc.returncode == -9, proc.stderr
    return None


def run(root: Path, bin_dir: Path, crash_at: int) -> bool:
    """Run the script; True if it ran to the end (no simulated power cut)."""
    return run_output(root, bin_dir, crash_at) is not None


def delta_state(p7: Path) -> str:
    """old, new or empty; fails on a mix or on leftovers."""
    assert not (p7 / layout.SWITCH_PATH).exists()
    assert not (p7 / layout.PENDING_PATH).exists()
    assert not any((p7 / d).exists() for d in layout.STAGED_DIRS)
    assert not (p7 / layout.OLD_DELTA_DIR).exists()
    assert not (p7 / layout.RESET_DELTA_DIR).exists()
    files = sorted(str(p.relative_to(p7 / "rw")) for p in (p7 / "rw").rglob("*"))
    if files == ["etc", "etc/marker", "etc/only-old"] and (p7 / "rw/etc/marker").read_text() == "old\n":
        assert (p7 / "work/work").is_dir()  # untouched
        return "old"
    assert not (p7 / "work").exists()  # the new delta gets a fresh work dir from live-boot
    if files == []:
        return "empty"
    assert files == ["etc", "etc/marker"] and (p7 / "rw/etc/marker").read_text() == "new\n", files
    return "new"


RESTORE = Request(action=layout.ACTION_RESTORE, snapshot="s1", created="2026-01-01T00:00:00Z")


@pytest.mark.parametrize(("request_", "staged", "cmdline", "expected"), [
    (RESTORE, True, "", "new"),
    (Request(action=layout.ACTION_RESET), True, "", "new"),
    (RESTORE, True, "liveng.reset=yes", "empty"),  # the boot menu's reset wins over a pending restore
    (None, False, "liveng.reset=yes", "empty"),
])
def test_power_cut_before_every_step(tmp_path: Path, bin_dir: Path, request_: Request | None, staged: bool,
                                     cmdline: str, expected: str) -> None:
    if request_ and request_.action == layout.ACTION_RESET:
        staged = True
        expected = "new"
    cuts = 0
    for crash_at in range(1, 100):
        root = tmp_path / f"run{crash_at}"
        root.mkdir()
        p7 = make_p7(root, pending=request_, staged=staged, cmdline=cmdline)
        if request_ and request_.action == layout.ACTION_RESET:
            for p in (p7 / layout.STAGED_DIR).iterdir():  # a reset stages an empty delta
                subprocess.run(["rm", "-rf", str(p)], check=True)
            expected = "empty"
        if run(root, bin_dir, crash_at):
            assert delta_state(p7) == expected
            break
        cuts += 1
        journal = (p7 / layout.SWITCH_PATH).exists()
        # The next boot: the menu entry is not chosen again, so no liveng.reset= on its command line.
        (root / "cmdline").write_text("boot=live liveng.id=12ab34cd\n")
        assert run(root, bin_dir, 10**6)
        state = delta_state(p7)
        if journal or (request_ is not None and not cmdline):
            assert state == expected, f"cut before operation {crash_at}"
        else:
            # Without a journal the reset has not begun (old delta, or the pending restore applied by
            # the next boot) or it has ended.
            assert state in ("old", expected, "new" if request_ else "old"), f"cut before operation {crash_at}"
        assert (p7 / layout.SNAPSHOT_DIR / "s1.tar.zst").exists()
    assert cuts >= 5  # the cuts did land inside the switch


def test_delete_snapshots(tmp_path: Path, bin_dir: Path) -> None:
    p7 = make_p7(tmp_path, pending=Request(action=layout.ACTION_RESET, delete_snapshots=True), staged=True)
    subprocess.run(["rm", "-rf", str(p7 / layout.STAGED_DIR / "etc")], check=True)
    assert run(tmp_path, bin_dir, 10**6)
    assert delta_state(p7) == "empty"
    assert not (p7 / layout.SNAPSHOT_DIR).exists()


def test_a_request_in_the_other_staged_directory(tmp_path: Path, bin_dir: Path) -> None:
    """A request staged while another was pending names rw.next; rw.new, the earlier request's
    delta (the cut came before the device deleted it), is garbage. A cut before every step."""
    cuts = 0
    for crash_at in range(1, 100):
        root = tmp_path / f"run{crash_at}"
        root.mkdir()
        p7 = make_p7(root, pending=dataclasses.replace(RESTORE, staged=layout.STAGED_DIRS[1]), staged=True)
        (p7 / layout.STAGED_DIR).rename(p7 / layout.STAGED_DIRS[1])
        (p7 / layout.STAGED_DIR / "etc").mkdir(parents=True)
        (p7 / layout.STAGED_DIR / "etc/marker").write_text("earlier\n")
        if run(root, bin_dir, crash_at):
            assert delta_state(p7) == "new"
            break
        cuts += 1
        assert run(root, bin_dir, 10**6)
        assert delta_state(p7) == "new", f"cut before operation {crash_at}"
    assert cuts >= 3


@pytest.mark.parametrize("cut_before_request", [True, False])
def test_a_second_request_cut_while_staging_keeps_the_first(tmp_path: Path, bin_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            cut_before_request: bool) -> None:
    """The campaign's seed 1362263916: `liveng commit` (A), then a second commit cut while it staged;
    the boot lost A, because the second withdrew the first request before staging. Now the first
    stays whole until the second's request replaces it: the boot switches in A, or A and B."""
    p7 = make_p7(tmp_path, pending=None, staged=False)
    (p7 / layout.DELTA_STATE_DIR).mkdir(exist_ok=True)
    commit = Request(action=layout.ACTION_COMMIT)

    def fill(content: str) -> Callable[[Path], None]:
        def write(staged: Path) -> None:
            (staged / "etc").mkdir()
            (staged / "etc/marker").write_text(content)
        return write

    assert delta.stage(p7, commit, fill("A\n")).staged == layout.STAGED_DIR
    if cut_before_request:
        def cut(path: Path, data: bytes) -> None:
            raise KeyboardInterrupt("the power went")
        monkeypatch.setattr(bootstate, "write_atomic", cut)
        with pytest.raises(KeyboardInterrupt):
            delta.stage(p7, commit, fill("A and B\n"))
        assert (p7 / layout.STAGED_DIRS[1] / "etc/marker").exists()  # as the cut leaves it
    else:
        remove_tree = delta.remove_tree

        def cut_after(path: Path) -> None:  # once the new request is written, before the old delta goes
            pending = delta.read_pending(p7)
            if path == p7 / layout.STAGED_DIR and pending and pending.staged == layout.STAGED_DIRS[1]:
                raise KeyboardInterrupt("the power went")
            remove_tree(path)
        monkeypatch.setattr(delta, "remove_tree", cut_after)
        with pytest.raises(KeyboardInterrupt):
            delta.stage(p7, commit, fill("A and B\n"))
        monkeypatch.undo()
    assert run(tmp_path, bin_dir, 10**6)
    assert (p7 / "rw/etc/marker").read_text() == ("A\n" if cut_before_request else "A and B\n")
    assert not any((p7 / d).exists() for d in layout.STAGED_DIRS)
    assert not (p7 / layout.PENDING_PATH).exists()


def test_interrupted_staging_is_dropped(tmp_path: Path, bin_dir: Path) -> None:
    """rw.new without a request: the running system lost power while preparing it."""
    p7 = make_p7(tmp_path, pending=None, staged=True)
    assert run(tmp_path, bin_dir, 10**6)
    assert delta_state(p7) == "old"


def test_request_without_staged_delta_is_ignored(tmp_path: Path, bin_dir: Path) -> None:
    p7 = make_p7(tmp_path, pending=RESTORE, staged=False)
    assert run(tmp_path, bin_dir, 10**6)
    assert delta_state(p7) == "old"


def test_other_boots_change_nothing(tmp_path: Path, bin_dir: Path) -> None:
    p7 = make_p7(tmp_path, pending=None, staged=False, cmdline="liveng.reset=no")
    assert run(tmp_path, bin_dir, 10**6)
    assert delta_state(p7) == "old"


def test_commit_keeps_the_persistent_paths_through_power_cuts(tmp_path: Path, bin_dir: Path) -> None:
    """A commit made in ram-paths mode: the staged delta lacks the persistent paths, which were in
    use on p7; the switch moves them over from the old delta, also when cut before any step."""
    commit = Request(action=layout.ACTION_COMMIT, created="2026-01-01T00:00:00Z", keep="/srv/keep,/var/lib/app")
    cuts = 0
    for crash_at in range(1, 100):
        root = tmp_path / f"run{crash_at}"
        root.mkdir()
        p7 = make_p7(root, pending=commit, staged=True)
        (p7 / "rw/srv/keep").mkdir(parents=True)
        (p7 / "rw/srv/keep/data").write_text("kept\n")
        (p7 / layout.STAGED_DIR / "srv/keep").mkdir(parents=True)  # the mount point, empty in RAM
        finished = run(root, bin_dir, crash_at)
        if not finished:
            cuts += 1
            assert run(root, bin_dir, 10**6)
        assert (p7 / "rw/srv/keep/data").read_text() == "kept\n", f"cut before operation {crash_at}"
        assert (p7 / "rw/etc/marker").read_text() == "new\n"
        assert not (p7 / "rw/var/lib/app").exists()
        assert not (p7 / layout.OLD_DELTA_DIR).exists() and not (p7 / layout.SWITCH_PATH).exists()
        if finished:
            break
    assert cuts >= 5


def test_a_request_made_after_an_unfinished_reset_is_kept(tmp_path: Path, bin_dir: Path) -> None:
    """A menu reset made rw but could not delete rw.reset; the reset system then staged a restore:
    the next boot finishes the reset without taking the newer request with it."""
    p7 = make_p7(tmp_path, pending=RESTORE, staged=True)
    (p7 / layout.RESET_DELTA_DIR).mkdir()
    (p7 / "rw/etc").rename(p7 / layout.RESET_DELTA_DIR / "etc")
    out = run_output(tmp_path, bin_dir)
    assert out is not None and "factory reset done" in out
    assert (p7 / layout.PENDING_PATH).exists() and (p7 / layout.STAGED_DIR).is_dir()
    assert not any((p7 / "rw").iterdir())
    assert run(tmp_path, bin_dir, 10**6)
    assert delta_state(p7) == "new"


@pytest.mark.parametrize("keep", ["/srv/keep/inner,/srv/keep", "/srv/keep,/srv/keep/inner"])
def test_nested_kept_paths(tmp_path: Path, bin_dir: Path, keep: str) -> None:
    """A kept path inside another one moves with it, in either order (the inner one moved first
    was deleted with the outer one's destination)."""
    commit = Request(action=layout.ACTION_COMMIT, created="2026-01-01T00:00:00Z", keep=keep)
    p7 = make_p7(tmp_path, pending=commit, staged=True)
    (p7 / "rw/srv/keep/inner").mkdir(parents=True)
    (p7 / "rw/srv/keep/data").write_text("outer\n")
    (p7 / "rw/srv/keep/inner/data").write_text("inner\n")
    out = run_output(tmp_path, bin_dir)
    assert out is not None and "commit done" in out
    assert (p7 / "rw/srv/keep/data").read_text() == "outer\n"
    assert (p7 / "rw/srv/keep/inner/data").read_text() == "inner\n"


def test_journal_without_staged_delta_keeps_the_old_one(tmp_path: Path, bin_dir: Path) -> None:
    """The journal and the old delta set aside, but the staged one gone: the old one comes back and
    the switch is not reported done."""
    p7 = make_p7(tmp_path, pending=None, staged=False)
    (p7 / layout.SWITCH_PATH).write_text(RESTORE.text())
    (p7 / "rw").rename(p7 / layout.OLD_DELTA_DIR)
    out = run_output(tmp_path, bin_dir)
    assert out is not None and "restore done" not in out and "staged delta is missing" in out
    assert delta_state(p7) == "old"
