"""liveng build: a flat sequence of named steps, each logged with its duration.

rootfs → customise → squashfs → system ISO → kernel slot → boot partition → persistence → disk image
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from liveng import __version__, bootargs, grubenv, layout, manifest
from liveng.host import (
    buildscripts,
    customize,
    disk,
    filesystems,
    luks,
    preflight,
    progress,
    rootfs,
    squashcache,
    updaterecipe,
)
from liveng.host.bootloader import grub, rpi, signed
from liveng.host.errors import BuildError, UsageError
from liveng.host.mirrors import Mirrors, resolve_mirrors
from liveng.host.recipe import Recipe

log = logging.getLogger("liveng.build")

# The PC's kernel consoles. On arm64 there are none on the command line: the kernel takes the
# firmware's serial console (the device tree's stdout-path on the Pi, ACPI SPCR on UEFI servers).


@dataclass
class Context:
    recipe: Recipe
    output: Path
    workdir: Path
    cache_dir: Path
    image_id: str
    mirrors: Mirrors
    refresh: bool = False
    cached_rootfs: bool = False  # a cached rootfs however old (test builds)
    rootfs_tarball: Path | None = None  # given: used instead of mmdebstrap
    # Filled in by the steps.
    tarball: Path | None = None
    assets: dict[str, Path] = field(default_factory=dict)  # boot package -> where it is unpacked
    kernel_version: str = ""
    built: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    core_img: Path | None = None
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def tree(self) -> Path:
        return self.workdir / "tree"

    def part(self, name: str) -> Path:
        return self.workdir / f"{name}.part"

    @property
    def version(self) -> str:
        return self.recipe.version or updaterecipe.default_version(self.built)

    def image_info(self) -> dict[str, object]:
        return {
            "layout": layout.LAYOUT_VERSION,
            "id": self.image_id,
            "version": self.version,
            # The keys this system takes update bundles from (liveng bundle warns about a bundle whose
            # system would not take the next one from its own signer).
            "update_keys": list(self.recipe.update.fingerprints),
            "target": self.recipe.target,
            "arch": self.recipe.arch,
            "suite": self.recipe.suite,
            "kernel": self.kernel_version,
            "hostname": self.recipe.hostname,
            "built": self.built,
            "liveng": __version__,
            "recipe": self.recipe.path,
        }


def step_rootfs(ctx: Context) -> None:
    if ctx.rootfs_tarball:
        ctx.tarball = ctx.rootfs_tarball
        log.info("rootfs given: %s", ctx.tarball)
    else:
        spec = rootfs.spec_for(ctx.recipe, ctx.mirrors)
        ctx.tarball, cached = rootfs.obtain(spec, ctx.cache_dir, ctx.workdir, ctx.refresh,
                                            ctx.cached_rootfs)
        log.info("rootfs %s: %s", "reused from cache" if cached else "made", ctx.tarball.name)
    rootfs.extract(ctx.tarball, ctx.tree)
    ctx.assets = rootfs.take_assets(ctx.tree, ctx.workdir / "assets", ctx.recipe.platform.boot_assets)
    if ctx.recipe.platform.pi_firmware:
        rpi.check_assets(ctx.assets)


def step_customise(ctx: Context) -> None:
    tree, recipe = ctx.tree, ctx.recipe
    customize.hostname(tree, recipe.hostname)
    customize.apt_sources(tree, recipe, recipe.platform.components, ctx.mirrors)
    customize.networking(tree)
    customize.device_tool(tree)
    customize.compile_device_tool(tree)
    customize.device_units(tree)
    customize.slow_devices(tree)
    customize.kernel_hooks(tree)
    customize.lock_root(tree)
    customize.users(tree, recipe.users)
    customize.ssh(tree, recipe.settings)
    customize.wifi_support(tree)
    customize.device_settings(tree, recipe)
    updaterecipe.install(tree, recipe.update)
    if recipe.autologin:
        customize.autologin(tree)
    customize.memory(tree, recipe.ram)
    customize.copy_files(tree, recipe)
    buildscripts.run_scripts(tree, recipe)
    customize.recipe_services(tree, recipe.services)
    customize.first_boot_identity(tree)
    customize.clean(tree)
    customize.mark_updated(tree)
    ctx.kernel_version = _kernel_version(tree)
    if recipe.persistence.key_file is not None:
        _persistence_key(ctx, recipe.persistence.key_file.read_bytes())


def _persistence_key(ctx: Context, key: bytes) -> None:
    """The key file into the image and into its initramfs (made before the recipe was known, so
    appended as a second archive; on the device liveng's initramfs hook adds it to new ones)."""
    dest = ctx.tree / luks.KEY_FILE_PATH
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest.parent.chmod(0o700)  # made 0755 already for the settings switch (customize.device_settings)
    dest.write_bytes(key)
    dest.chmod(0o400)
    # Initramfs files that hold the key are for root only (initramfs-tools' UMASK, cryptsetup's advice).
    conf = ctx.tree / "etc/initramfs-tools/conf.d/liveng-luks"
    conf.write_text("# liveng: the initramfs holds the persistence key file\nUMASK=0077\n")
    luks.append_key(ctx.tree / "boot" / f"initrd.img-{ctx.kernel_version}", key)


def _kernel_version(tree: Path) -> str:
    kernels = sorted(p.name.removeprefix("vmlinuz-") for p in (tree / "boot").glob("vmlinuz-*"))
    link = tree / "vmlinuz"
    if link.is_symlink():
        return os.readlink(link).rsplit("vmlinuz-", 1)[-1]
    if len(kernels) != 1:
        raise BuildError(f"expected one kernel in the rootfs's /boot, found: {kernels or 'none'}")
    return kernels[0]


def _kernel_files(ctx: Context, dest: Path) -> dict[str, Path]:
    """The kernel, its initrd and (arm64) its device trees into ``dest``; returns them by path in ``dest``."""
    boot = ctx.tree / "boot"
    files = {layout.KERNEL_PATH: boot / f"vmlinuz-{ctx.kernel_version}",
             layout.INITRD_PATH: boot / f"initrd.img-{ctx.kernel_version}",
             **manifest.kernel_dtbs(ctx.tree, ctx.kernel_version)}
    for rel, src in files.items():
        if not src.exists():
            raise BuildError(f"/{src.relative_to(ctx.tree)} is missing from the rootfs")
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / rel)
    return {rel: dest / rel for rel in files}


