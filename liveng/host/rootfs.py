"""The root filesystem: mmdebstrap once, cached under a key of every input that shapes it."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from liveng import manifest, settings
from liveng.host import initramfsenv, progress, targets, trim, updaterecipe
from liveng.host.errors import BuildError
from liveng.host.mirrors import Mirrors
from liveng.host.recipe import Recipe
from liveng.host.runner import output, run

log = logging.getLogger("liveng.rootfs")

EATMYDATA_HOOKS = Path("/usr/share/mmdebstrap/hooks/eatmydata")
# Makes file:// repositories and local .debs visible inside the chroot (mmdebstrap(1), --include).
FILE_MIRROR_HOOKS = Path("/usr/share/mmdebstrap/hooks/file-mirror-automount")

# Bump when the way the rootfs is made changes in a way the other inputs do not show.
CACHE_FORMAT = 3
# Cached rootfs tarballs kept per architecture (the most recently used); each is 0.4-1 GB. More than
# the distinct rootfs the boot tests and the fault campaign make on amd64 (at 6, a boot-test run right
# after a full one found one evicted and spent minutes in mmdebstrap).
CACHE_KEEP = 10

BASE_PACKAGES = (
    "live-boot", "systemd-sysv", "systemd-resolved", "udev", "python3", "xorriso", "e2fsprogs",
    "kmod", "iproute2", "procps", "zstd", "ca-certificates",
    # liveng resize (sfdisk) and snapshots (GNU tar with xattrs and ACLs).
    "fdisk", "tar",
    # Settings from p1 after flashing: SSH (off unless the settings ask), sudo for their users, time zones.
    "openssh-server", "sudo", "tzdata",
    # Compressed swap in RAM (zramswap.service, /etc/default/zramswap).
    "zram-tools",
)
ENCRYPTION_PACKAGES = ("cryptsetup", "cryptsetup-initramfs")
# The target's boot assets (targets.py) come with the rootfs (same suite, same mirror, same cache)
# but are not installed: raspi-firmware's kernel hooks would fight liveng's slots, and the signed shim
# and GRUB packages would run grub-install (the PC's UEFI boot: bootloader/signed.py). The tarball
# carries the .debs in ASSETS_DIR; the build unpacks them on the host and drops the directory from the tree.
ASSETS_DIR = "liveng-boot-assets"
# qemu-user emulates a Cortex-A53 faster than its default "max" CPU (no pointer authentication).
QEMU_USER_CPU = "cortex-a53"


def packages(recipe: Recipe) -> tuple[str, ...]:
    wanted = (set(BASE_PACKAGES) | set(recipe.platform.kernel_packages) | set(recipe.platform.packages)
              | set(recipe.packages))
    if recipe.wifi is not None:
        wanted.update(targets.WIFI_PACKAGES)
    if recipe.locale is not None and recipe.locale not in settings.BUILTIN_LOCALES:
        wanted.add("locales")
    if recipe.keyboard is not None:
        # The console follows /etc/default/keyboard only with console-setup.
        wanted.add("console-setup")
    if recipe.persistence.encrypted:
        # cryptsetup-initramfs puts cryptsetup, askpass and dm-crypt into every initramfs; live-boot
        # (persistence-encryption=luks) and liveng's live-premount/liveng-luks use them.
        wanted.update(ENCRYPTION_PACKAGES)
    if recipe.update.keyring:
        # The device checks update bundles with gpgv; not every suite's apt depends on it, so name it.
        wanted.add(updaterecipe.GPGV_PACKAGE)
    return tuple(sorted(wanted))


# In the initramfs as /scripts/liveng-functions (initramfs-tools copies CONFDIR/scripts; the
# liveng hook copies it too), sourced by every liveng script there.
FUNCTIONS_PATH = "etc/initramfs-tools/scripts/liveng-functions"


def initramfs_functions() -> bytes:
    """layout.py's constants, then the shared shell functions (the command line parser)."""
    data = resources.files("liveng.device").joinpath("data/initramfs/lib/liveng-functions")
    return ("# Written at image build from liveng/layout.py (initramfsenv.py).\n"
            + initramfsenv.initramfs_constants()).encode() + data.read_bytes()


def initramfs_overlay() -> dict[str, bytes]:
    """Files that must be in the tree before the kernel's initramfs is first generated. The rootfs
    cache key hashes them, so a change of layout.py's constants makes a new rootfs."""
    data = resources.files("liveng.device").joinpath("data/initramfs")
    files = {FUNCTIONS_PATH: initramfs_functions()}
    for name in ("live-premount/liveng", "live-premount/liveng-luks", "live-premount/liveng-delta",
                 "live-premount/liveng-room", "live-premount/liveng-p7", "live-premount/liveng-system",
                 "live-bottom/liveng-ram"):
        files[f"etc/initramfs-tools/scripts/{name}"] = data.joinpath(name).read_bytes()
    for name in ("liveng", "liveng-luks"):
        files[f"etc/initramfs-tools/hooks/{name}"] = data.joinpath(f"hooks/{name}").read_bytes()
    return files


