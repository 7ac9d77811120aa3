"""The rootfs cache key covers every input that shapes the rootfs, and nothing else; a cached rootfs is
made again once the mirror has published new releases (security updates), and old ones are pruned."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from liveng.host import recipe, rootfs
from liveng.host.mirrors import Mirrors

MIRRORS = Mirrors("http://m.example/debian", "http://m.example/debian-security")


def spec(**changes: object) -> rootfs.RootfsSpec:
    base = rootfs.spec_for(dataclasses.replace(recipe.load(None), target="pc"), MIRRORS)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_same_inputs_same_key() -> None:
    assert spec().key("mmdebstrap 1.3.5") == spec().key("mmdebstrap 1.3.5")


def test_every_input_changes_the_key() -> None:
    base = spec().key("mmdebstrap 1.3.5")
    assert spec(suite="bookworm").key("mmdebstrap 1.3.5") != base
    other = rootfs.pockets("trixie", Mirrors("http://other.example/debian", MIRRORS.security))
    assert spec(pockets=other).key("mmdebstrap 1.3.5") != base
    assert spec(pockets=rootfs.pockets("trixie", Mirrors(MIRRORS.archive, None))).key("mmdebstrap 1.3.5") != base
    assert spec(arch="arm64").key("mmdebstrap 1.3.5") != base
    assert spec(packages=(*spec().packages, "vim")).key("mmdebstrap 1.3.5") != base
    assert spec(components=("main", "contrib")).key("mmdebstrap 1.3.5") != base
    assert spec(overlay={"etc/x": b"y"}).key("mmdebstrap 1.3.5") != base
    assert spec().key("mmdebstrap 1.5.0") != base


def test_the_rootfs_takes_updates_and_security_fixes() -> None:
    lines = [p.sources_line(("main",)) for p in spec().pockets]
    assert lines == ["deb http://m.example/debian trixie main", "deb http://m.example/debian trixie-updates main",
                     "deb http://m.example/debian-security trixie-security main"]
    assert [p.suite for p in rootfs.pockets("sid", MIRRORS)] == ["sid"]
    assert spec().pockets[2].release_url == "http://m.example/debian-security/dists/trixie-security/InRelease"


def test_hostname_and_users_do_not_touch_the_rootfs() -> None:
    r = dataclasses.replace(recipe.load(None), target="pc", hostname="other", autologin=True)
    assert rootfs.spec_for(r, MIRRORS).key("v") == spec().key("v")


def test_packages_include_what_liveng_needs() -> None:
    pkgs = spec().packages
    for needed in ("live-boot", "linux-image-amd64", "python3", "xorriso", "systemd-sysv"):
        assert needed in pkgs
    assert "live-config" not in pkgs  # it would bring the live user with its well-known password


def fake_mirror(root: Path, releases: dict[str, bytes]) -> Mirrors:
    for suite, text in releases.items():
        base = root / ("debian-security" if suite.endswith("-security") else "debian") / "dists" / suite
        base.mkdir(parents=True, exist_ok=True)
        (base / "InRelease").write_bytes(text)
    return Mirrors(f"file://{root}/debian", f"file://{root}/debian-security")


@pytest.fixture()
def no_mmdebstrap(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    made: list[Path] = []

    def make(spec: rootfs.RootfsSpec, tarball: Path, workdir: Path) -> None:
        tarball.write_bytes(b"tar")
        made.append(tarball)

    monkeypatch.setattr(rootfs, "_make", make)
    monkeypatch.setattr(rootfs, "mmdebstrap_version", lambda: "mmdebstrap 1.5.7")
    return made


def test_cache_hit_until_the_mirror_publishes(tmp_path: Path, no_mmdebstrap: list[Path]) -> None:
    releases = {"trixie": b"r1", "trixie-updates": b"u1", "trixie-security": b"s1"}
    mirrors = fake_mirror(tmp_path / "mirror", releases)
    s = rootfs.spec_for(dataclasses.replace(recipe.load(None), target="pc"), mirrors)
    cache = tmp_path / "cache"
    first, cached = rootfs.obtain(s, cache, tmp_path, refresh=False)
    assert not cached and no_mmdebstrap == [first]
    assert rootfs.obtain(s, cache, tmp_path, refresh=False) == (first, True)
    # A security update is published: the next build makes the rootfs again, under the same name.
    fake_mirror(tmp_path / "mirror", {"trixie-security": b"s2"})
    assert rootfs.obtain(s, cache, tmp_path, refresh=False) == (first, False)
    assert rootfs.obtain(s, cache, tmp_path, refresh=False) == (first, True)
    assert len(no_mmdebstrap) == 2


def test_cached_rootfs_takes_an_old_one(tmp_path: Path, no_mmdebstrap: list[Path]) -> None:
    mirrors = fake_mirror(tmp_path / "mirror", {"trixie": b"r1", "trixie-updates": b"u1", "trixie-security": b"s1"})
    s = rootfs.spec_for(dataclasses.replace(recipe.load(None), target="pc"), mirrors)
    cache = tmp_path / "cache"
    first, _ = rootfs.obtain(s, cache, tmp_path, refresh=False)
    fake_mirror(tmp_path / "mirror", {"trixie-security": b"s2"})
    assert rootfs.obtain(s, cache, tmp_path, refresh=False, any_age=True) == (first, True)
    assert rootfs.obtain(s, cache, tmp_path, refresh=True, any_age=True) == (first, False)  # --refresh wins
    assert len(no_mmdebstrap) == 2


def test_offline_builds_use_the_cache(tmp_path: Path, no_mmdebstrap: list[Path]) -> None:
    mirrors = fake_mirror(tmp_path / "mirror", {"trixie": b"r1", "trixie-updates": b"u1", "trixie-security": b"s1"})
    s = rootfs.spec_for(dataclasses.replace(recipe.load(None), target="pc"), mirrors)
    cache = tmp_path / "cache"
    first, _ = rootfs.obtain(s, cache, tmp_path, refresh=False)
    (tmp_path / "mirror/debian/dists/trixie/InRelease").unlink()
    assert rootfs.obtain(s, cache, tmp_path, refresh=False) == (first, True)


def test_prune_keeps_the_most_recently_used_of_each_architecture(tmp_path: Path) -> None:
    for i in range(5):
        tar = tmp_path / f"rootfs-trixie-amd64-{i}.tar"
        tar.write_bytes(b"x")
        (tmp_path / f"{tar.name}.json").write_text("{}")
        os.utime(tar, (1000 + i, 1000 + i))
    os.utime(tmp_path / "rootfs-trixie-amd64-0.tar", (5000, 5000))  # used last
    arm = tmp_path / "rootfs-trixie-arm64-9.tar"  # the oldest of all, but the only arm64 one
    arm.write_bytes(b"x")
    os.utime(arm, (10, 10))
    rootfs.prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["rootfs-trixie-amd64-0.tar", "rootfs-trixie-amd64-4.tar",
                                                             "rootfs-trixie-arm64-9.tar"]
    assert not (tmp_path / "rootfs-trixie-amd64-1.tar.json").exists()
