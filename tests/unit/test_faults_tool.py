"""bench/faults: the guest helper's files and checks, the record, the round schedule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.faults import record, rounds
from bench.faults.__main__ import main, next_pair, owning, pairs_for, round_seed, worker_of
from bench.faults.ops import OPS
from bench.faults.ops_apt import REINST_REQUIRED, apt_retrying, not_filtered, upgraded

HELPER = Path(rounds.__file__).with_name("guest_helper.py")


def helper(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(HELPER), *args], check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def test_write_set_is_fsynced_files_decided_by_the_seed(tmp_path: Path) -> None:
    first = helper("write-set", str(tmp_path / "a"), "5", "42")
    assert helper("write-set", str(tmp_path / "b"), "5", "42") == first and len(first) == 5
    assert helper("hashes", str(tmp_path / "a")) == first
    assert helper("write-set", str(tmp_path / "c"), "5", "43") != first


def test_writer_check_finds_lost_and_torn_files(tmp_path: Path) -> None:
    wdir = tmp_path / "w"
    proc = subprocess.Popen([sys.executable, str(HELPER), "writer", str(wdir), "0"])
    deadline = time.monotonic() + 30
    while not (wdir / "log").exists() or (wdir / "log").read_text().count("\n") < 5:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    report = helper("check-writer", str(wdir))
    assert report["logged"] >= 5 and report["lost"] == [] and report["torn"] == []
    logged = (wdir / "log").read_text().splitlines()
    victim = wdir / logged[1].split()[0]
    victim.write_bytes(victim.read_bytes()[:100])  # torn under its final name, and no longer as logged
    (wdir / "log").write_text((wdir / "log").read_text() + "live-999999 00")  # an append cut short
    report = helper("check-writer", str(wdir))
    assert report["lost"] == [victim.name] and report["torn"] == [victim.name] and report["partial_log"] is True
    assert helper("check-writer", str(tmp_path / "none"))["absent"] is True


def test_a_torn_sector_of_the_writers_log_garbles_lines_not_files(tmp_path: Path) -> None:
    """Seed 3106361623: the torn last write was the log's third block, rewritten by an append; its
    sector 2 kept 314 bytes and the rest went random, taking lines 123-126 written (and fsynced)
    before. The files stay whole; only their lines are unreadable, and only in one sector."""
    from bench.faults import guest_helper

    wdir = tmp_path / "w"
    proc = subprocess.Popen([sys.executable, str(HELPER), "writer", str(wdir), "0"])
    deadline = time.monotonic() + 60
    while not (wdir / "log").exists() or (wdir / "log").stat().st_size < 3 * 4096:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    intact = (wdir / "log").read_bytes()
    start = 2 * 4096 + 2 * 512 + 314
    torn = intact[:start] + os.urandom(2 * 4096 + 3 * 512 - start) + intact[2 * 4096 + 3 * 512:]
    (wdir / "log").write_bytes(torn)
    report = helper("check-writer", str(wdir))
    assert report["logged"] == len(intact) // guest_helper.RECORD and report["lost"] == []
    assert "live-000123" in report["garbled"] and "live-000127" not in report["garbled"]
    assert guest_helper.one_sector(report["garbled_bytes"])
    assert guest_helper.garbled_problem(report["garbled_bytes"], "w", torn=True) == []
    first, last = report["garbled_bytes"]
    assert guest_helper.garbled_problem([first, last], "w", torn=False) == \
        [f"w: log garbled at bytes {first}-{last} (no sector of p7 was torn)"]
    # A file whose line is garbled must still be there and whole.
    (wdir / "live-000124").unlink()
    assert helper("check-writer", str(wdir))["lost"] == ["live-000124"]
    # Garbled in two sectors: no single torn sector does that.
    (wdir / "log").write_bytes(torn[:100] + b"x" + torn[101:])
    span = helper("check-writer", str(wdir))["garbled_bytes"]
    assert not guest_helper.one_sector(span) and guest_helper.garbled_problem(span, "w", torn=True)


def test_results_section_is_rewritten_in_place(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Before\ntext\n")
    state: dict[str, Any] = {"campaign_seed": 5, "durations": {}, "rounds": [
        {"seed": 1, "op": "reset", "fault": "cut", "arch": "pc", "outcome": "recovered", "problems": [],
         "started": "2026-12-06T06:00:00Z", "commit": "abc"},
        {"seed": 2, "op": "reset", "fault": "cut", "arch": "pc", "outcome": "failed", "delay": 3.5,
         "problems": ["no shell"], "started": "2026-12-06T06:05:00Z", "commit": "abc"},
        {"seed": 3, "op": "reset", "fault": "cut", "arch": "pc", "outcome": "recovered", "problems": [],
         "started": "2026-12-06T06:10:00Z", "commit": "fed", "image_commit": "abc"},
        {"seed": 4, "op": "reset", "fault": "cut", "arch": "pc", "outcome": "recovered", "problems": [],
         "started": "2026-12-06T06:15:00Z", "commit": "fed", "image_commit": "fed"}]}
    record.write_results(results, record.section(state, list(OPS), list(rounds.FAULTS)))
    text = results.read_text()
    assert "| reset | 3/4 | - | - | - | - |" in text
    # By the images' commit: the harness's newer code ran abc's images in round 3.
    assert "By the commit whose images the rounds ran (recovered/run): abc 2/3, fed 1/1." in text
    assert "seed 2 (reset, cut, fault 3.5 s in): no shell" in text and "--seed 2 --ops reset --faults cut" in text
    assert record._one_line("\x1b[1mdpkg:\x1b[0m error\n  more") == "dpkg: error more"
    results.write_text(text + "\n## After\nmore\n")
    state["rounds"] = state["rounds"][:1]
    record.write_results(results, record.section(state, list(OPS), list(rounds.FAULTS)))
    text = results.read_text()
    assert text.count(record.BEGIN) == 1 and "| reset | 1/1 |" in text
    assert text.startswith("# Benchmark results\n\n## Before\ntext\n") and text.endswith("## After\nmore\n")


def test_a_seed_two_pairs_drew_is_told_apart(tmp_path: Path) -> None:
    """Seed 87606111 was drawn by an apt-upgrade/torn round (recovered) and a db-writes-ram-paths/torn
    one (failed): a replay of one is not the other's, and --seed alone must name the pair."""
    base = {"seed": 7, "arch": "pc", "fault": "torn", "problems": ["x"], "started": "2026-12-06T06:00:00Z",
            "commit": "abc", "delay": 1.0}
    state: dict[str, Any] = {"campaign_seed": 5, "durations": {}, "rounds": [
        {**base, "op": "apt-upgrade", "outcome": "recovered"},
        {**base, "op": "db-writes-ram-paths", "outcome": "failed"},
        {**base, "op": "apt-upgrade", "outcome": "recovered", "replay": True, "commit": "def"}]}
    text = record.section(state, list(OPS), list(rounds.FAULTS))
    failed = next(line for line in text.splitlines() if line.startswith("- seed 7"))
    assert "db-writes-ram-paths" in failed and "replayed" not in failed
    path = tmp_path / "state.json"
    path.write_text(json.dumps(state))
    with pytest.raises(SystemExit, match=r"apt-upgrade/torn, db-writes-ram-paths/torn.*give one --ops"):
        main(["--seed", "7", "--state", str(path), "--results", "", "--workdir", str(tmp_path / "w")])