@dataclass(frozen=True)
class Pocket:
    """One apt source of the rootfs: the suite itself, its -updates, its -security."""

    uri: str
    suite: str

    def sources_line(self, components: tuple[str, ...]) -> str:
        return f"deb {self.uri} {self.suite} {' '.join(components)}"

    @property
    def release_url(self) -> str:
        return f"{self.uri}/dists/{self.suite}/InRelease"


def pockets(suite: str, mirrors: Mirrors) -> tuple[Pocket, ...]:
    """Where the rootfs comes from: the image must carry the suite's updates and security fixes of
    the day it is built, not only the last point release. sid has neither pocket."""
    found = [Pocket(mirrors.archive, suite)]
    if suite != "sid":
        found.append(Pocket(mirrors.archive, f"{suite}-updates"))
        if mirrors.security:
            found.append(Pocket(mirrors.security, f"{suite}-security"))
    return tuple(found)


@dataclass(frozen=True)
class RootfsSpec:
    suite: str
    pockets: tuple[Pocket, ...]
    arch: str
    components: tuple[str, ...]
    packages: tuple[str, ...]
    overlay: dict[str, bytes]
    assets: tuple[str, ...] = ()
    # The recipe's [[repositories]] (file name, deb822 text with the key) and local .debs.
    sources: tuple[tuple[str, str], ...] = ()
    debs: tuple[Path, ...] = ()
    dpkg_filters: tuple[str, ...] = ()  # trim.py: dpkg --path-exclude/--path-include, in order

    @property
    def needs_file_mounts(self) -> bool:
        """file:// repositories and local .debs are read by apt outside and by dpkg inside the chroot."""
        return bool(self.debs) or any("URIs: file:" in text for _, text in self.sources)

    def key(self, mmdebstrap_version: str) -> str:
        doc = {
            "format": CACHE_FORMAT,
            "mmdebstrap": mmdebstrap_version,
            "suite": self.suite,
            "pockets": [[p.uri, p.suite] for p in self.pockets],
            "arch": self.arch,
            "components": list(self.components),
            "packages": list(self.packages),
            "assets": list(self.assets),
            "overlay": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(self.overlay.items())},
        }
        # Only when set, so that the keys of every recipe without them stay what they were.
        if self.sources:
            doc["sources"] = [[name, hashlib.sha256(text.encode()).hexdigest()] for name, text in self.sources]
        if self.dpkg_filters:
            doc["dpkg_filters"] = list(self.dpkg_filters)
        if self.debs:
            doc["debs"] = [[p.name, manifest.sha256_file(p)] for p in self.debs]
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]


def spec_for(recipe: Recipe, mirrors: Mirrors) -> RootfsSpec:
    return RootfsSpec(suite=recipe.suite, pockets=pockets(recipe.suite, mirrors), arch=recipe.arch,
                      components=recipe.platform.components, packages=packages(recipe),
                      overlay=initramfs_overlay(), assets=recipe.platform.boot_assets,
                      sources=tuple((r.file_name, r.deb822()) for r in recipe.repositories), debs=recipe.debs,
                      dpkg_filters=trim.dpkg_filters(recipe))


def mmdebstrap_version() -> str:
    return output(["mmdebstrap", "--version"]).strip()


def default_cache_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/cache/liveng")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "liveng"


def release_stamps(spec: RootfsSpec, timeout: float = 20) -> dict[str, str] | None:
    """sha256 of each pocket's InRelease now; None when a mirror cannot be read (offline builds)."""
    stamps = {}
    for pocket in spec.pockets:
        try:
            with urllib.request.urlopen(pocket.release_url, timeout=timeout) as response:
                stamps[pocket.suite] = hashlib.sha256(response.read()).hexdigest()
        except (OSError, urllib.error.URLError, ValueError) as exc:
            log.warning("cannot read %s (%s): the mirror's freshness is not checked", pocket.release_url, exc)
            return None
    return stamps


def _stale(meta_file: Path, now: dict[str, str] | None) -> str:
    """Why a cached rootfs is out of date ("" if it is not): the mirror published since it was made."""
    if now is None:
        return ""
    try:
        made = json.loads(meta_file.read_text()).get("releases")
    except (OSError, ValueError):
        made = None
    if made != now:
        changed = sorted(k for k in now if not isinstance(made, dict) or made.get(k) != now[k])
        return f"the mirror has published {', '.join(changed) or 'new releases'} since it was made"
    return ""


