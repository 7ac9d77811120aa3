"""The one way liveng runs external commands.

Scrubbed environment, stdin from /dev/null, every command logged, failures raised as
CommandError carrying the command line and its stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, BinaryIO

from liveng.host.errors import CommandError

log = logging.getLogger("liveng.run")

_KEEP = ("PATH", "TERM", "TMPDIR", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY")
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def scrubbed_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in _KEEP if k in os.environ}
    env.setdefault("PATH", _DEFAULT_PATH)
    # sbin is not on a normal user's PATH, but mkfs.*, sfdisk and friends live there.
    for d in ("/usr/sbin", "/sbin"):
        if d not in env["PATH"].split(":"):
            env["PATH"] += ":" + d
    env["LC_ALL"] = "C.UTF-8"
    env["SOURCE_DATE_EPOCH"] = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not env["SOURCE_DATE_EPOCH"]:
        del env["SOURCE_DATE_EPOCH"]
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    capture: bool = False,
    input_bytes: bytes | None = None,
    check: bool = True,
    progress: Callable[[str], None] | None = None,
    stdout: BinaryIO | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command. stdout is captured when ``capture``, goes to the open file ``stdout`` when given;
    stderr is always captured for errors and, with ``progress``, also handed to it line by line while
    the command runs."""
    args = [str(a) for a in argv]
    log.debug("$ %s", shlex.join(args))
    if progress is not None:
        assert not capture and input_bytes is None and stdout is None, "progress streams stderr only"
        return _run_streaming(args, env, cwd, check, progress)
    proc = subprocess.run(
        args,
        env=scrubbed_env(env),
        cwd=cwd,
        input=input_bytes,
        stdin=None if input_bytes is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else stdout if stdout is not None else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    if proc.stderr:
        log.debug("%s", proc.stderr.decode(errors="replace").rstrip())
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def _run_streaming(args: list[str], env: Mapping[str, str] | None, cwd: Path | None, check: bool,
                   progress: Callable[[str], None]) -> subprocess.CompletedProcess[bytes]:
    lines: list[bytes] = []
    with subprocess.Popen(args, env=scrubbed_env(env), cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        assert proc.stderr is not None
        for raw in proc.stderr:
            lines.append(raw)
            progress(raw.decode(errors="replace").rstrip("\n"))
    stderr = b"".join(lines)
    if stderr:
        log.debug("%s", stderr.decode(errors="replace").rstrip())
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, stderr.decode(errors="replace"))
    return subprocess.CompletedProcess(args, proc.returncode, None, stderr)


@contextlib.contextmanager
def reading(argv: Sequence[str | Path]) -> Iterator[IO[bytes]]:
    """Run a command and read its stdout as a stream (a decompressor, say); the command is stopped
    when the reader is done, early or not. Its exit status is the reader's to judge from the data."""
    args = [str(a) for a in argv]
    log.debug("$ %s", shlex.join(args))
    with subprocess.Popen(args, env=scrubbed_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        try:
            yield proc.stdout
        finally:
            proc.kill()
            proc.wait()


def output(argv: Sequence[str | Path], *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run a command and return its stdout as text."""
    return run(argv, env=env, cwd=cwd, capture=True).stdout.decode()


def interactive(argv: Sequence[str | Path]) -> int:
    """Run a command on the caller's terminal (stdin, stdout and stderr inherited); return its exit code."""
    args = [str(a) for a in argv]
    log.info("$ %s", shlex.join(args))
    return subprocess.run(args, env=scrubbed_env(), check=False).returncode
