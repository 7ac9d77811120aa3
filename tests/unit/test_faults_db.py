"""bench/faults' database writer (guest_helper.db_writer) and its check, run on the host: killed at
random moments it must always pass its own check; a damaged database must not."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.faults import guest_helper
from bench.faults.ops import OPS

HELPER = Path(guest_helper.__file__)


def check(directory: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(HELPER), "check-db", str(directory)], check=True,
                         capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def logged(directory: Path) -> int:
    log = directory / "log"
    return log.read_bytes().count(b"\n") if log.exists() else 0


def run_and_kill(directory: Path, journal: str, rng: random.Random, at_least: int) -> None:
    """Start the writer, SIGKILL it at a random moment once it has logged ``at_least`` transactions."""
    proc = subprocess.Popen([sys.executable, str(HELPER), "db-writer", str(directory), journal, "0"])
    try:
        deadline = time.monotonic() + 60
        while logged(directory) < at_least:
            assert proc.poll() is None, f"the writer exited {proc.returncode}"
            assert time.monotonic() < deadline, "the writer logged too little in 60 s"
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_writer_killed_at_random_moments_always_passes_its_check(tmp_path: Path, journal: str) -> None:
    rng = random.Random(journal)
    directory = tmp_path / "db"
    seen = 0
    for _ in range(5):
        # Each restart goes on in the same database: it recovers the journal, logs what was committed.
        run_and_kill(directory, journal, rng, seen + 3)
        report = check(directory)
        assert guest_helper.db_problems(report, "db") == [], report
        assert report["integrity"] == "ok" and report["journal"] == journal
        assert report["logged"] > seen and report["in_db"] >= report["logged"]
        seen = report["logged"]


def writer_stopped(tmp_path: Path) -> Path:
    directory = tmp_path / "db"
    run_and_kill(directory, "wal", random.Random(1), 6)
    assert guest_helper.db_problems(check(directory), "db") == []
    return directory


def damage(directory: Path, sql: str, *args: object) -> dict[str, Any]:
    db = sqlite3.connect(directory / guest_helper.DB)
    with db:
        db.execute(sql, args)
    db.close()
    return check(directory)


def test_a_log_garbled_in_one_sector_counts_its_lines_by_length(tmp_path: Path) -> None:
    """The log's last block is rewritten by every append: a torn sector there garbles lines written
    before, newlines included. Its length still says how many were logged, and each of those must be
    in the database."""
    directory = writer_stopped(tmp_path)
    log = directory / "log"
    intact = log.read_bytes()
    n = intact.count(b"\n")
    log.write_bytes(intact[:2] + b"\xff" * (len(intact) - 4) + intact[-2:])
    report = check(directory)
    assert report["logged"] == n and report["lost"] == [] and report["garbled"] == [2, len(intact) - 3]
    assert guest_helper.db_problems(report, "db", torn=True) == []
    assert guest_helper.db_problems(report, "db") == [f"db: log garbled at bytes 2-{len(intact) - 3} (no sector "
                                                      "of p7 was torn)"]
    # A logged line too many (the log longer than the database's transactions): that one is lost.
    log.write_bytes(intact + b"%d\n" % (n + 1) + b"%d\n" % (n + 2))
    report = check(directory)
    assert report["lost"] and report["garbled"] is None


def test_check_finds_a_deleted_row_of_a_logged_transaction(tmp_path: Path) -> None:
    directory = writer_stopped(tmp_path)
    report = damage(directory, "DELETE FROM items WHERE tx = 2 AND n = 1")
    assert report["partial"] == [2]
    assert any("partly present: 2" in p for p in guest_helper.db_problems(report, "db"))


def test_check_finds_a_changed_payload(tmp_path: Path) -> None:
    directory = writer_stopped(tmp_path)
    report = damage(directory, "UPDATE items SET payload = ? WHERE tx = 3 AND n = 0", b"not what was hashed")
    assert report["partial"] == [3] and guest_helper.db_problems(report, "db")


def test_check_finds_a_lost_transaction_and_one_beyond_the_log(tmp_path: Path) -> None:
    directory = writer_stopped(tmp_path)
    damage(directory, "DELETE FROM items WHERE tx = 4")
    report = damage(directory, "DELETE FROM txs WHERE tx = 4")
    assert report["lost"] == [4] and report["partial"] == []
    last = max(int(x) for x in (directory / "log").read_text().split())
    damage(directory, "DELETE FROM items WHERE tx > ?", last)  # the kill may have left one in flight: not here
    assert damage(directory, "DELETE FROM txs WHERE tx > ?", last)["in_db"] == last - 1
    # The one in flight (committed, not logged yet) is allowed; two are not.
    assert damage(directory, "INSERT INTO txs VALUES (?, 0)", last + 1)["beyond"] == []
    report = damage(directory, "INSERT INTO txs VALUES (?, 0)", last + 2)
    assert report["beyond"] == [last + 1, last + 2]
    problems = guest_helper.db_problems(report, "db")
    assert any("missing: 4" in p for p in problems) and any("beyond" in p for p in problems)


def test_check_finds_a_corrupt_database_file(tmp_path: Path) -> None:
    directory = writer_stopped(tmp_path)
    db = sqlite3.connect(directory / guest_helper.DB)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file, where the damage goes
    db.close()
    path = directory / guest_helper.DB
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 3 * page
    data[2 * page:3 * page] = bytes(page)  # a page zeroed, as a lost write leaves it
    path.write_bytes(bytes(data))
    report = check(directory)
    assert report["integrity"] != "ok"
    assert any("integrity_check" in p for p in guest_helper.db_problems(report, "db"))


def test_an_absent_database_is_fine_unless_something_was_logged(tmp_path: Path) -> None:
    assert guest_helper.db_problems(check(tmp_path / "none"), "db") == []
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "log").write_text("1\n2\n")
    assert any("missing: 1, 2" in p for p in guest_helper.db_problems(check(tmp_path / "db"), "db"))


def test_the_operations_are_registered() -> None:
    assert {"db-writes", "db-writes-ram-paths", "apt-kernel"} <= set(OPS)
    assert OPS["db-writes"].kinds[0] == "base" and OPS["db-writes-ram-paths"].kinds == ("ram-paths",)
