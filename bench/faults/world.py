"""What the rounds run against: the images (built once into the work directory), their goldens
(tests/boot/golden.py: one real boot saved, resumed in seconds), a local apt repository with two
versions of a small package and (kernel.py) a newer build of the image's own kernel package, and
(PC) a channel with a signed version 2 for `liveng update apply`."""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from liveng import layout
from liveng.host.mirrors import resolve_mirrors
from tests.boot import golden
from tests.boot.conftest import (
    RAM_RECIPE,
    build_image,
    make_v2_channel,
    partition_hash,
    signing_key,
    update_recipe,
)

HOST = "10.0.2.2"  # the host, seen from QEMU's user-mode network
MEMORY = 2048  # MiB for every VM: the RAM modes copy the system into RAM (mode set can switch to them)
PACKAGE = "liveng-faults-demo"
RAM_PATHS_RECIPE = RAM_RECIPE.replace('mode = "ram"', 'mode = "ram-paths"')
assert RAM_PATHS_RECIPE != RAM_RECIPE


@dataclass(frozen=True)
class KernelPackage:
    """The image's kernel package and the newer build of it the campaign's repository serves."""

    package: str
    installed: str  # the version in the image
    upgrade: str  # the version in the repository
    repo: str  # its directory under the repository root


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


def kinds_for(arch: str) -> tuple[str, ...]:
    # The RAM-mode images are built for the PC only: an arm64 one costs ~8 min through qemu-user.
    return ("base", "ram", "ram-paths") if arch == "pc" else ("base",)


def make(arch: str, workdir: Path, kinds: set[str], need_repo: bool, need_channel: bool,
         need_kernel: bool = False) -> World:
    """Build what the chosen operations need (each part once: kept in ``workdir``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    world = World(arch, workdir)
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
    if need_repo:
        world.repo = make_repo(workdir / "repo")
    if need_kernel:
        world.kernel = kernel_repo(world, workdir / "repo")
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


def index_repo(directory: Path) -> None:
    """A flat repository's Packages and Release for the .debs in ``directory``."""
    packages = subprocess.run(["dpkg-scanpackages", "-m", "."], cwd=directory, check=True,
                              capture_output=True, text=True).stdout
    (directory / "Packages").write_text(packages)
    release = subprocess.run(["apt-ftparchive", "release", "."], cwd=directory, check=True,
                             capture_output=True, text=True).stdout
    (directory / "Release").write_text(release)


KERNEL_SUFFIX = "+faults1"


def kernel_repo(world: World, root: Path) -> KernelPackage:
    """The image's own kernel package rebuilt as a newer version (the same files, Version plus
    KERNEL_SUFFIX) in the flat repository root/kernel-ARCH: what an apt kernel upgrade installs.
    Made once per arch: the installed version is asked of the golden, its .deb fetched from the
    Debian mirror the host's apt uses (checked against the installed package's md5sums)."""
    repo = root / f"kernel-{world.arch}"
    facts = repo / "kernel.json"
    if facts.exists():
        return KernelPackage(**json.loads(facts.read_text()))
    repo.mkdir(parents=True, exist_ok=True)
    package, version, source, deb_arch, md5sums = _installed_kernel(world)
    deb = _fetch_deb(package, version, source, deb_arch, md5sums, repo / "installed.deb")
    upgrade = version + KERNEL_SUFFIX
    tree = repo / "tree"
    subprocess.run(["rm", "-rf", str(tree)], check=True)
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN/control"
    text = control.read_text()
    new_text = re.sub(r"^Version: .*$", f"Version: {upgrade}", text, count=1, flags=re.M)
    assert new_text != text, f"{control}: no Version field"
    control.write_text(new_text)
    # Uncompressed: the modules are compressed already, and the guest (emulated) need not unpack it.
    subprocess.run(["dpkg-deb", "-Znone", "-b", str(tree), str(repo / f"{package}_{upgrade}_{deb_arch}.deb")],
                   check=True, capture_output=True)
    subprocess.run(["rm", "-rf", str(tree), str(deb)], check=True)
    index_repo(repo)
    kernel = KernelPackage(package, version, upgrade, repo.name)
    facts.with_suffix(".tmp").write_text(json.dumps(asdict(kernel)))
    facts.with_suffix(".tmp").replace(facts)
    return kernel


def _installed_kernel(world: World) -> tuple[str, str, str, str, str]:
    """(package, version, source package, architecture, MD5 of its md5sums file) of the running kernel."""
    disk = world.workdir / "kernel-query.img"
    vm = golden.resume(world.goldens["base"], disk, world.workdir / "kernel-query.log")
    try:
        out = vm.sh("P=linux-image-$(uname -r); "
                    "dpkg-query -W -f '${Package} ${Version} ${source:Package} ${Architecture} ' $P && "
                    "md5sum < $(dpkg-query --control-path $P md5sums)")
    finally:
        vm.close()
        disk.unlink(missing_ok=True)
    package, version, source, deb_arch, md5 = out.split()[:5]
    return package, version, source, deb_arch, md5


def _fetch_deb(package: str, version: str, source: str, deb_arch: str, md5sums: str, dest: Path) -> Path:
    """The .deb of exactly the installed build: the archive's pool or (a security update) the
    security archive's, as apt itself would find it."""
    mirrors = resolve_mirrors("", "")
    name = f"{package}_{version.split(':')[-1]}_{deb_arch}.deb"
    prefix = source[:4] if source.startswith("lib") else source[0]
    urls = [f"{mirrors.archive}/pool/main/{prefix}/{source}/{name}"]
    if mirrors.security:
        urls.append(f"{mirrors.security}/pool/updates/main/{prefix}/{source}/{name}")
    def same_build(deb: Path) -> bool:
        control = subprocess.run(["dpkg-deb", "-I", str(deb), "md5sums"], check=True, capture_output=True).stdout
        return hashlib.md5(control).hexdigest() == md5sums

    if dest.exists():  # put there by hand
        if not same_build(dest):
            raise RuntimeError(f"{dest}: not the build of {package} {version} installed in the image")
        return dest
    for url in urls:
        part = dest.with_suffix(".part")
        try:
            urllib.request.urlretrieve(url, part)
        except urllib.error.HTTPError:
            continue
        if not same_build(part):
            raise RuntimeError(f"{url}: not the build installed in the image (its md5sums differ)")
        part.replace(dest)
        return dest
    raise RuntimeError(f"{package} {version} is in none of {', '.join(urls)}: put its .deb at {dest} by hand "
                       "(apt-get download in the image) and run again")
