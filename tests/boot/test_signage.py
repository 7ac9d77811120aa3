"""The digital-signage example (examples/signage) built for the PC and booted in QEMU with a display:
signage-url.txt on p1 points at a page served from the host (four solid colour quadrants), and within
a bounded time QEMU's screendump has the page's colours at the quadrants' centres. Then the browser
is killed, and the same page comes back on screen (systemd starts cage and the browser again).

One long boot of a large image (Firefox, Mesa): outside CI's budget, so it runs only with
LIVENG_LONG_TESTS=1 (bench/RESULTS.md has its times). The last screendump is kept as PNG beside the
run's images (signage.png), the picture in README's examples section."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from liveng import layout
from liveng.host.cli import main
from liveng.host.disk import read_table
from liveng.host.qmp import Qmp
from tests.boot import golden
from tests.boot.conftest import TEST_CMDLINE
from tests.httpserve import serve
from tests.screen import Rgb, Screen, close, read_ppm
from tests.vm import Vm

pytestmark = [pytest.mark.boot,
              pytest.mark.skipif(os.environ.get("LIVENG_LONG_TESTS") != "1",
                                 reason="a long boot: LIVENG_LONG_TESTS=1 (outside CI)")]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/signage"
# The page's quadrants: top left, top right, bottom left, bottom right (fractions of the screen).
QUADRANTS: dict[str, tuple[float, float, Rgb]] = {
    "top left": (0.25, 0.25, (220, 30, 30)),
    "top right": (0.75, 0.25, (30, 160, 60)),
    "bottom left": (0.25, 0.75, (30, 70, 200)),
    "bottom right": (0.75, 0.75, (240, 200, 20)),
}
PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>liveng signage test</title><style>
html, body {{ margin: 0; height: 100%; overflow: hidden; }}
div {{ position: fixed; width: 50vw; height: 50vh; }}
p {{ position: fixed; left: 0; right: 0; top: 46vh; margin: 0; text-align: center;
     font: bold 5vh sans-serif; color: white; text-shadow: 0 0 4px black; }}
</style></head><body>
{divs}<p>liveng signage: served by the host, shown by the device</p>
</body></html>
"""
# Power-on to the page, and a browser restart to the page again: bounded, with room for a loaded machine
# (2026-12-06, load 3-5: the page 876 s after power-on, back 267 s after the browser was killed).
PAGE_TIMEOUT = 1500
RESTART_TIMEOUT = 900


def page_html() -> str:
    divs = ""
    for x, y, rgb in QUADRANTS.values():
        left, top = ("0" if x < 0.5 else "50vw"), ("0" if y < 0.5 else "50vh")
        divs += f'<div style="left: {left}; top: {top}; background: rgb{rgb};"></div>\n'
    return PAGE.format(divs=divs)


def mismatches(screen: Screen) -> list[str]:
    out = []
    for name, (fx, fy, want) in QUADRANTS.items():
        got = screen.pixel(int(fx * screen.width), int(fy * screen.height))
        if not close(got, want):
            out.append(f"{name}: {got} instead of {want}")
    return out


def wait_for_page(vm: Vm, qmp: Qmp, shots: Path, timeout: float) -> tuple[float, Screen]:
    """Screendumps every few seconds until the page's colours are where the page puts them."""
    start = time.monotonic()
    last = ["no screendump yet"]
    while time.monotonic() - start < timeout:
        qmp.screendump(shots / "screen.ppm")
        screen = read_ppm(shots / "screen.ppm")
        last = mismatches(screen)
        if not last:
            return time.monotonic() - start, screen
        vm.pump(5)
    raise AssertionError(f"the page was not on screen within {timeout} s: {'; '.join(last)}")