def _manifest(root: Path) -> str:
    files = (p for p in root.rglob("*") if p.is_file())
    return manifest.manifest_text({rel: manifest.sha256_file(p) for p in files
                                 if (rel := p.relative_to(root).as_posix()) != layout.MANIFEST_PATH})


def step_squashfs(ctx: Context) -> None:
    staging = ctx.workdir / "system"
    (staging / layout.LIVE_DIR).mkdir(parents=True, exist_ok=True)
    squashcache.squashfs(ctx.tree, staging / layout.SQUASHFS_PATH, ctx.recipe.compression, ctx.cache_dir)
    ctx.sizes["squashfs"] = (staging / layout.SQUASHFS_PATH).stat().st_size


def step_system_iso(ctx: Context) -> None:
    staging = ctx.workdir / "system"
    _kernel_files(ctx, staging)
    info = staging / layout.IMAGE_INFO_PATH
    info.parent.mkdir(parents=True, exist_ok=True)
    info.write_text(json.dumps(ctx.image_info(), indent=1) + "\n")
    (staging / layout.MANIFEST_PATH).write_text(_manifest(staging))
    filesystems.iso9660(staging, ctx.part("system"), layout.SYSTEM_VOLID)
    ctx.sizes["system"] = layout.align_up(ctx.part("system").stat().st_size)


