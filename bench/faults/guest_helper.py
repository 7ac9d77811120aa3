"""Runs inside the guest (uploaded by bench.faults each session; standard library only): writes user
files the way an application that cares would (write, fsync, rename, fsync the directory) and checks
them after the fault.

    python3 helper.py write-set DIR COUNT SEED      # files fsynced; prints {name: sha256} as JSON
    python3 helper.py hashes DIR                     # {name: sha256} of the files there, as JSON
    python3 helper.py writer DIR PAUSE               # writes until killed (see writer())
    python3 helper.py check-writer DIR               # JSON: logged, lost, torn, whole, partial_log
    python3 helper.py fill-blocks DIR                # p7 full: fallocate until ENOSPC
    python3 helper.py fill-inodes DIR                # p7 without free inodes: empty files until ENOSPC
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import sys
import time

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


def check_writer(directory: str) -> None:
    lost: list[str] = []
    torn: list[str] = []
    logged = whole_files = 0
    if not os.path.isdir(directory):
        print(json.dumps({"logged": 0, "lost": [], "torn": [], "whole": 0, "partial_log": False, "absent": True}))
        return
    try:
        with open(os.path.join(directory, "log"), "rb") as f:
            text = f.read()
    except FileNotFoundError:
        text = b""
    lines = text.split(b"\n")
    partial = lines[-1] != b""  # an append cut short: the file it names was not logged yet
    for line in lines[:-1]:
        name, _, digest = line.decode(errors="replace").partition(" ")
        logged += 1
        try:
            with open(os.path.join(directory, name), "rb") as f:
                ok = sha(f.read()) == digest
        except FileNotFoundError:
            ok = False
        if not ok:
            lost.append(name)
    for name in sorted(os.listdir(directory)):
        if name.startswith("live-"):
            with open(os.path.join(directory, name), "rb") as f:
                if whole(f.read()):
                    whole_files += 1
                else:
                    torn.append(name)
    print(json.dumps({"logged": logged, "lost": lost, "torn": torn, "whole": whole_files, "partial_log": partial}))


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
    elif cmd == "fill-blocks":
        fill_blocks(directory)
    elif cmd == "fill-inodes":
        fill_inodes(directory)
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
