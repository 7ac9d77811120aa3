"""The signage example (examples/signage) built for the PC boots in QEMU with a display and shows the
page whose address is in signage-url.txt on p1, served from the host: QMP screendumps must have the
page's colours where the page puts them. Then the browser is killed and systemd brings the page back."""

from __future__ import annotations

import functools
import http.server
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from liveng.host.cli import main
from liveng.host.qmp import Qmp
from tests.boot.test_settings import free_port, write_p1
from tests.vm import Vm

pytestmark = pytest.mark.boot

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/signage/signage.toml"
RED, BLUE = (0xE0, 0x20, 0x20), (0x20, 0x40, 0xE0)
# Two bands the height of a 1024x768 screen's halves (the framebuffer's mode under QEMU's std VGA).
PAGE = ("<!DOCTYPE html><html><head><title>test</title></head><body style=\"margin:0\">"
        "<div style=\"height:384px;background:#e02020\"></div><div style=\"height:384px;background:#2040e0\">"
        "</div></body></html>")


def read_ppm(path: Path) -> tuple[int, int, bytes]:
    data = path.read_bytes()
    fields = data.split(maxsplit=4)
    assert fields[0] == b"P6" and fields[3] == b"255", "QEMU's screendump is a binary PPM"
    return int(fields[1]), int(fields[2]), fields[4]


def pixel(shot: tuple[int, int, bytes], x: int, y: int) -> tuple[int, int, int]:
    width, _, rgb = shot
    i = (y * width + x) * 3
    return rgb[i], rgb[i + 1], rgb[i + 2]


def close(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    return all(abs(p - q) <= 24 for p, q in zip(a, b, strict=True))


def shows_the_page(shot: tuple[int, int, bytes]) -> bool:
    width, height, _ = shot
    top = [pixel(shot, x, y) for x in (width // 8, width // 2, width - width // 8) for y in (height // 8, height // 3)]
    bottom = [pixel(shot, x, y) for x in (width // 8, width // 2, width - width // 8)
              for y in (height - height // 3, height - height // 8)]
    return all(close(p, RED) for p in top) and all(close(p, BLUE) for p in bottom)


def write_png(shot: tuple[int, int, bytes], dest: Path) -> None:
    """The screendump as a PNG (for docs/ and for a failing test's report)."""
    width, height, rgb = shot
    raw = b"".join(b"\0" + rgb[y * width * 3:(y + 1) * width * 3] for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    dest.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


@pytest.fixture()
def page_server(tmp_path: Path) -> Iterator[tuple[int, list[str]]]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text(PAGE)
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            requests.append(self.path)

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port, requests
    server.shutdown()


def wait_for_page(qmp: Qmp, tmp_path: Path, timeout: float) -> tuple[float, tuple[int, int, bytes]]:
    start = time.monotonic()
    ppm = tmp_path / "screen.ppm"
    while True:
        qmp.execute("screendump", filename=str(ppm))
        shot = read_ppm(ppm)
        if shows_the_page(shot):
            return time.monotonic() - start, shot
        if time.monotonic() - start > timeout:
            write_png(shot, tmp_path / "last-screen.png")
            pytest.fail(f"the page did not appear within {timeout} s; last screen: {tmp_path / 'last-screen.png'}")
        time.sleep(5)


def test_signage_example_shows_the_page_from_p1_and_comes_back(page_server: tuple[int, list[str]],
                                                                tmp_path: Path) -> None:
    port, requests = page_server
    image = tmp_path / "signage.img"
    assert main(["build", str(EXAMPLE), "--target", "pc", "--autologin", "-o", str(image), "--cached-rootfs"]) == 0
    # QEMU's user network: the host is 10.0.2.2 to the guest.
    write_p1(image, "signage-url.txt", f"http://10.0.2.2:{port}/index.html\n", tmp_path)
    sock = tmp_path / "qmp.sock"
    with Vm(image, tmp_path / "console.log", qmp=sock) as vm:
        boot = vm.wait_shell()
        assert "liveng.mode=ram" in vm.sh("cat /proc/cmdline")
        qmp = Qmp(sock)
        waited, shot = wait_for_page(qmp, tmp_path, 600)
        print(f"power-on to shell {boot:.1f} s; the page {waited:.1f} s later")
        write_png(shot, tmp_path / "signage.png")
        assert "/index.html" in requests
        assert vm.sh("systemctl is-active liveng-signage.service") == "active"
        first = vm.sh("systemctl show -p MainPID --value liveng-signage.service")
        vm.sh("pkill -KILL netsurf-fb")
        deadline = time.monotonic() + 120
        while vm.sh("systemctl show -p MainPID --value liveng-signage.service") in (first, "0"):
            assert time.monotonic() < deadline, "systemd did not restart the browser"
            time.sleep(3)
        waited, _ = wait_for_page(qmp, tmp_path, 300)
        print(f"the page back {waited:.1f} s after the browser was killed")
        assert vm.sh("systemctl show -p NRestarts --value liveng-signage.service") != "0"
        vm.power_cut()