def step_kernel_slot(ctx: Context) -> None:
    staging = ctx.workdir / "slot-a"
    files = _kernel_files(ctx, staging)
    info = staging / layout.SLOT_INFO_PATH
    info.parent.mkdir(parents=True, exist_ok=True)
    hashes = {rel: manifest.sha256_file(path) for rel, path in files.items()}
    info.write_text(manifest.slot_info("a", ctx.kernel_version, ctx.built, hashes))
    # The same manifest the device writes for a slot, without hashing the kernel files twice.
    listed = {**hashes, layout.SLOT_INFO_PATH: manifest.sha256_file(info)}
    (staging / layout.MANIFEST_PATH).write_text(manifest.manifest_text(listed))
    filesystems.iso9660(staging, ctx.part("slot-a"), layout.SLOT_VOLID["a"])
    need = ctx.part("slot-a").stat().st_size
    if need > ctx.recipe.sizes.slot * layout.MiB:
        raise BuildError(f"the kernel and initrd need {layout.align_up(need) // layout.MiB} MiB but "
                         f"{ctx.recipe.path}: sizes.slot is {ctx.recipe.sizes.slot} MiB: raise sizes.slot")


def step_boot_partition(ctx: Context) -> None:
    staging = ctx.workdir / "boot"
    target = ctx.recipe.platform
    board_dtbs: tuple[tuple[str, str], ...] = ()
    if target.bios:
        ctx.core_img = grub.make_bios(ctx.workdir, ctx.image_id)
    if target.pi_firmware:
        grub.make_arm64(ctx.workdir, ctx.image_id, staging / layout.EFI_BOOT_DIR, rpi.grub_modules(ctx.assets))
        rpi.populate(staging, ctx.assets, manifest.kernel_dtbs(ctx.tree, ctx.kernel_version))
        board_dtbs = tuple((pattern, f"{layout.DTB_DIR}/{dtb}") for pattern, dtb in rpi.BOARD_DTBS)
    cfg = staging / layout.GRUB_CFG_PATH
    cfg.parent.mkdir(parents=True, exist_ok=True)
    extra = (luks.KERNEL_ARG,) if ctx.recipe.persistence.encrypted else ()
    cmdline = bootargs.kernel_cmdline(ctx.image_id, (*extra, *ctx.recipe.cmdline))
    ram = ctx.recipe.ram
    modes = {m: bootargs.mode_args(ctx.image_id, m, ram.delta_cap, ram.persistent_paths) for m in layout.MODES}
    menu = grub.grub_cfg(ctx.image_id, cmdline, ctx.recipe.grub_timeout, target.console, board_dtbs, ram.mode, modes)
    cfg.write_text(menu)
    if target.signed_uefi:
        signed.populate(staging, ctx.assets, ctx.image_id, menu)
    info = staging / layout.IMAGE_INFO_PATH
    info.parent.mkdir(parents=True, exist_ok=True)
    info.write_text(json.dumps(ctx.image_info(), indent=1) + "\n")
    # What the device rewrites, staged apart: p1 gets it after the rest, in sectors of its own.
    runtime = ctx.workdir / "boot-runtime"
    (runtime / layout.BOOT_STATE_DIR).mkdir(parents=True, exist_ok=True)
    primary, backup = grubenv.copies(layout.fresh_env(layout.INITIAL_ORDER, ram.mode))
    (runtime / layout.GRUBENV_PATH).write_bytes(primary)
    (runtime / layout.GRUBENV_BACKUP_PATH).write_bytes(backup)
    # The owner's settings, every line commented out: edit it on any computer after flashing.
    (runtime / layout.SETTINGS_PATH).write_bytes(
        resources.files("liveng.host").joinpath("data/liveng-settings.toml").read_bytes())
    filesystems.fat32(staging, runtime, ctx.part("boot"), ctx.recipe.sizes.boot, layout.BOOT_LABEL, ctx.image_id)


def step_persistence(ctx: Context) -> None:
    staging = ctx.workdir / "persistence"
    staging.mkdir(exist_ok=True)
    (staging / layout.PERSISTENCE_CONF).write_text(layout.PERSISTENCE_CONF_CONTENT)
    layout.make_reserve(staging)
    size, p = ctx.recipe.sizes.persistence, ctx.recipe.persistence
    room = luks.HEADER_ROOM_MIB if p.encrypted else 0
    filesystems.persistence_ext4(staging, ctx.part("persistence"), size - room, layout.persistence_label(ctx.image_id))
    if p.encrypted:
        luks.encrypt(ctx.part("persistence"), size, p, ctx.image_id, ctx.workdir)


