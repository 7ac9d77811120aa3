"""Whole-system updates on a booted PC image: version 2 of the test image, bundled and signed, served
over HTTP from the host; v1 takes it, keeps its data, boots v2; bad bundles are refused with
nothing written; a v2 that fails its health check gives v1 back, with v1's delta as it was."""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
from pathlib import Path

import pytest

from liveng import bundle, layout
from tests.boot import golden
from tests.boot.conftest import (
    PACKAGE,
    RELEASE_FILE,
    make_signing_key,
    partition_hash,
    persistence_needs_recovery,
)
from tests.httpserve import serve
from tests.vm import Vm

pytestmark = [pytest.mark.boot]

HOST = "10.0.2.2"  # the host, seen from QEMU's user-mode network
# What the owner's data looks like: names, sizes and times of everything in /home and /srv (the same
# delta, as a rollback must give it back), and the content of its files (carried into a new delta).
DATA = "find /home /srv -xdev -printf '%p %s %T@\\n' | sort | sha256sum"
CONTENT = "cd / && find home srv -xdev -type f -print0 | sort -z | xargs -0r sha256sum | sha256sum"
UNTOUCHED = (layout.Role.BOOT, layout.Role.SYSTEM, layout.Role.SLOT_A, layout.Role.SLOT_B)


def ustatus(vm: Vm) -> dict[str, object]:
    out = vm.sh("liveng update status --json")
    status: dict[str, object] = json.loads(out[out.index("{"):])
    return status


def hashes(disk: Path) -> dict[layout.Role, str]:
    return {role: partition_hash(disk, role) for role in UNTOUCHED}


def resign(data: bytes, secret: Path, home: Path) -> bytes:
    """A detached signature of ``data`` by the key in ``secret``."""
    home.mkdir(mode=0o700, exist_ok=True)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run([*gpg, "--import", str(secret)], check=True, capture_output=True)
    (home / "data").write_bytes(data)
    subprocess.run([*gpg, "--detach-sign", "-o", str(home / "data.sig"), str(home / "data")], check=True)
    sig = (home / "data.sig").read_bytes()
    for f in ("data", "data.sig"):
        (home / f).unlink()
    return sig