def test_results_say_which_pairs_apply_and_what_is_left() -> None:
    """With rounds.applicable: a pair not run yet shows 0/0, one that cannot apply n/a, and a line
    counts the pairs and the rounds left to record.GOAL_PER_PAIR each."""
    ok = {"arch": "pc", "outcome": "recovered", "problems": [], "started": "2026-12-06T06:00:00Z", "commit": "abc"}
    state: dict[str, Any] = {"campaign_seed": 5, "durations": {}, "rounds": [
        {**ok, "seed": i, "op": "reset", "fault": "cut"} for i in range(record.GOAL_PER_PAIR + 2)] + [
        {**ok, "seed": 99, "op": "boot", "fault": "torn"}]}
    text = record.section(state, list(OPS), list(rounds.FAULTS), rounds.applicable)
    pairs = [(o, f) for o in OPS for f in rounds.FAULTS if rounds.applies(OPS[o], f, "pc")]
    assert 0 < len(pairs) < len(OPS) * len(rounds.FAULTS)
    either = [(o, f) for o in OPS for f in rounds.FAULTS
              if rounds.applies(OPS[o], f, "pc") or rounds.applies(OPS[o], f, "arm64")]
    left = (len(either) - 1) * record.GOAL_PER_PAIR - 1  # reset/cut is done, boot/torn has one
    assert f"{len(either)} pairs apply to one image or both; 1 have {record.GOAL_PER_PAIR} rounds or more; " \
           f"{left} more rounds" in text
    assert f"{len(pairs)} (operation, fault) pairs apply to this image." in text
    state["rounds"] += [{**ok, "arch": "arm64", "seed": 100 + i, "op": "boot", "fault": "torn"} for i in range(9)]
    assert f"{left - 9} more rounds" in record.section(state, list(OPS), list(rounds.FAULTS), rounds.applicable)
    assert "| reset | 12/12 | 0/0 |" in text
    assert "| boot | 0/0 | 1/1 | 0/0 | 0/0 | n/a |" in text  # the boot reboots: no partner runs with it
    assert "| db-writes-ram-paths |" in text  # every operation that applies has its row, run or not
    assert "| db-writes-ram-paths |" not in record.section(state, list(OPS), list(rounds.FAULTS))


