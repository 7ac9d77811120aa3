"""aptrecover on a stand-in root: apt's files as a power cut leaves them (seed 1032437738: a cached
.deb of the right size with zero-filled block tails, an extended_states apt cannot parse), a torn
package list, a torn InRelease; and what must stay (whole lists, other files, dpkg's locks honoured)."""

from __future__ import annotations

import configparser
import fcntl
import hashlib
import os
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest

from liveng import layout
from liveng.device import aptrecover

PREFIX = "deb.debian.org_debian_dists_bookworm_"
PACKAGES = b"Package: hello\nVersion: 2.10-3\nArchitecture: amd64\n\nPackage: figlet\nVersion: 2.2.5-3\n\n"
TRANSLATION = b"Package: hello\nDescription-md5: 1\nDescription-en: hello\n\n"


def in_release(files: dict[str, bytes]) -> bytes:
    lines = [f" {hashlib.sha256(data).hexdigest()} {len(data)} {path}" for path, data in files.items()]
    return ("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Debian\nSuite: bookworm\nMD5Sum:\n"
            " d41d8cd98f00b204e9800998ecf8427e 0 main/binary-amd64/Release\nSHA256:\n" + "\n".join(lines)
            + "\n-----BEGIN PGP SIGNATURE-----\n\niQIz\n-----END PGP SIGNATURE-----\n").encode()


def torn(data: bytes, keep: int) -> bytes:
    """The size kept, the tail from ``keep`` never written (zeros), as the cut left the .deb."""
    return data[:keep] + b"\0" * (len(data) - keep)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for d in ("var/cache/apt/archives/partial", "var/lib/apt/lists/partial", "var/lib/dpkg"):
        (tmp_path / d).mkdir(parents=True)
    lists = tmp_path / aptrecover.LISTS
    (lists / f"{PREFIX}InRelease").write_bytes(in_release(
        {"main/binary-amd64/Packages": PACKAGES, "main/i18n/Translation-en": TRANSLATION}))
    (lists / f"{PREFIX}main_binary-amd64_Packages").write_bytes(PACKAGES)
    (lists / f"{PREFIX}main_i18n_Translation-en").write_bytes(TRANSLATION)
    (tmp_path / aptrecover.EXTENDED_STATES).write_text("Package: libfoo1\nArchitecture: amd64\nAuto-Installed: 1\n")
    (tmp_path / "var/cache/apt/pkgcache.bin").write_bytes(b"cache")
    return tmp_path


def test_whole_files_stay(root: Path) -> None:
    report = aptrecover.recover(root)
    assert report.set_aside == []
    assert report.removed == ["/var/cache/apt/pkgcache.bin"]  # made again by apt at its next run
    assert len(list((root / aptrecover.LISTS).glob(f"{PREFIX}*"))) == 3
    assert (root / aptrecover.EXTENDED_STATES).exists()


def test_what_seed_1032437738_left_is_cleaned(root: Path) -> None:
    archives = root / aptrecover.ARCHIVES
    deb = os.urandom(20000)
    (archives / "liveng-faults-demo_2_all.deb").write_bytes(torn(deb, 4096 - 139))
    (archives / "partial/hello_2.10-3_amd64.deb").write_bytes(deb[:5000])
    (archives / "lock").write_bytes(b"")
    (root / aptrecover.EXTENDED_STATES).write_bytes(torn(b"Package: libfoo1\nArchitecture: amd64\n", 12))
    said: list[str] = []
    report = aptrecover.recover(root, said.append)
    assert not list(archives.glob("*.deb")) and not list((archives / "partial").iterdir())
    assert (archives / "lock").exists()
    assert "/var/cache/apt/archives/liveng-faults-demo_2_all.deb" in report.removed
    assert report.set_aside == [f"/{aptrecover.EXTENDED_STATES}"]
    assert not (root / aptrecover.EXTENDED_STATES).exists()
    assert (root / (aptrecover.EXTENDED_STATES + aptrecover.SET_ASIDE_SUFFIX)).exists()
    assert any("apt-mark auto" in line for line in said)


def test_a_torn_list_goes_with_its_inrelease(root: Path) -> None:
    lists = root / aptrecover.LISTS
    (lists / f"{PREFIX}main_binary-amd64_Packages").write_bytes(torn(PACKAGES, 30))
    aptrecover.recover(root)
    assert sorted(p.name for p in lists.glob(f"{PREFIX}*")) == [f"{PREFIX}main_i18n_Translation-en"]


def test_a_torn_inrelease_takes_its_source_with_it(root: Path) -> None:
    lists = root / aptrecover.LISTS
    other = lists / "security.debian.org_debian-security_dists_bookworm-security_InRelease"
    other.write_bytes(in_release({}))
    release = lists / f"{PREFIX}InRelease"
    release.write_bytes(torn(release.read_bytes(), 200))
    aptrecover.recover(root)
    assert not list(lists.glob(f"{PREFIX}*"))
    assert other.exists()