def bad_bundles(good: Path, key: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    """Bundles the device must refuse, each with the words its refusal must say."""
    raw = good.read_bytes()
    foot = bundle.parse_footer(raw[-bundle.FOOTER_SIZE:], len(raw))
    meta_bytes = raw[foot.metadata_offset:foot.signature_offset]
    meta = json.loads(meta_bytes)
    system = raw[:meta["system"]["size"]]
    out = tmp / "bad"
    out.mkdir()
    stranger_sec, stranger_pub = tmp / "stranger.sec", tmp / "stranger.pub"
    make_signing_key(tmp / "stranger-home", stranger_sec, stranger_pub, "someone else")

    def write(name: str, system_bytes: bytes, metadata: dict[str, object], signer: Path) -> Path:
        data = (json.dumps(metadata, indent=1, sort_keys=True) + "\n").encode()
        path = out / f"{name}.bundle"
        path.write_bytes(system_bytes + bundle.trailer(len(system_bytes), data, resign(data, signer, tmp / name)))
        return path

    altered = bytearray(system)
    altered[len(altered) // 2] ^= 0xFF  # inside the squashfs, the largest part of the ISO
    small = b"\0" * 4096  # the refusals below come before the system's hash is checked
    tiny = {**meta, "system": {"size": len(small), "sha256": "0" * 64}}
    truncated = out / "truncated.bundle"
    truncated.write_bytes(raw[: len(raw) // 3])
    return {
        "other key": (write("other-key", system, meta, stranger_sec), "signature"),
        "truncated": (truncated, "footer"),
        "altered": (write("altered", bytes(altered), meta, key), "does not match its signed hash"),
        "other arch": (write("other-arch", small, {**tiny, "arch": "arm64", "target": "rpi"}, key), "rpi/arm64"),
        "older": (write("older", small, {**tiny, "version": "0.9"}, key), "not newer"),
    }


def nothing_installed(vm: Vm) -> bool:
    """No system and no parked delta on p7 (a refused or broken-off update leaves neither)."""
    left = vm.sh(f"ls /run/live/persistence/*/{layout.SYSTEMS_DIR} /run/live/persistence/*/{layout.DELTAS_DIR}"
                 " 2>/dev/null | grep -v '^/' || true")
    return left == ""


def push_deb(vm: Vm, workdir: Path) -> None:
    """A tiny package for apt to install from a file (no mirror needed)."""
    root = workdir / "deb"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text("Package: liveng-test-v1\nVersion: 1.0\nArchitecture: all\n"
                                         "Maintainer: liveng tests <t@example.org>\nDescription: v1 only\n")
    (root / "usr/share/liveng-test-v1").mkdir(parents=True)
    (root / "usr/share/liveng-test-v1/marker").write_text("v1\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(workdir / "t.deb")], check=True,
                   capture_output=True)
    blob = base64.b64encode((workdir / "t.deb").read_bytes()).decode()
    vm.sh(f"echo {blob} | base64 -d > /tmp/t.deb && apt-get install -y -q /tmp/t.deb >/dev/null")


def test_update_keeps_data_refuses_bad_bundles_and_boots_v2(bios_golden: golden.Golden, v2_channel: Path,
                                                             update_key: tuple[Path, Path], tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    bad = bad_bundles(v2_channel / "v2.bundle", update_key[0], tmp_path)
    with serve(v2_channel) as channel, serve(tmp_path / "bad") as badweb, \
            golden.resume(bios_golden, disk, tmp_path / "console.log") as vm:
        before = hashes(disk)
        vm.sh("mkdir -p /home/tester /srv/data && echo home > /home/tester/notes.txt && echo srv > /srv/data/db.txt"
              " && echo v1 > /etc/v1-only.conf && sync")
        push_deb(vm, tmp_path)
        for name, (path, words) in bad.items():
            out = vm.sh(f"liveng update apply http://{HOST}:{badweb.port}/{path.name}", timeout=1800, check=False)
            assert "error" in out and words in out, (name, out)
        assert nothing_installed(vm)
        assert hashes(disk) == before

        # The web server dies a third into the bundle: apply gives up after its retries, keeping what
        # arrived and installing nothing; with the server back, the same apply resumes from there.
        size = (v2_channel / "v2.bundle").stat().st_size
        channel.down_after = size // 3
        out = vm.sh(f"liveng update apply http://{HOST}:{channel.port}/", timeout=2400, check=False)
        assert "error" in out and "bytes received are kept" in out, out
        assert nothing_installed(vm)
        assert hashes(disk) == before
        channel.down_after = None
        out = vm.sh(f"liveng update apply http://{HOST}:{channel.port}/", timeout=2400)
        assert "system 2 installed" in out and "/home" in out and "/srv" in out, out
        resumed = [r for r in channel.requests if "v2.bundle bytes=" in r]
        assert resumed and int(resumed[-1].split("bytes=")[1].rstrip("-")) >= size // 4, channel.requests
        assert channel.sent < 2 * size  # the rest, not the whole bundle again
        vm.reboot()
        vm.sh("systemctl start liveng-boot-ok.service")
        st = ustatus(vm)
        assert st["version"] == "2" and str(st["running"]).startswith("2_"), st
        assert vm.sh(f"dpkg-query -W -f '${{Status}}' {PACKAGE}") == "install ok installed"
        assert vm.sh(f"cat {RELEASE_FILE}") == "v2"
        assert vm.sh("cat /home/tester/notes.txt /srv/data/db.txt") == "home\nsrv"
        assert vm.sh("test -e /etc/v1-only.conf || echo gone") == "gone"  # not a kept path
        assert vm.sh("dpkg-query -W liveng-test-v1 2>/dev/null || echo gone") == "gone"  # v2 starts pristine
        kst = json.loads(vm.sh("liveng kernel status --json"))
        assert kst["running"] == "slot-b" and kst["good"] == "slot-b", kst
        assert "verify OK" in vm.sh("liveng verify", timeout=900)
        vm.poweroff()
    assert partition_hash(disk, layout.Role.SYSTEM) == before[layout.Role.SYSTEM]
    # The power-off let go of the system's ISO file (a loop device) and then unmounted p7 cleanly.
    assert not persistence_needs_recovery(disk)


def test_update_failing_its_health_check_gives_v1_back(bios_golden: golden.Golden, v2_channel: Path,
                                                        tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    log = tmp_path / "console.log"
    with serve(v2_channel) as channel, contextlib.ExitStack() as vms:
        vm = vms.enter_context(golden.resume(bios_golden, disk, log))
        vm.sh("mkdir -p /home/tester && echo before > /home/tester/v1.txt && touch /srv/fail-health && sync")
        v1_data = vm.sh(DATA)
        vm.sh(f"liveng update apply http://{HOST}:{channel.port}/", timeout=2400)
        vm.reboot()  # the first try of v2: it comes up, but its health check fails
        assert "health checks failed" in vm.sh("liveng kernel mark-good", check=False)
        assert str(ustatus(vm)["running"]).startswith("2_")
        vm.sh("echo written-on-v2 > /home/tester/v2.txt && sync")
        # The two other tries: each boot through GRUB counts one (cut as GRUB starts the kernel).
        vm.proc.sendline("sync; systemctl reboot")
        for _ in range(layout.TRIES - 1):
            vm.proc.expect_exact("Booting `", timeout=600)
            vm.power_cut()
            vm = vms.enter_context(Vm(disk, log, bios=True))
        vm.wait_shell()
        vm.sh("systemctl start liveng-boot-ok.service")
        st = ustatus(vm)
        assert st["running"] == layout.SYSTEM_FACTORY and st["version"] == "1", st
        assert vm.sh("cat /home/tester/v1.txt") == "before"
        assert vm.sh("test -e /home/tester/v2.txt || echo absent") == "absent"
        assert vm.sh(DATA) == v1_data
        assert vm.sh(f"dpkg-query -W {PACKAGE} 2>/dev/null || echo absent") == "absent"
        kst = json.loads(vm.sh("liveng kernel status --json"))
        assert kst["running"] == "slot-a" and kst["order"][0] == "slot-a", kst
        vm.poweroff()
