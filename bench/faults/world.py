"""What the rounds run against: the images (built once into the work directory), their goldens
(tests/boot/golden.py: one real boot saved, resumed in seconds), a local apt repository with two
versions of a small package and (kernelrepo.py) a newer build of the image's own kernel package, and
(PC) a channel with a signed version 2 for `liveng update apply`."""

from __future__ import annotations

import random
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from liveng import layout
from tests.boot import golden
from tests.boot.conftest import (
    RAM_RECIPE,
    build_image,
    make_v2_channel,
    partition_hash,
    signing_key,
    update_recipe,
)

from .kernelrepo import KernelPackage, index_repo, kernel_repo
from .record import commit_id

HOST = "10.0.2.2"  # the host, seen from QEMU's user-mode network
MEMORY = 2048  # MiB for every VM: the RAM modes copy the system into RAM (mode set can switch to them)
PACKAGE = "liveng-faults-demo"
RAM_PATHS_RECIPE = RAM_RECIPE.replace('mode = "ram"', 'mode = "ram-paths"')
assert RAM_PATHS_RECIPE != RAM_RECIPE


@dataclass
class World:
    arch: str
    workdir: Path
    goldens: dict[str, golden.Golden] = field(default_factory=dict)
    system_hash: dict[str, str] = field(default_factory=dict)  # p2's SHA-256 per golden kind, as built
    repo: Path | None = None
    channel: Path | None = None
    kernel: KernelPackage | None = None
    repo_port: int = 0  # set while the campaign's web server runs
    channel_port: int = 0
    image_commit: str = "?"  # the commit whose code built the images: the device code every round runs


def kinds_for(arch: str) -> tuple[str, ...]:
    # The RAM-mode images are built for the PC only: an arm64 one costs ~8 min through qemu-user.
    return ("base", "ram", "ram-paths") if arch == "pc" else ("base",)


def make(arch: str, workdir: Path, kinds: set[str], need_repo: bool, need_channel: bool,
         need_kernel: bool = False) -> World:
    """Build what the chosen operations need (each part once: kept in ``workdir``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    # Workers started together: one builds, the others wait and find it built (the repository's
    # packages are made in place, so two makers would delete each other's trees).
    with golden.locked(workdir / "world"):
        return _make(arch, workdir, kinds, need_repo, need_channel, need_kernel)


def _make(arch: str, workdir: Path, kinds: set[str], need_repo: bool, need_channel: bool,
          need_kernel: bool) -> World:
    world = World(arch, workdir)
    marker = workdir / "images-commit"
    if not marker.exists():  # images found without it were built by code that did not say which
        marker.write_text(("?" if any(workdir.glob("*.img")) else commit_id()) + "\n")
    if arch == "pc":
        key = signing_key(workdir)
        images = {"base": lambda: build_image(workdir, "trixie", "trixie", extra=update_recipe(key[1], "1")),
                  "ram": lambda: build_image(workdir, "trixie", "trixie-ram", compression="zstd", extra=RAM_RECIPE),
                  "ram-paths": lambda: build_image(workdir, "trixie", "trixie-ram-paths", compression="zstd",
                                                   extra=RAM_PATHS_RECIPE)}
        for kind in sorted(kinds):
            image = images[kind]()
            world.goldens[kind] = golden.make(image, workdir, f"golden-{kind}", bios=kind == "base", memory=MEMORY)
        if need_channel:
            world.channel = make_v2_channel(workdir, key)
    else:
        image = build_image(workdir, "trixie", "rpi", target="rpi")
        world.goldens["base"] = golden.make(image, workdir, "golden-virt", memory=MEMORY, machine="virt")
    for kind, g in world.goldens.items():
        world.system_hash[kind] = partition_hash(g.disk, layout.Role.SYSTEM)
    world.image_commit = marker.read_text().strip()
    if need_repo:
        world.repo = make_repo(workdir / "repo")
    if need_kernel:
        world.kernel = kernel_repo(world.goldens["base"], world.arch, workdir)
        world.repo = workdir / "repo"
    return world


def demo_deb(root: Path, version: str) -> Path:
    """A small package of many files (dpkg writes and fsyncs each): version 1 and 2 differ in every file."""
    rng = random.Random(f"{PACKAGE}-{version}")
    tree = root / f"build-{version}"
    subprocess.run(["rm", "-rf", str(tree)], check=True)
    data = tree / "usr/share" / PACKAGE
    data.mkdir(parents=True)
    for i in range(300):
        (data / f"part-{i:03d}").write_bytes(rng.randbytes(rng.randint(512, 16384)))
    (data / "big").write_bytes(rng.randbytes(4 << 20))
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN/control").write_text(
        f"Package: {PACKAGE}\nVersion: {version}\nArchitecture: all\nMaintainer: liveng <liveng@localhost>\n"
        f"Description: files for liveng's fault campaign (apt upgrades cut short)\n")
    out = root / version / f"{PACKAGE}_{version}_all.deb"
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(out)], check=True,
                   capture_output=True)
    subprocess.run(["rm", "-rf", str(tree)], check=True)
    return out


def make_repo(root: Path) -> Path:
    """Two flat repositories, root/1 and root/2, each with one version of the package."""
    root.mkdir(parents=True, exist_ok=True)
    for version in ("1", "2"):
        if not (root / version / "Packages").exists():
            demo_deb(root, version)
            index_repo(root / version)
    return root