def obtain(spec: RootfsSpec, cache_dir: Path, workdir: Path, refresh: bool,
           any_age: bool = False) -> tuple[Path, bool]:
    """Return the cached rootfs tarball for ``spec``, making it first if needed; and whether it was cached.

    A cached rootfs is used only while the mirror's InRelease files are those it was made from, so
    that a rebuild carries the security updates published since (offline: the cache is used as is).
    ``any_age`` (`liveng build --cached-rootfs`) takes a cached one however old, for test builds.
    """
    key = spec.key(mmdebstrap_version())
    tarball = cache_dir / f"rootfs-{spec.suite}-{spec.arch}-{key}.tar"
    meta = cache_dir / f"{tarball.name}.json"
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Two builds of the same rootfs at once (parallel tests, two terminals): one makes it, the
    # other waits and reuses it.
    with open(cache_dir / f".{tarball.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if any_age and tarball.is_file() and not refresh:
            log.info("rootfs cache hit (--cached-rootfs: whatever the mirror published since): %s", tarball)
            os.utime(tarball)
            return tarball, True
        stamps = release_stamps(spec)
        if tarball.is_file() and not refresh:
            why = _stale(meta, stamps)
            if not why:
                log.info("rootfs cache hit: %s", tarball)
                os.utime(tarball)
                return tarball, True
            log.info("cached rootfs %s is out of date: %s; making it again", tarball.name, why)
        times = progress.StepTimes(cache_dir, f"mmdebstrap {spec.suite} {spec.arch}")
        last = times.last("rootfs")
        log.info("making the rootfs with mmdebstrap%s", f" (last time: {progress.duration(last)})" if last else "")
        start = time.monotonic()
        _make(spec, tarball, workdir)
        times.record("rootfs", time.monotonic() - start)
        _write_meta(meta, spec, stamps)
    prune(cache_dir)
    return tarball, False


def _write_meta(meta: Path, spec: RootfsSpec, stamps: dict[str, str] | None) -> None:
    doc = {"suite": spec.suite, "arch": spec.arch, "packages": list(spec.packages), "assets": list(spec.assets),
           "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "releases": stamps}
    tmp = meta.with_name(f".{meta.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, meta)


def prune(cache_dir: Path, keep: int = CACHE_KEEP) -> None:
    """Drop all but the ``keep`` most recently used rootfs tarballs of each architecture (a hit
    touches its tarball): an arm64 rootfs, made through qemu-user, costs ten times an amd64 one, and
    a day of PC builds must not push it out."""
    by_arch: dict[str, list[Path]] = {}
    for tar in cache_dir.glob("rootfs-*.tar"):
        parts = tar.name.split("-")  # rootfs-SUITE-ARCH-KEY.tar
        by_arch.setdefault(parts[2] if len(parts) >= 4 else "", []).append(tar)
    for tarballs in by_arch.values():
        for old in sorted(tarballs, key=lambda p: p.stat().st_mtime, reverse=True)[keep:]:
            log.info("rootfs cache: dropping %s (least recently used)", old.name)
            old.unlink(missing_ok=True)
            old.with_name(f"{old.name}.json").unlink(missing_ok=True)


def _make(spec: RootfsSpec, tarball: Path, workdir: Path) -> None:
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
        # The host's apt with the chroot's configuration (mmdebstrap(1), hooks): the host's DNS, and
        # no emulation for arm64. In the chroot a suite's systemd-resolved may have replaced
        # /etc/resolv.conf by a link into /run (bookworm's does), and nothing resolves there.
        hooks.append(f'--customize-hook=mkdir "$1/{ASSETS_DIR}" && cd "$1/{ASSETS_DIR}" && '
                     f'APT_CONFIG="$MMDEBSTRAP_APT_CONFIG" apt-get download {names}')
    sources = []
    for name, text in spec.sources:
        path = workdir / "sources" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        sources.append(str(path))
    hook_dirs = [f"--hook-dir={EATMYDATA_HOOKS}"]
    if spec.needs_file_mounts:
        hook_dirs.append(f"--hook-dir={FILE_MIRROR_HOOKS}")
    env = {"INITRD": "No"}
    if spec.arch != host_arch():
        env["QEMU_CPU"] = QEMU_USER_CPU
    tmp = tarball.with_name(f".{tarball.name}.{os.getpid()}.tmp")
    try:
        # --verbose: apt's and dpkg's lines, from which the phases and package counts are shown.
        run(["mmdebstrap", "--verbose", "--mode=root", "--format=tar", "--variant=minbase",
             f"--architectures={spec.arch}",
             f"--components={','.join(spec.components)}",
             f"--include={','.join((*spec.packages, *map(str, spec.debs)))}",
             *(f"--dpkgopt={option}" for option in spec.dpkg_filters),
             # dpkg without fsync: the tree is thrown away if the build fails anyway.
             *hook_dirs, *hooks, spec.suite, tmp,
             *(p.sources_line(spec.components) for p in spec.pockets), *sources], env=env,
            progress=progress.Mmdebstrap())
        os.replace(tmp, tarball)
    finally:
        tmp.unlink(missing_ok=True)


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
