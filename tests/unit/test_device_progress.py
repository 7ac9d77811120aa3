"""liveng/device/progress.py: the console's progress line, in a log and on a terminal, during real
downloads from test_fetch's HTTP server."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from liveng import layout
from liveng.device import fetch
from liveng.device.progress import ConsoleProgress
from liveng.device.runner import DeviceError
from tests.unit.test_fetch import Served, metadata_for, serving, system_bytes


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Served, str]]:
    monkeypatch.setattr(fetch, "RETRY_DELAY", 0.0)
    with serving(tmp_path / "www") as result:
        yield result


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_progress() -> None:
    mib = layout.MiB
    log, tty = io.StringIO(), Terminal()
    for stream in (log, tty):
        progress = ConsoleProgress(stream)
        progress.begin("downloading b")
        for done in (0, 123 * mib, 270 * mib, 270 * mib):
            progress(done, 270 * mib)
    assert log.getvalue() == "liveng: downloading b 0% (0/270 MiB)\nliveng: downloading b 100% (270/270 MiB)\n"
    assert tty.getvalue() == ("\rliveng: downloading b 0% (0/270 MiB)\rliveng: downloading b 45% (123/270 MiB)"
                              "\rliveng: downloading b 100% (270/270 MiB)\n")


def test_console_progress_is_labelled_by_each_operation(server: tuple[Served, str], tmp_path: Path) -> None:
    served, base = server
    system = system_bytes(20_000)
    (served.root / "b").write_bytes(system)
    log = io.StringIO()
    progress = ConsoleProgress(log)
    fetch.download(base + "b", tmp_path / "b.part", None, progress)  # no size known: the server's
    fetch.check_system(tmp_path / "b.part", metadata_for(system), progress)
    assert log.getvalue().splitlines() == ["liveng: downloading b 0% (0/0 MiB)", "liveng: downloading b 100% (0/0 MiB)",
                                           "liveng: checking the new system 100% (0/0 MiB)"]


def test_redrawn_line_cut_short_by_an_error_is_ended(server: tuple[Served, str], tmp_path: Path) -> None:
    served, base = server
    (served.root / "b").write_bytes(b"x" * 1000)
    served.drop_after = 0
    tty = Terminal()
    with pytest.raises(DeviceError, match="cannot download"):
        fetch.download(base + "b", tmp_path / "b.part", 1000, ConsoleProgress(tty))
    # The error starts a line of its own.
    assert tty.getvalue().startswith("\rliveng: downloading b 0% (0/0 MiB)") and tty.getvalue().count("\n") == 1
    assert tty.getvalue().endswith("\n")