REPO = "apt.example.org_debian_dists_stable_"  # a source that publishes Release and Release.gpg only


def _release_source(lists: Path) -> None:
    signed = in_release({"main/binary-amd64/Packages": PACKAGES})
    body, _, signature = signed.partition(b"-----BEGIN PGP SIGNATURE-----")
    (lists / f"{REPO}Release").write_bytes(body.split(b"\n\n", 1)[1])
    (lists / f"{REPO}Release.gpg").write_bytes(b"-----BEGIN PGP SIGNATURE-----" + signature)
    (lists / f"{REPO}main_binary-amd64_Packages").write_bytes(PACKAGES)


def test_a_source_without_inrelease(root: Path) -> None:
    lists = root / aptrecover.LISTS
    _release_source(lists)
    aptrecover.recover(root)
    assert len(list(lists.glob(f"{REPO}*"))) == 3  # whole: kept
    # A torn list goes, with the Release that named it and its signature.
    (lists / f"{REPO}main_binary-amd64_Packages").write_bytes(torn(PACKAGES, 30))
    report = aptrecover.recover(root)
    assert not list(lists.glob(f"{REPO}*"))
    assert f"/{aptrecover.LISTS}/{REPO}Release.gpg" in report.removed
    assert len(list(lists.glob(f"{PREFIX}*"))) == 3  # the other source is whole
    # A torn signature, or a torn Release: the whole source goes.
    for name, keep in (("Release.gpg", 10), ("Release", 40)):
        _release_source(lists)
        (lists / f"{REPO}{name}").write_bytes(torn((lists / f"{REPO}{name}").read_bytes(), keep))
        aptrecover.recover(root)
        assert not list(lists.glob(f"{REPO}*")), name
    # An unsigned source ([trusted=yes]: no Release.gpg): its Release still says which lists are whole
    # (seed 4051132021: a whole source's lists were removed for want of a signature).
    _release_source(lists)
    (lists / f"{REPO}Release.gpg").unlink()
    assert aptrecover.recover(root).removed == [] and len(list(lists.glob(f"{REPO}*"))) == 2
    (lists / f"{REPO}main_binary-amd64_Packages").write_bytes(torn(PACKAGES, 30))
    aptrecover.recover(root)
    assert not list(lists.glob(f"{REPO}*"))
    _release_source(lists)
    (lists / f"{REPO}Release.gpg").unlink()
    (lists / f"{REPO}Release").write_bytes(torn((lists / f"{REPO}Release").read_bytes(), 40))
    aptrecover.recover(root)
    assert not list(lists.glob(f"{REPO}*"))


def test_links_are_removed_not_followed(root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = tmp_path_factory.mktemp("outside") / "precious.deb"
    outside.write_bytes(b"keep")
    link = root / aptrecover.ARCHIVES / "x.deb"
    link.symlink_to(outside)
    aptrecover.recover(root)
    assert not link.is_symlink() and outside.read_bytes() == b"keep"


@pytest.mark.parametrize("text, parses", [
    (b"", True),
    (b"Package: a\nArchitecture: all\nAuto-Installed: 1\n\nPackage: b\nArchitecture: all\n", True),
    (b"Package: a\n continued\n", True),
    (b"Package: a\nArchitecture: all\nAuto-Inst\0\0\0", False),
    (b"Package: a\ngarbage without a colon\n", False),
    (b" leading continuation\n", False),
    (b"Package: \xff\xfe\n", False),
])
def test_extended_states_syntax(tmp_path: Path, text: bytes, parses: bool) -> None:
    path = tmp_path / "extended_states"
    path.write_bytes(text)
    assert aptrecover._parses(path) is parses


def test_it_waits_for_an_apt_that_holds_its_lock(root: Path) -> None:
    """Two at once: dpkg or apt running when the service starts (apt-pkg's locks are fcntl locks)."""
    lock = root / "var/lib/dpkg/lock-frontend"
    (root / aptrecover.ARCHIVES / "a.deb").write_bytes(b"x")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(1.5)\n")], stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    start = time.monotonic()
    aptrecover.recover(root)
    assert time.monotonic() - start > 0.5
    assert holder.wait() == 0
    assert not (root / aptrecover.ARCHIVES / "a.deb").exists()
    fd = os.open(lock, os.O_RDWR)  # and it let go
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_the_unit_waits_for_what_liveng_p7_leaves() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string(resources.files("liveng.device").joinpath("data/systemd/liveng-apt-recover.service")
                     .read_text())
    assert unit["Unit"]["ConditionPathExists"] == layout.P7_UNCLEAN_PATH
    assert unit["Service"]["ExecStart"] == "/usr/sbin/liveng apt-recover"
