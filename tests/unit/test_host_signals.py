"""A host command stopped by SIGTERM or SIGHUP unwinds: its temporary files go, its exit code says why."""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import pytest

from liveng.host import cli, qemu


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_run_removes_its_temporary_directory(signum: signal.Signals, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Path] = []

    def run_vm(_cfg: qemu.VmConfig) -> int:
        with tempfile.TemporaryDirectory(prefix="liveng-run-", dir=tmp_path) as name:
            made.append(Path(name))
            (Path(name) / "VARS.fd").write_bytes(b"x")
            os.kill(os.getpid(), signum)
            return 0  # not reached: the signal's handler raises

    monkeypatch.setattr(qemu, "run_vm", run_vm)
    before = signal.getsignal(signum)
    assert cli.main(["run", str(tmp_path / "x.img")]) == 128 + signum
    assert made and not made[0].exists()
    assert signal.getsignal(signum) is before
