"""The root filesystem: mmdebstrap once, cached under a key of every input that shapes it."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from liveng.host.errors import BuildError
from liveng.host.recipe import Recipe
from liveng.host.runner import output, run

log = logging.getLogger("liveng.rootfs")

EATMYDATA_HOOKS = Path("/usr/share/mmdebstrap/hooks/eatmydata")

# Bump when the way the rootfs is made changes in a way the other inputs do not show.
CACHE_FORMAT = 2

BASE_PACKAGES = (
    "live-boot", "systemd-sysv", "systemd-resolved", "udev", "python3", "xorriso", "e2fsprogs",
    "kmod", "iproute2", "procps", "zstd", "ca-certificates",
    # liveng resize (sfdisk) and snapshots (GNU tar with xattrs and ACLs).
    "fdisk", "tar",
    # Compressed swap in RAM (zramswap.service, /etc/default/zramswap).
    "zram-tools",
)
KERNEL_PACKAGES = {"amd64": ("linux-image-amd64",), "arm64": ("linux-image-arm64",)}
COMPONENTS = {"pc": ("main",), "rpi": ("main", "non-free-firmware")}
# Packages the boot partition is made from. They are downloaded with the rootfs (same suite, same
# mirror, same cache) but not installed: raspi-firmware's kernel hooks would fight liveng's slots.
# The tarball carries the .debs in ASSETS_DIR; the build unpacks them on the host and drops the
# directory from the tree.
BOOT_ASSETS = {"pc": (), "rpi": ("raspi-firmware", "u-boot-rpi", "grub-efi-arm64-bin")}
ASSETS_DIR = "liveng-boot-assets"
# qemu-user emulates a Cortex-A53 faster than its default "max" CPU (no pointer authentication).
QEMU_USER_CPU = "cortex-a53"


def packages(recipe: Recipe) -> tuple[str, ...]:
    wanted = set(BASE_PACKAGES) | set(KERNEL_PACKAGES[recipe.arch]) | set(recipe.packages)
    if any(u.sudo for u in recipe.users):
        wanted.add("sudo")
    if any(u.ssh_keys for u in recipe.users):
        wanted.add("openssh-server")
    return tuple(sorted(wanted))


def initramfs_overlay() -> dict[str, bytes]:
    """Files that must be in the tree before the kernel's initramfs is first generated."""
    data = resources.files("liveng.device").joinpath("data/initramfs")
    files = {}
    for name in ("live-premount/liveng", "live-premount/liveng-delta", "live-bottom/liveng-ram"):
        files[f"etc/initramfs-tools/scripts/{name}"] = data.joinpath(name).read_bytes()
    files["etc/initramfs-tools/hooks/liveng"] = data.joinpath("hooks/liveng").read_bytes()
    return files


@dataclass(frozen=True)
class RootfsSpec:
    suite: str
    mirror: str
    arch: str
    components: tuple[str, ...]
    packages: tuple[str, ...]
    overlay: dict[str, bytes]
    assets: tuple[str, ...] = ()

    def key(self, mmdebstrap_version: str) -> str:
        doc = {
            "format": CACHE_FORMAT,
            "mmdebstrap": mmdebstrap_version,
            "suite": self.suite,
            "mirror": self.mirror,
            "arch": self.arch,
            "components": list(self.components),
            "packages": list(self.packages),
            "assets": list(self.assets),
            "overlay": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(self.overlay.items())},
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]


def spec_for(recipe: Recipe, mirror: str) -> RootfsSpec:
    return RootfsSpec(suite=recipe.suite, mirror=mirror, arch=recipe.arch,
                      components=COMPONENTS[recipe.target], packages=packages(recipe),
                      overlay=initramfs_overlay(), assets=BOOT_ASSETS[recipe.target])


def mmdebstrap_version() -> str:
    return output(["mmdebstrap", "--version"]).strip()


def default_cache_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/cache/liveng")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "liveng"


def obtain(spec: RootfsSpec, cache_dir: Path, workdir: Path, refresh: bool) -> tuple[Path, bool]:
    """Return the cached rootfs tarball for ``spec``, making it first if needed; and whether it was cached."""
    key = spec.key(mmdebstrap_version())
    tarball = cache_dir / f"rootfs-{spec.suite}-{spec.arch}-{key}.tar"
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Two builds of the same rootfs at once (parallel tests, two terminals): one makes it, the
    # other waits and reuses it.
    with open(cache_dir / f".{tarball.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.is_file() and not refresh:
            log.info("rootfs cache hit: %s", tarball)
            return tarball, True
        _make(spec, tarball, workdir)
    return tarball, False


def _make(spec: RootfsSpec, tarball: Path, workdir: Path) -> None:
    cache_dir = tarball.parent
    overlay = workdir / "rootfs-overlay"
    for rel, content in spec.overlay.items():
        dest = overlay / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(content)
        dest.chmod(0o755)
    hooks = [
        # Before the kernel is installed, so that its initramfs already has liveng's scripts.
        f"--essential-hook=sync-in {overlay} /",
        # One initramfs, made once every package is in: INITRD=No (below) keeps the kernel's
        # postinst from making one per trigger, which under qemu-user costs minutes each.
        '--customize-hook=chroot "$1" update-initramfs -c -k all',
    ]
    if spec.assets:
        names = " ".join(spec.assets)
        hooks.append(f'--customize-hook=mkdir "$1/{ASSETS_DIR}" && chroot "$1" sh -c '
                     f'"cd /{ASSETS_DIR} && apt-get download {names}"')
    env = {"INITRD": "No"}
    if spec.arch != host_arch():
        env["QEMU_CPU"] = QEMU_USER_CPU
    tmp = tarball.with_name(f".{tarball.name}.{os.getpid()}.tmp")
    try:
        run(["mmdebstrap", "--mode=root", "--format=tar", "--variant=minbase", f"--architectures={spec.arch}",
             f"--components={','.join(spec.components)}", f"--include={','.join(spec.packages)}",
             # dpkg without fsync: the tree is thrown away if the build fails anyway.
             f"--hook-dir={EATMYDATA_HOOKS}", *hooks, spec.suite, tmp, spec.mirror], env=env)
        os.replace(tmp, tarball)
    finally:
        tmp.unlink(missing_ok=True)
    (cache_dir / f"{tarball.name}.json").write_text(json.dumps(
        {"suite": spec.suite, "arch": spec.arch, "packages": list(spec.packages), "assets": list(spec.assets)},
        indent=1) + "\n")


def host_arch() -> str:
    return output(["dpkg", "--print-architecture"]).strip()


def extract(tarball: Path, tree: Path) -> None:
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", tarball, "-C", tree])


def take_assets(tree: Path, dest: Path, wanted: tuple[str, ...]) -> dict[str, Path]:
    """Unpack the boot packages the tarball carries into ``dest``/<package>; remove them from the tree."""
    src = tree / ASSETS_DIR
    found: dict[str, Path] = {}
    if src.is_dir():
        for deb in sorted(src.glob("*.deb")):
            name = deb.name.split("_", 1)[0]
            if name in wanted:
                found[name] = dest / name
                found[name].mkdir(parents=True, exist_ok=True)
                run(["dpkg-deb", "-x", deb, found[name]])
        shutil.rmtree(src)
    missing = [p for p in wanted if p not in found]
    if missing:
        raise BuildError(f"the rootfs tarball lacks the boot packages {', '.join(missing)} (in /{ASSETS_DIR}): "
                         "make it again with liveng build --refresh")
    return found
