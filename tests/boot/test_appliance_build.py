"""An appliance recipe built for real (mmdebstrap from the Debian mirror, no boot): a package from a
local signed repository (file://, its own OpenPGP key), a local .deb with a unit that [services]
enables, an extra tree over the root and a build-time script all land in p2's squashfs. Then a
failing script stops the build with its name and output, and leaves no image."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from liveng import layout
from liveng.host.cli import main
from liveng.host.disk import read_table
from liveng.host.inspect import iso_file
from tests.unit.test_imager_manifest import check_entry, local_path

pytestmark = pytest.mark.boot

UNIT = "[Unit]\nDescription=liveng test\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"


def deb(workdir: Path, name: str, files: dict[str, str]) -> Path:
    root = workdir / f"{name}-pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(f"Package: {name}\nVersion: 1.0\nArchitecture: all\n"
                                         "Maintainer: liveng tests <tests@liveng.invalid>\n"
                                         f"Description: {name} for the appliance build test\n")
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    out = workdir / f"{name}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", root, out], check=True, capture_output=True)
    return out


def signed_repository(workdir: Path) -> tuple[Path, Path]:
    """A flat-free Debian repository (dists/stable/main) with one package, its InRelease signed by a
    key made here with gpg; returns the repository and the armored public key."""
    gnupg = workdir / "gnupg"
    gnupg.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(gnupg)}
    gpg = ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "liveng test repository <repo@liveng.invalid>", "ed25519", "sign",
                    "never"], env=env, check=True, capture_output=True)
    key = workdir / "repo.asc"
    key.write_bytes(subprocess.run([*gpg, "--armor", "--export"], env=env, check=True, capture_output=True).stdout)
    repo = workdir / "repo"
    pool = repo / "pool/main"
    pool.mkdir(parents=True)
    deb(workdir, "liveng-hello", {"usr/share/liveng-hello/hello.txt": "hello from the repository\n"}).rename(
        pool / "liveng-hello_1.0_all.deb")
    binary = repo / "dists/stable/main/binary-amd64"
    binary.mkdir(parents=True)
    packages = subprocess.run(["apt-ftparchive", "packages", "pool"], cwd=repo, check=True, capture_output=True)
    (binary / "Packages").write_bytes(packages.stdout)
    release = subprocess.run(["apt-ftparchive", "-o", "APT::FTPArchive::Release::Suite=stable",
                              "-o", "APT::FTPArchive::Release::Codename=stable",
                              "-o", "APT::FTPArchive::Release::Components=main",
                              "-o", "APT::FTPArchive::Release::Architectures=amd64", "release", "dists/stable"],
                             cwd=repo, check=True, capture_output=True)
    (repo / "dists/stable/Release").write_bytes(release.stdout)
    subprocess.run([*gpg, "--clearsign", "-o", repo / "dists/stable/InRelease", repo / "dists/stable/Release"],
                   env=env, check=True, capture_output=True)
    return repo, key


def squashfs_file(image: Path, squashfs: Path, path: str) -> str | None:
    if not squashfs.exists():
        p2 = read_table(image).entry(layout.partition(layout.Role.SYSTEM).number).start
        data = iso_file(image, p2, layout.SQUASHFS_PATH)
        assert data is not None
        squashfs.write_bytes(data)
    proc = subprocess.run(["unsquashfs", "-cat", squashfs, path], capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else None


def test_appliance_recipe_builds_with_repository_deb_services_tree_and_script(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    repo, key = signed_repository(tmp_path)
    local = deb(tmp_path, "liveng-local", {"usr/lib/systemd/system/liveng-local.service": UNIT})
    (tmp_path / "tree/etc/liveng-extra").mkdir(parents=True)
    (tmp_path / "tree/etc/liveng-extra/marker").write_text("extra tree\n")
    (tmp_path / "tree/bin").mkdir()
    (tmp_path / "tree/bin/extra-tool").write_text("#!/bin/sh\necho tool\n")
    (tmp_path / "script.sh").write_text("#!/bin/sh\nset -e\n"
                                        'dpkg-query -W -f \'${Package} ${Version}\\n\' liveng-hello liveng-local '
                                        '> /etc/liveng-script-ran\necho "$LIVENG_TARGET $LIVENG_SUITE" >> '
                                        "/etc/liveng-script-ran\n")
    recipe = tmp_path / "appliance.toml"
    recipe.write_text(f'target = "pc"\nsuite = "trixie"\ncompression = "none"\npackages = ["liveng-hello"]\n'
                      f'debs = ["{local.name}"]\nextra_tree = "tree"\n'
                      f'[[repositories]]\nname = "test"\nuri = "file://{repo}"\nsuites = ["stable"]\n'
                      f'key_file = "{key.name}"\n'
                      '[[scripts]]\npath = "script.sh"\n[services]\nenable = ["liveng-local.service"]\n')
    image = tmp_path / "appliance.img"
    assert main(["build", str(recipe), "-o", str(image), "--cached-rootfs"]) == 0
    # Raspberry Pi Imager's manifest beside it, naming the real image (tests/unit/test_imager_manifest.py).
    entry = check_entry(json.loads((tmp_path / "appliance.rpi-imager-manifest").read_text()))
    assert local_path(entry["url"]) == image and entry["extract_size"] == image.stat().st_size
    assert entry["extract_sha256"] == subprocess.run(["sha256sum", str(image)], capture_output=True, text=True,
                                                     check=True).stdout.split()[0]
    sq = tmp_path / "filesystem.squashfs"
    assert squashfs_file(image, sq, "usr/share/liveng-hello/hello.txt") == "hello from the repository\n"
    assert squashfs_file(image, sq, "etc/liveng-script-ran") == "liveng-hello 1.0\nliveng-local 1.0\npc trixie\n"
    assert squashfs_file(image, sq, "etc/liveng-extra/marker") == "extra tree\n"
    assert squashfs_file(image, sq, "usr/bin/extra-tool") == "#!/bin/sh\necho tool\n"
    assert squashfs_file(image, sq, "usr/lib/systemd/system/liveng-local.service") == UNIT
    listing = subprocess.run(["unsquashfs", "-lls", sq, "bin", "etc/apt/sources.list.d", "usr/sbin/policy-rc.d",
                              "etc/systemd/system/multi-user.target.wants"],
                             capture_output=True, text=True, check=True).stdout
    # [services] enabled the unit the local .deb brought.
    assert any(line.endswith("multi-user.target.wants/liveng-local.service -> /lib/systemd/system/"
                             "liveng-local.service") for line in listing.splitlines()), listing
    assert "squashfs-root/bin -> usr/bin" in listing
    # A file:// repository serves the build only; the device keeps Debian's sources alone.
    assert "debian.sources" in listing and "liveng-test.sources" not in listing and "0001" not in listing
    assert "policy-rc.d" not in listing

    (tmp_path / "script.sh").write_text("#!/bin/sh\necho 'configuring the appliance'\nfalse\n")
    failed = tmp_path / "failed.img"
    capfd.readouterr()
    assert main(["build", str(recipe), "-o", str(failed), "--cached-rootfs"]) != 0
    err = capfd.readouterr().err
    assert f"recipe script {tmp_path / 'script.sh'} failed with exit status 1" in err
    assert "configuring the appliance" in err
    assert not failed.exists() and not list(tmp_path.glob("failed.img*"))