def test_state_saved_and_loaded(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = record.load(path)
    assert state["rounds"] == []
    state["rounds"].append({"seed": 1})
    record.save(path, state)
    assert record.load(path) == state


def test_workers_add_rounds_to_one_state(tmp_path: Path) -> None:
    """Two campaign processes side by side: each adds its round to the file as it is then, the
    operation's longest time is kept, and the RESULTS section counts both."""
    path, results = tmp_path / "state.json", tmp_path / "RESULTS.md"
    record.save(path, record.load(path))
    seed = record.load(path)["campaign_seed"]
    base: dict[str, Any] = {"arch": "pc", "fault": "cut", "partner": None, "outcome": "recovered", "problems": [],
            "started": "2026-12-06T09:00:00Z", "commit": "abc", "replay": False, "seconds": 100}
    record.add(path, {**base, "seed": 1, "op": "reset"}, {"reset": 5.0}, results, list(OPS), list(rounds.FAULTS))
    state = record.add(path, {**base, "seed": 2, "op": "boot"}, {"reset": 3.0}, results, list(OPS),
                       list(rounds.FAULTS))
    assert [r["seed"] for r in state["rounds"]] == [1, 2] and state["durations"] == {"reset": 5.0}
    assert record.load(path)["campaign_seed"] == seed
    assert "pc: 2 rounds, 2 recovered" in results.read_text()
    # A failed round and its replay on fixed code: the failure stays in the record, with the replay.
    record.add(path, {**base, "seed": 3, "op": "reset", "outcome": "failed", "problems": ["panic"]}, {}, results,
               list(OPS), list(rounds.FAULTS))
    record.add(path, {**base, "seed": 3, "op": "reset", "replay": True, "commit": "def"}, {}, results, list(OPS),
               list(rounds.FAULTS))
    text = results.read_text()
    assert "pc: 3 rounds, 2 recovered, 1 failed" in text and "seed 3 (reset, cut" in text
    assert "replayed on def: recovered" in text


def test_processes_side_by_side_take_different_rounds(tmp_path: Path) -> None:
    """A round under way elsewhere counts for its pair and keeps its seed; a process gone (killed
    mid-round) no longer does; recording a round ends this process's claim."""
    path = tmp_path / "state.json"
    state = record.load(path)
    record.save(path, state)
    pairs = pairs_for("pc", list(OPS), list(rounds.FAULTS))
    first = next_pair(state, "pc", pairs)
    seed = round_seed(state, "pc", *first)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        claims = {str(child.pid): [*first, seed]}
        (tmp_path / ".state.json.running").write_text(json.dumps(claims))
        others = list(record.running(path).values())
        assert others == [(*first, seed)]
        second = next_pair(state, "pc", pairs, [(o, f) for o, f, _ in others])
        assert second != first
        # Alone on the pair's last open round, both would take the pair: never the seed.
        assert round_seed(state, "pc", *first, [seed]) != seed
        record.set_running(path, (*second, 7))
        assert sorted(record.running(path).values()) == sorted([(*first, seed), (*second, 7)])
        record.add(path, {"seed": 7, "op": second[0], "fault": second[1], "arch": "pc", "partner": None,
                          "outcome": "recovered", "problems": [], "started": "2026-12-06T09:00:00Z"},
                   {}, None, list(OPS), list(rounds.FAULTS))
        assert list(record.running(path).values()) == [(*first, seed)]
    finally:
        child.kill()
        child.wait()
    assert record.running(path) == {}


def test_worker_argument() -> None:
    assert worker_of("1/2") == (0, 2) and worker_of("2/2") == (1, 2)
    for bad in ("0/2", "3/2", "2", "a/b"):
        with pytest.raises(Exception, match="K/N"):
            worker_of(bad)


def test_schedule_takes_the_least_run_pair_and_seeds_are_stable() -> None:
    pairs = pairs_for("pc", ["reset", "kernel-install"], ["cut", "two-ops"])
    # A reset reboots: it never runs alongside another operation.
    assert ("reset", "two-ops") not in pairs and ("kernel-install", "two-ops") in pairs
    state: dict[str, Any] = {"campaign_seed": 9, "rounds": [
        {"arch": "pc", "op": "reset", "fault": "cut"}, {"arch": "pc", "op": "kernel-install", "fault": "cut"}]}
    assert next_pair(state, "pc", pairs) == ("kernel-install", "two-ops")
    # The other image's rounds count: its kernel-install/two-ops rounds make reset/cut the next.
    state["rounds"] += [{"arch": "arm64", "op": "kernel-install", "fault": "two-ops"}] * 2
    assert next_pair(state, "pc", pairs) == ("reset", "cut")
    state["rounds"] = [{**r, "seed": i} for i, r in enumerate(state["rounds"])]
    seed = round_seed(state, "pc", "reset", "cut")
    assert seed == round_seed(state, "pc", "reset", "cut") != round_seed(state, "arm64", "reset", "cut")
    assert seed != round_seed(state, "pc", "kernel-install", "cut")
    state["rounds"].append({"arch": "pc", "op": "reset", "fault": "cut", "seed": seed})
    assert round_seed(state, "pc", "reset", "cut") != seed
    taken = round_seed(state, "pc", "kernel-install", "two-ops")  # drawn by another pair's round already:
    state["rounds"].append({"arch": "pc", "op": "reset", "fault": "cut", "seed": taken})
    assert round_seed(state, "pc", "kernel-install", "two-ops") != taken


@pytest.mark.parametrize("arch", ["pc", "arm64"])
def test_every_operation_has_a_golden_on_its_arches(arch: str) -> None:
    from bench.faults.world import kinds_for

    for op in OPS.values():
        if arch in op.arches:
            assert op.kinds[0] in kinds_for(arch), op.name


def test_dpkg_verify_ignores_only_what_the_image_filters_out() -> None:
    cfg = ("path-exclude=/usr/lib/linux-image-*/*\npath-include=/usr/lib/linux-image-*/broadcom/*\n"
           "path-exclude=/usr/share/doc/*\n")
    verify = ("missing     /usr/lib/linux-image-6.12-arm64/rockchip/rk3588-rock-5b.dtb\n"
              "missing     /usr/lib/linux-image-6.12-arm64/broadcom/bcm2711-rpi-4-b.dtb\n"
              "??5??????   /usr/lib/linux-image-6.12-arm64/rockchip/rk3399.dtb\n"
              "missing     /usr/lib/modules/6.12-arm64/kernel/fs/ext4/ext4.ko.xz\n")
    assert not_filtered(verify, cfg) == verify.splitlines()[1:]
    assert not_filtered("", cfg) == []
    assert not_filtered(verify, "") == verify.splitlines()


def test_packages_dpkg_wants_reinstalled(tmp_path: Path) -> None:
    """ops_apt.REINST_REQUIRED on dpkg-query's db:Status-Abbrev as dpkg prints it after a cut during
    an unpack (arm64 seed 178015920: "iHR", which `apt-get -f install` refuses)."""
    shim = tmp_path / "dpkg-query"
    shim.write_text("#!/bin/sh\nprintf 'ii  bash\\niHR liveng-faults-demo\\nrc  old-conf\\niUR other\\n'\n")
    shim.chmod(0o755)
    out = subprocess.run(["sh", "-c", REINST_REQUIRED], capture_output=True, text=True, check=True,
                         env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}).stdout
    assert out.split() == ["liveng-faults-demo", "other"]