def build_signage(workdir: Path) -> Path:
    """The example as it is, plus what every test image has (serial autologin to check the services,
    a short GRUB menu, the kernel arguments that speed up TCG): built once per run."""
    image = workdir / "signage.img"
    with golden.locked(image):
        if not image.exists():
            recipe_dir = workdir / "signage-recipe"
            shutil.rmtree(recipe_dir, ignore_errors=True)
            shutil.copytree(EXAMPLE, recipe_dir, symlinks=True)
            cmdline = ", ".join(f'"{a}"' for a in TEST_CMDLINE)
            (recipe_dir / "test.toml").write_text(f"autologin = true\ngrub_timeout = 1\ncmdline = [{cmdline}]\n"
                                                  + (EXAMPLE / "signage.toml").read_text())
            assert main(["build", str(recipe_dir / "test.toml"), "--target", "pc", "-o", str(image),
                         "--cached-rootfs", "--no-imager-manifest"]) == 0
    return image


def write_p1(image: Path, name: str, text: str, tmp: Path) -> None:
    src = tmp / name
    src.write_text(text)
    p1 = read_table(image).entry(layout.partition(layout.Role.BOOT).number).start
    subprocess.run(["mcopy", "-o", "-i", f"{image}@@{p1}", str(src), f"::/{name}"], check=True,
                   env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})


def test_signage_shows_the_page_from_p1_and_comes_back_after_a_crash(boot_dir: Path, tmp_path: Path) -> None:
    image = golden.copy(build_signage(boot_dir), tmp_path / "disk.img")
    site = tmp_path / "site"
    site.mkdir()
    (site / "board.html").write_text(page_html())
    with serve(site) as server:
        # The guest reaches the host's 127.0.0.1 as 10.0.2.2 (QEMU's user-mode network).
        url = f"http://10.0.2.2:{server.port}/board.html"
        write_p1(image, "signage-url.txt", f"# the page this sign shows\n{url}\n", tmp_path)
        sock = tmp_path / "qmp.sock"
        with Vm(image, tmp_path / "console.log", memory=3072, qmp=sock) as vm:
            qmp = Qmp(sock)
            _, screen = wait_for_page(vm, qmp, tmp_path, PAGE_TIMEOUT)
            seconds_to_page = time.monotonic() - vm.started
            print(f"signage: the page on screen {seconds_to_page:.0f} s after power-on, "
                  f"{screen.width}x{screen.height}")
            assert "GET /board.html" in server.requests
            vm.wait_shell(timeout=300)
            assert vm.sh("cat /run/signage/url") == url
            assert vm.sh("systemctl is-active signage-kiosk.service") == "active"
            # The browser runs as the kiosk user, which has no password and no login shell.
            assert vm.sh("ps -o user= -C firefox-esr | sort -u") == "kiosk"
            assert vm.sh("getent shadow kiosk | cut -d: -f2").startswith("!")
            assert vm.sh("getent passwd kiosk | cut -d: -f7") == "/usr/sbin/nologin"
            # Running from RAM: the root is the live system's overlay in RAM, not on the card.
            assert "liveng.mode=ram " in vm.sh("cat /proc/cmdline") + " "
            assert vm.sh("findmnt -n -o FSTYPE /run/live/overlay") == "tmpfs"
            qmp.screendump(boot_dir / "signage.png", fmt="png")

            # The browser dies: systemd starts cage and Firefox again, and the page comes back.
            vm.sh("pkill -KILL -x firefox-esr")
            gone = time.monotonic() + 120
            while not mismatches(screen):  # first the page must leave the screen (cage exits with it)
                assert time.monotonic() < gone, "the page stayed on screen after the browser was killed"
                vm.pump(2)
                qmp.screendump(tmp_path / "screen.ppm")
                screen = read_ppm(tmp_path / "screen.ppm")
            try:
                restarted, _ = wait_for_page(vm, qmp, tmp_path, RESTART_TIMEOUT)
            except AssertionError as exc:  # what the sign was doing, for whoever reads the failure
                qmp.screendump(tmp_path / "restart-failed.png", fmt="png")
                state = vm.sh("journalctl -b -u signage-kiosk --no-pager -n 40 -o short-monotonic; "
                              "ps -u kiosk -o pid,etimes,time,stat,args --width 200; uptime", check=False)
                raise AssertionError(f"{exc}\nrequests: {server.requests}\n{state}") from None
            print(f"signage: the page back {restarted:.0f} s after the browser was killed")
            assert int(vm.sh("systemctl show -P NRestarts signage-kiosk.service")) >= 1
            qmp.close()
