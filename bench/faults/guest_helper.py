"""Runs inside the guest (uploaded by bench.faults each session; standard library only): writes user
files the way an application that cares would (write, fsync, rename, fsync the directory) and checks
them after the fault.

    python3 helper.py write-set DIR COUNT SEED      # files fsynced; prints {name: sha256} as JSON
    python3 helper.py hashes DIR                     # {name: sha256} of the files there, as JSON
    python3 helper.py writer DIR PAUSE               # writes until killed (see writer())
    python3 helper.py check-writer DIR               # JSON: logged, lost, torn, whole, partial_log
    python3 helper.py fill-blocks DIR                # p7 full: fallocate until ENOSPC
    python3 helper.py fill-inodes DIR                # p7 without free inodes: empty files until ENOSPC
    python3 helper.py db-writer DIR JOURNAL PAUSE    # SQLite transactions until killed (see db_writer())
    python3 helper.py check-db DIR                   # JSON: journal, integrity, logged, lost, partial, beyond
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import sqlite3
import sys
import time
from typing import Any

HEADER = 64  # "sha256-hex\n" padded: a self-checking file


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(directory: str, name: str, data: bytes) -> None:
    tmp = os.path.join(directory, f".{name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(directory, name))
    fsync_dir(directory)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hashes(directory: str) -> dict[str, str]:
    out = {}
    if os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if os.path.isfile(path) and not name.startswith("."):
                with open(path, "rb") as f:
                    out[name] = sha(f.read())
    return out


def write_set(directory: str, count: int, seed: int) -> None:
    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    fsync_dir(os.path.dirname(directory.rstrip("/")) or "/")
    for i in range(count):
        write_atomic(directory, f"f{i:04d}", rng.randbytes(rng.randint(1, 64 * 1024)))
    print(json.dumps(hashes(directory)))


def self_checking(rng: random.Random) -> bytes:
    body = rng.randbytes(rng.choice((100, 511, 4096, 20000, 200000)))
    return sha(body).encode().ljust(HEADER, b"\n") + body


def whole(data: bytes) -> bool:
    return len(data) > HEADER and sha(data[HEADER:]).encode() == data[:64].rstrip(b"\n")


def writer(directory: str, pause: float) -> None:
    """Files live-N written atomically, each then logged (the log line appended and fsynced): a file
    in the log was durable before its line was, so after any fault every logged file must be whole;
    any live-N file at all must be whole (never a torn one under the final name)."""
    os.makedirs(directory, exist_ok=True)
    fsync_dir(os.path.dirname(directory.rstrip("/")) or "/")
    rng = random.Random(os.getpid())
    log = os.open(os.path.join(directory, "log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    i = 0
    while True:
        data = self_checking(rng)
        name = f"live-{i:06d}"
        write_atomic(directory, name, data)
        os.write(log, f"{name} {sha(data)}\n".encode())
        os.fsync(log)
        i += 1
        if pause:
            time.sleep(pause)


SECTOR = 512
HEX = frozenset(b"0123456789abcdef")
RECORD = len("live-000000 ") + 64 + 1  # a line of the writer's log: the file's name, its SHA-256, a newline


def garbled_span(bad: list[int]) -> list[int] | None:
    """The first and last of the byte offsets ``bad`` (bytes of a log no intact log has there)."""
    return [min(bad), max(bad)] if bad else None


def one_sector(span: list[int] | None) -> bool:
    """Whether a garbled span lies in one 512-byte sector of the file (a file starts at a block:
    its sectors are the disk's), what one torn sector leaves."""
    return span is not None and span[0] // SECTOR == span[1] // SECTOR


def check_writer(directory: str) -> None:
    """The writer's log read as fixed-size records: line k names live-k (a torn sector of the log's
    last block, rewritten by each append, can garble lines written before: their files must still be
    there and whole; an intact line's file must have the content it names)."""
    lost: list[str] = []
    torn: list[str] = []
    garbled: list[str] = []
    bad: list[int] = []
    whole_files = 0
    if not os.path.isdir(directory):
        print(json.dumps({"logged": 0, "lost": [], "torn": [], "whole": 0, "partial_log": False, "absent": True,
                          "garbled": [], "garbled_bytes": None}))
        return
    try:
        with open(os.path.join(directory, "log"), "rb") as f:
            text = f.read()
    except FileNotFoundError:
        text = b""
    logged = len(text) // RECORD
    for k in range(logged):
        rec = text[k * RECORD:(k + 1) * RECORD]
        name = f"live-{k:06d}"
        prefix = f"{name} ".encode()
        wrong = [i for i, b in enumerate(rec[:len(prefix)]) if b != prefix[i]]
        wrong += [i for i in range(len(prefix), RECORD - 1) if rec[i] not in HEX]
        wrong += [RECORD - 1] if rec[-1:] != b"\n" else []
        if wrong:
            garbled.append(name)
            bad += [k * RECORD + i for i in wrong]
        try:
            with open(os.path.join(directory, name), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            lost.append(name)
            continue
        if not whole(data) or (not wrong and sha(data) != rec[len(prefix):-1].decode()):
            lost.append(name)
    for name in sorted(os.listdir(directory)):
        if name.startswith("live-"):
            with open(os.path.join(directory, name), "rb") as f:
                if whole(f.read()):
                    whole_files += 1
                else:
                    torn.append(name)
    print(json.dumps({"logged": logged, "lost": lost, "torn": torn, "whole": whole_files,
                      "partial_log": len(text) % RECORD != 0, "garbled": garbled[:20],
                      "garbled_bytes": garbled_span(bad)}))


def fill_blocks(directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    size = 1 << 30
    i = 0
    while size >= 4096:
        path = os.path.join(directory, f"fill-{i}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
            i += 1
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            size //= 2
        finally:
            os.close(fd)
    os.sync()
    st = os.statvfs(directory)
    print(json.dumps({"files": i, "free_blocks": st.f_bfree}))


def fill_inodes(directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    i = 0
    try:
        while True:
            sub = os.path.join(directory, f"d{i // 4096}")
            if i % 4096 == 0:
                os.mkdir(sub)
            os.close(os.open(os.path.join(sub, f"{i}"), os.O_WRONLY | os.O_CREAT, 0o600))
            i += 1
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    os.sync()
    st = os.statvfs(directory)
    print(json.dumps({"files": i, "free_inodes": st.f_ffree}))


DB = "app.db"
SCHEMA = ("CREATE TABLE IF NOT EXISTS txs (tx INTEGER PRIMARY KEY, nrows INTEGER NOT NULL);"
          "CREATE TABLE IF NOT EXISTS items (tx INTEGER NOT NULL, n INTEGER NOT NULL, payload BLOB NOT NULL, "
          "sha TEXT NOT NULL, PRIMARY KEY (tx, n))")


def read_log(directory: str) -> tuple[list[int], bytes, list[int] | None]:
    """The transaction ids in the log, its last line if cut short (not logged yet), and where the
    log is garbled. The log holds the lines 1, 2, ... N and then at most the start of line N + 1, so
    its length alone says N (a torn sector may garble lines, never the file's size)."""
    try:
        with open(os.path.join(directory, "log"), "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return [], b"", None
    n = size = 0
    while size + len(b"%d\n" % (n + 1)) <= len(text):
        n += 1
        size += len(b"%d\n" % n)
    expected = b"".join(b"%d\n" % i for i in range(1, n + 1))
    tail = text[size:]
    bad = [i for i, (a, b) in enumerate(zip(text[:size], expected, strict=True)) if a != b]
    bad += [size + i for i, (a, b) in enumerate(zip(tail, b"%d\n" % (n + 1), strict=False)) if a != b]
    return list(range(1, n + 1)), tail, garbled_span(bad)


def db_writer(directory: str, journal: str, pause: float) -> None:
    """An application's database, written the careful way: each transaction (several rows and, in the
    same transaction, its row count) committed with synchronous=FULL; once COMMIT has returned, its
    id is appended to the log and the log fsynced. So every logged transaction was durable before its
    line was; a transaction committed but not yet logged (the one in flight) may be there or not.
    psow=0 (SQLite's URI parameter): a card that tears a sector also garbles the bytes of it that were
    not being written, so SQLite must not assume "powersafe overwrite"; it then pads each commit in
    the WAL to the end of its sector, and the next commit never rewrites a committed one's sector."""
    os.makedirs(directory, exist_ok=True)
    fsync_dir(os.path.dirname(directory.rstrip("/")) or "/")
    uri = f"file:{os.path.join(directory, DB)}?psow=0"
    db = sqlite3.connect(uri, uri=True, isolation_level=None)  # BEGIN/COMMIT by hand
    mode = db.execute(f"PRAGMA journal_mode={journal}").fetchone()[0]
    if mode.lower() != journal.lower():
        raise SystemExit(f"journal_mode {journal} refused: sqlite chose {mode}")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    fsync_dir(directory)  # the database file's (and the WAL's) names are durable too
    log = os.open(os.path.join(directory, "log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    fsync_dir(directory)
    logged, partial, _ = read_log(directory)
    if partial:  # a restart after a kill mid-append: that line was never logged
        os.ftruncate(log, os.fstat(log).st_size - len(partial))
    # A restart: what was committed after the last logged id is committed now; log it before going on.
    last = max(logged, default=0)
    for (tx,) in db.execute("SELECT tx FROM txs WHERE tx > ? ORDER BY tx", (last,)).fetchall():
        os.write(log, f"{tx}\n".encode())
    os.fsync(log)
    tx = (db.execute("SELECT max(tx) FROM txs").fetchone()[0] or 0) + 1
    rng = random.Random(os.getpid())
    while True:
        rows = rng.randint(2, 8)
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO txs VALUES (?, ?)", (tx, rows))
        for n in range(rows):
            payload = rng.randbytes(rng.choice((50, 900, 4000, 30000)))
            db.execute("INSERT INTO items VALUES (?, ?, ?, ?)", (tx, n, payload, sha(payload)))
        db.execute("COMMIT")
        os.write(log, f"{tx}\n".encode())
        os.fsync(log)
        tx += 1
        if pause:
            time.sleep(pause)


def check_db(directory: str) -> dict[str, object]:
    """After the fault, as the application opening its database again (SQLite recovers a hot journal
    or WAL): the database intact, every logged transaction whole, none partly there, nothing beyond
    the last logged one but at most the one that was in flight."""
    logged, partial_log, garbled = read_log(directory)
    report: dict[str, object] = {"logged": len(logged), "partial_log": partial_log != b"", "garbled": garbled,
                                 "lost": [], "partial": [], "beyond": [], "integrity": None, "journal": None}
    path = os.path.join(directory, DB)
    if not os.path.exists(path):
        report["absent"] = True
        report["lost"] = logged[:20]
        return report
    txs: dict[int, int] = {}
    items: dict[int, list[tuple[int, bool]]] = {}
    try:
        db = sqlite3.connect(path, isolation_level=None)
        try:
            report["journal"] = db.execute("PRAGMA journal_mode").fetchone()[0]
            report["integrity"] = "; ".join(r[0] for r in db.execute("PRAGMA integrity_check"))[:500]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if {"txs", "items"} <= tables:
                txs = dict(db.execute("SELECT tx, nrows FROM txs").fetchall())
                for t, n, payload, digest in db.execute("SELECT tx, n, payload, sha FROM items ORDER BY tx, n"):
                    items.setdefault(t, []).append((n, sha(payload) == digest))
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        report["integrity"] = f"cannot be read: {exc}"
    report["in_db"] = len(txs)
    # Partly there: rows without their transaction, a count that disagrees, or a payload not its hash.
    partial = sorted(t for t in set(txs) | set(items)
                     if t not in txs or [n for n, _ in items.get(t, [])] != list(range(txs[t]))
                     or not all(ok for _, ok in items.get(t, [])))
    report["partial"] = partial[:20]
    report["lost"] = sorted(t for t in set(logged) if t not in txs)[:20]
    last = max(logged, default=0)
    beyond = sorted(t for t in txs if t > last)
    if beyond == [last + 1]:  # committed, its log line not yet written: the one in flight
        report["in_flight"] = last + 1
        beyond = []
    known = set(logged)
    report["beyond"] = (beyond + sorted(t for t in txs if t <= last and t not in known))[:20]
    return report


def garbled_problem(span: list[int] | None, what: str, torn: bool) -> list[str]:
    """A garbled log is the fault's doing only when the round tore a sector of p7's data and the
    garbled bytes lie in one sector of the log (its last block is rewritten by every append)."""
    if span is None or (torn and one_sector(span)):
        return []
    return [f"{what}: log garbled at bytes {span[0]}-{span[1]}"
            + (" (more than one sector)" if torn else " (no sector of p7 was torn)")]


def db_problems(report: dict[str, Any], what: str, torn: bool = False) -> list[str]:
    problems = []
    if report.get("integrity") not in (None, "ok"):
        problems.append(f"{what}: integrity_check says {report['integrity']}")
    for key, text in (("lost", "logged (committed) transactions missing"),
                      ("partial", "transactions partly present"),
                      ("beyond", "transactions beyond the last logged one (and not the one in flight)")):
        if report.get(key):
            problems.append(f"{what}: {text}: {', '.join(str(x) for x in report[key][:5])}")
    return problems + garbled_problem(report.get("garbled"), what, torn)


def main(argv: list[str]) -> None:
    cmd, directory = argv[0], argv[1]
    if cmd == "write-set":
        write_set(directory, int(argv[2]), int(argv[3]))
    elif cmd == "hashes":
        print(json.dumps(hashes(directory)))
    elif cmd == "writer":
        writer(directory, float(argv[2]))
    elif cmd == "check-writer":
        check_writer(directory)
    elif cmd == "db-writer":
        db_writer(directory, argv[2], float(argv[3]))
    elif cmd == "check-db":
        print(json.dumps(check_db(directory)))
    elif cmd == "fill-blocks":
        fill_blocks(directory)
    elif cmd == "fill-inodes":
        fill_inodes(directory)
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