def test_the_ebr_torn_is_the_one_in_front_of_p7(tmp_path: Path) -> None:
    """Never the MBR (nothing on an MBR disk survives a torn one; liveng flash keeps the device from
    writing it), whatever the seed draws."""
    import random

    from bench.faults import inject
    from liveng import layout
    from liveng.host import disk

    extents, total = layout.plan(boot=4 * layout.MiB, system=layout.MiB, slot=layout.MiB, persistence=layout.MiB)
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(total)
    disk.write_table(image, "1234abcd", extents)
    p7 = disk.read_table(image).entry(7)
    for seed in range(8):
        offset, what = inject.ebr_sector(image, random.Random(seed))
        with open(image, "rb") as f:
            f.seek(offset)
            ebr = f.read(layout.SECTOR)
        # The EBR's first entry: p7, from the EBR's own sector.
        assert offset + int.from_bytes(ebr[446 + 8:446 + 12], "little") * layout.SECTOR == p7.start, what
        assert offset > 0 and "MBR" not in what


def test_the_torn_write_is_the_last_the_guest_gave(tmp_path: Path) -> None:
    """From QEMU's trace of the guest's writes: the last request still in flight at the cut, else the
    last one; a request's memory reused by a later request is a new request; a half line (the kill)
    is ignored; no write at all, no tear."""
    from bench.faults import inject

    trace = tmp_path / "writes.trace"
    w = "virtio_blk_handle_write vdev 0x55 req {} sector {} nsectors {}\n"
    c = "virtio_blk_rw_complete vdev 0x55 req {} ret 0\n"
    trace.write_text(w.format("0xa", 100, 8) + w.format("0xb", 200, 16) + c.format("0xa") + c.format("0xb")
                     + w.format("0xa", 300, 8) + "virtio_blk_handle_write vdev 0x55 req 0xc sec")
    assert inject.last_write(trace) == (300, 8, True)
    trace.write_text(w.format("0xa", 100, 8) + w.format("0xb", 200, 16) + c.format("0xb"))
    assert inject.last_write(trace) == (100, 8, True)
    trace.write_text(w.format("0xa", 100, 8) + c.format("0xa") + w.format("0xb", 200, 16) + c.format("0xb"))
    assert inject.last_write(trace) == (200, 16, False)
    trace.write_text("")
    assert inject.last_write(trace) is None and inject.last_write(tmp_path / "none") is None
    # The tear itself: one sector of that request, nothing else.
    import random

    disk, before = tmp_path / "disk.img", tmp_path / "before.img"
    disk.write_bytes(b"\x11" * 512 * 400)
    before.write_bytes(b"\x22" * 512 * 400)
    trace.write_text(w.format("0xa", 200, 16))
    for seed in range(20):
        disk.write_bytes(b"\x11" * 512 * 400)
        torn = inject.tear(disk, before, random.Random(seed), ("last",), trace)
        data = disk.read_bytes()
        changed = [i // 512 for i in range(0, len(data), 512) if data[i:i + 512] != b"\x11" * 512]
        assert changed == ([torn["offset"] // 512] if torn["changed"] else []), torn
        assert 200 <= torn["offset"] // 512 < 216 and "of the last write (in flight" in torn["what"]
    trace.write_text("")
    assert inject.tear(disk, before, random.Random(1), ("last",), trace)["changed"] is False


def test_db_check_names_a_journal_mode_other_than_written(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from bench.faults import guest, ops

    report = {"journal": "delete", "integrity": "ok", "logged": 3, "in_db": 3, "in_flight": None}
    monkeypatch.setattr(guest, "check_db", lambda vm, directory, what, torn: ([], report))
    ctx: Any = SimpleNamespace(notes={"journal": "wal"}, torn_data=False)
    assert ops.OPS["db-writes"].check(ctx, None) == ["database: journal_mode delete, written in wal"]  # type: ignore[arg-type]
    ctx.notes["journal"] = "delete"
    assert ops.OPS["db-writes"].check(ctx, None) == []  # type: ignore[arg-type]


class _AptVm:
    """A guest whose apt lacks the package until its lists are fetched again."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.updated = False

    def sh(self, command: str, timeout: float = 300, check: bool = True) -> str:
        self.commands.append(command)
        if "apt-get -q update" in command:
            self.updated = True
            return ""
        if self.updated:
            return "Setting up faults-demo (2) ...\nrc=0"
        return "E: Package 'faults-demo' has no installation candidate\nrc=100"


def test_apt_lists_fetched_again_when_apt_says_they_lack_the_package() -> None:
    vm = _AptVm()
    steps: list[str] = []
    out = apt_retrying(vm, "install --reinstall faults-demo", steps)  # type: ignore[arg-type]
    assert out.endswith("rc=0") and steps == ["apt-get update"]
    assert len(vm.commands) == 3 and "sources.list.d/faults*.list" in vm.commands[1]
    other = _AptVm()
    other.updated = True
    steps = []
    assert apt_retrying(other, "-f install", steps).endswith("rc=0") and steps == []  # type: ignore[arg-type]


def test_the_packages_apt_upgrades_are_read_from_its_list() -> None:
    """apt-kernel checks that its kernel is among them: with apt-upgrade as its partner, apt upgrades
    the demo package too (3 packages, where the count alone expected 2)."""
    out = ("Reading package lists...\nCalculating upgrade...\nThe following packages will be upgraded:\n"
           "  linux-image-6.12.118+deb13-amd64 linux-image-amd64 liveng-faults-demo\n"
           "3 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\nNeed to get 120 MB of archives.\n")
    assert upgraded(out) == {"linux-image-6.12.118+deb13-amd64", "linux-image-amd64", "liveng-faults-demo"}
    assert upgraded("Calculating upgrade...\n0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n") == set()


def test_a_round_directory_has_one_process(tmp_path: Path) -> None:
    """Two processes in one round directory (a second run without --worker) would copy a disk over
    the other's running VM: the second is refused, naming the way out; the directory is free after."""
    with owning(tmp_path / "w"):
        with pytest.raises(SystemExit, match="--worker K/N"), owning(tmp_path / "w"):
            pass
        with owning(tmp_path / "w2"):  # another worker's directory
            pass
    with owning(tmp_path / "w"):
        pass
