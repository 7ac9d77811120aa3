"""bench/faults/kernelrepo.py: the newer build of the image's kernel package (and of the metapackage
that pins it) that the apt-kernel operation upgrades to, made from small stand-in packages."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bench.faults import kernelrepo

pytestmark = pytest.mark.skipif(not (shutil.which("dpkg-deb") and shutil.which("dpkg-scanpackages")
                                     and shutil.which("apt-ftparchive")), reason="needs dpkg-dev and apt-utils")

KERNEL = "linux-image-9.9.9+test-amd64"


def deb(tmp: Path, package: str, version: str, depends: str = "") -> Path:
    tree = tmp / f"tree-{package}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "boot").mkdir()
    (tree / "boot" / f"vmlinuz-{package}").write_bytes(b"kernel " + package.encode())
    (tree / "DEBIAN/control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@localhost>\n"
        + (f"Depends: {depends}\n" if depends else "") + "Description: a stand-in\n")
    out = tmp / f"{package}.orig.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(out)], check=True, capture_output=True)
    return out


def field(path: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(path), name], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_rebuild_bumps_the_version_and_the_exact_dependency(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    kernel = kernelrepo.rebuild(deb(tmp_path, KERNEL, "9.9.9-1"), repo, KERNEL, "9.9.9-1")
    meta = kernelrepo.rebuild(deb(tmp_path, "linux-image-amd64", "9.9.9-1", f"{KERNEL} (= 9.9.9-1)"), repo,
                              KERNEL, "9.9.9-1")
    assert field(kernel, "Version") == "9.9.9-1+faults1" and kernel.name == f"{KERNEL}_9.9.9-1+faults1_amd64.deb"
    assert field(meta, "Depends") == f"{KERNEL} (= 9.9.9-1+faults1)"
    files = subprocess.run(["dpkg-deb", "-c", str(kernel)], check=True, capture_output=True, text=True).stdout
    assert f"./boot/vmlinuz-{KERNEL}" in files  # the same files
    assert not list(tmp_path.glob("*.orig.deb"))  # the fetched originals are not kept
    kernelrepo.index_repo(repo)
    packages = (repo / "Packages").read_text()
    assert f"Package: {KERNEL}\n" in packages and "Version: 9.9.9-1+faults1" in packages
    assert "Packages" in (repo / "Release").read_text()


def test_dependents_are_the_packages_pinning_exactly_the_installed_build() -> None:
    rows = [[KERNEL, "9.9.9-1", "linux-signed-amd64", "amd64", "kmod, linux-base (>= 4.3~)"],
            ["linux-image-amd64", "9.9.9-1", "linux-signed-amd64", "amd64", f"{KERNEL} (= 9.9.9-1)"],
            ["other", "1", "other", "amd64", f"foo | {KERNEL} (= 9.9.9-1), bar"],
            ["older-pin", "1", "x", "amd64", f"{KERNEL} (= 9.9.8-1)"],
            ["loose", "1", "x", "amd64", f"{KERNEL} (>= 9.9.9-1)"],
            ["prefix", "1", "x", "amd64", f"x{KERNEL} (= 9.9.9-1)"]]
    assert [r[0] for r in kernelrepo.dependents(rows, KERNEL, "9.9.9-1")] == ["linux-image-amd64", "other"]