def step_disk_image(ctx: Context) -> None:
    sizes = ctx.recipe.sizes
    extents, total = layout.plan(boot=sizes.boot * layout.MiB, system=ctx.sizes["system"],
                                 slot=sizes.slot * layout.MiB, persistence=sizes.persistence * layout.MiB)
    tmp = ctx.output.with_name(f".{ctx.output.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.truncate(total)
        disk.write_table(tmp, ctx.image_id, extents)
        files = {layout.Role.BOOT: ctx.part("boot"), layout.Role.SYSTEM: ctx.part("system"),
                 layout.Role.SLOT_A: ctx.part("slot-a"), layout.Role.PERSISTENCE: ctx.part("persistence")}
        fd = os.open(tmp, os.O_WRONLY)
        try:
            for ext in extents:
                if ext.role in files:
                    filesystems.copy_sparse(files[ext.role], fd, ext.start)
            if ctx.core_img is not None:  # PC: BIOS boot code in the MBR
                grub.install_bios(fd, ctx.core_img, extents[0].start)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, ctx.output)
    finally:
        tmp.unlink(missing_ok=True)
    ctx.sizes["image"] = total


Step = tuple[str, Callable[[Context], None]]
STEPS: list[Step] = [
    ("rootfs", step_rootfs),
    ("customise", step_customise),
    ("squashfs", step_squashfs),
    ("system ISO", step_system_iso),
    ("kernel slot", step_kernel_slot),
    ("boot partition", step_boot_partition),
    ("persistence", step_persistence),
    ("disk image", step_disk_image),
]


def build(recipe: Recipe, output: Path, cache_dir: Path | None = None, refresh: bool = False,
          cached_rootfs: bool = False,
          keep_workdir: bool = False, rootfs_tarball: Path | None = None) -> Context:
    output = output.absolute()
    if output.is_dir():
        raise UsageError(f"{output} is a directory: give the image file name with -o")
    if not output.parent.is_dir():
        raise UsageError(f"{output.parent} does not exist: create it or choose another -o")
    if rootfs_tarball is not None and not rootfs_tarball.is_file():
        raise UsageError(f"{rootfs_tarball}: no such rootfs tarball")
    preflight.check_build(recipe.platform, output.parent, need_mmdebstrap=rootfs_tarball is None,
                          host_arch=rootfs.host_arch(), encrypted=recipe.persistence.encrypted)
    mirrors = resolve_mirrors(recipe.mirror, recipe.security_mirror)
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix=".liveng-build-", dir=output.parent))
        if keep_workdir:
            log.info("work directory kept: %s", workdir)
        else:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        ctx = Context(recipe=recipe, output=output, workdir=workdir,
                      cache_dir=cache_dir or rootfs.default_cache_dir(), image_id=layout.new_image_id(),
                      mirrors=mirrors, refresh=refresh, rootfs_tarball=rootfs_tarball,
                      cached_rootfs=cached_rootfs)
        total_start = time.monotonic()
        times = progress.StepTimes(ctx.cache_dir, recipe.target)
        for i, (name, func) in enumerate(STEPS, 1):
            # The rootfs step's time depends on its cache: rootfs.obtain says how long making one took.
            last = times.last(name) if name != "rootfs" else None
            log.info("[%d/%d] %s ...%s", i, len(STEPS), name,
                     f" (last time: {progress.duration(last)})" if last is not None else "")
            start = time.monotonic()
            func(ctx)
            took = time.monotonic() - start
            times.record(name, took)
            log.info("[%d/%d] %s done in %.1f s", i, len(STEPS), name, took)
        log.info("built %s (id %s, version %s, %d MiB) in %.1f s", output, ctx.image_id, ctx.version,
                 ctx.sizes["image"] // layout.MiB, time.monotonic() - total_start)
        return ctx
    raise AssertionError("unreachable")
