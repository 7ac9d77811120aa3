"""liveng update: whole new systems from signed bundles (liveng/bundle.py), tried with boot counting.

apply: the bundle is downloaded onto p7 (resumable), its metadata's signature checked with the
image's keyring and the system's hash with the metadata, before anything else is written. Then,
each step complete before the next begins:
1. the system ISO becomes SYSTEMS_DIR/<name>/ (a temporary name, synced, renamed), read back;
2. the new system's delta is made in DELTAS_DIR/<name> from the kept paths of the running one;
3. its kernel and initrd go into the kernel slot that is not running, bound to it (slots.py);
4. the boot order tries that slot first, with tries, as a kernel update does; the initramfs of
   that kernel swaps the deltas (live-premount/liveng-system).
A power cut before step 4 leaves the running system as it was (the leftovers are cleared by the
next apply); after it, GRUB tries the new system and falls back to the running one by itself. p2
and the running system are never written; the running system's delta stays as it is, parked under
its name, until nothing boots it any more.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from liveng import bundle, layout, manifest
from liveng.device import bootenv, bootstate, delta, fetch, kernel, progress, slots, snapshot, system
from liveng.device.bootstate import DeviceError
from liveng.device.runner import returncode, run
from liveng.durable import fsync_dir

LOCK = Path("/run/liveng-update.lock")
MARGIN = 64 * layout.MiB  # room left on p7 after an update, for the delta to go on working


class _Clock:
    """Step times for the report: where an update spends its time on a slow card."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.laps: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps.append((name, now - self.last))
        self.last = now

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.laps)


def config() -> bundle.UpdateConfig:
    path = Path("/") / bundle.UPDATE_CONFIG_PATH
    try:
        return bundle.parse_config(path.read_bytes())
    except FileNotFoundError:
        return bundle.UpdateConfig()
    except bundle.BundleError as exc:
        raise DeviceError(str(exc)) from None


def keyring() -> Path:
    path = Path("/") / bundle.UPDATE_KEYRING_PATH
    if not path.is_file():
        raise DeviceError("this image accepts no update bundles: its recipe names no [update] keyring")
    return path


def factory_info() -> dict[str, object]:
    with bootstate.mounted(layout.Role.SYSTEM, "iso9660") as root:
        try:
            info = json.loads((root / layout.IMAGE_INFO_PATH).read_text())
        except (OSError, ValueError) as exc:
            raise DeviceError(f"cannot read the factory system's {layout.IMAGE_INFO_PATH}: {exc}") from None
    if not isinstance(info, dict):
        raise DeviceError(f"the factory system's {layout.IMAGE_INFO_PATH} is not a JSON object")
    return info


def system_metadata(p7: Path, name: str) -> bundle.Metadata | None:
    try:
        return bundle.parse_metadata((p7 / layout.SYSTEMS_DIR / name / layout.SYSTEM_META_NAME).read_bytes())
    except (OSError, bundle.BundleError):
        return None


def version_of(p7: Path, name: str, factory: dict[str, object]) -> str:
    if name == layout.SYSTEM_FACTORY:
        return str(factory.get("version") or "0")
    meta = system_metadata(p7, name)
    return meta.version if meta else "0"


def newer(a: str, b: str) -> bool:
    """Debian's version order: is ``a`` later than ``b``?"""
    return returncode(["dpkg", "--compare-versions", a, "gt", b]) == 0


@contextlib.contextmanager
def update_lock() -> Iterator[None]:
    """One update at a time; a second one says so instead of waiting through a download."""
    with open(LOCK, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DeviceError("another 'liveng update apply' is running") from None
        yield


def bound_systems() -> dict[str, str]:
    """slot name -> system, for the slots that hold a kernel."""
    return {name: info.system for name in layout.SLOTS if (info := slots.read_slot(name)).kernel}


def collect_garbage(p7: Path, keep: set[str]) -> list[str]:
    """Delete the systems no slot names (and their deltas) and unfinished leftovers; return what went."""
    gone = []
    for base in (p7 / layout.SYSTEMS_DIR, p7 / layout.DELTAS_DIR):
        for entry in sorted(base.iterdir()) if base.is_dir() else ():
            if entry.name in keep or entry.name == layout.SYSTEM_FACTORY:
                continue
            delta.remove_tree(entry)
            gone.append(f"{base.name}/{entry.name}")
    if gone:
        os.sync()
    return gone


def _source(source: str | None, conf: bundle.UpdateConfig, ring: Path) -> tuple[str, int | None]:
    """The bundle's URL or path and its size if known, from a channel when ``source`` names one."""
    source = source or conf.channel
    if not source:
        raise DeviceError("no update source: give a bundle (URL or file) or a channel URL, or name a channel "
                          "in the recipe's [update] table")
    if source.endswith(bundle.BUNDLE_SUFFIX) or ("://" not in source and not Path(source).is_dir()):
        return source, None
    index, url = fetch.channel_index(source, ring)
    return url, index.size


def check(source: str | None) -> str:
    conf, ring = config(), keyring()
    url = source or conf.channel
    if not url or url.endswith(bundle.BUNDLE_SUFFIX):
        raise DeviceError("update check needs a channel URL (a directory holding index.json), given or in the recipe")
    index, bundle_url = fetch.channel_index(url, ring)
    factory = factory_info()
    with delta.persistence_root(writable=False) as p7:
        current = version_of(p7, system.booted_system(), factory)
    if index.target != factory.get("target") or index.arch != factory.get("arch"):
        return f"the channel offers {index.version} for {index.target}/{index.arch}, not for this device"
    if newer(index.version, current):
        return f"update available: {index.version} (running {current}), {index.size // layout.MiB} MiB: {bundle_url}"
    return f"up to date: running {current}, the channel offers {index.version}"


def _download(p7: Path, url: str, size: int | None) -> Path:
    incoming = p7 / layout.UPDATE_INCOMING_DIR
    incoming.mkdir(mode=0o700, parents=True, exist_ok=True)
    part = incoming / (hashlib.sha256(url.encode()).hexdigest()[:16] + ".part")
    for stale in incoming.iterdir():  # an earlier update's download: only this one may resume
        if stale != part:
            delta.remove_tree(stale)
    have = part.stat().st_size if part.exists() else 0
    local = None if "://" in url and not url.startswith("file://") else Path(url.removeprefix("file://"))
    if local is not None:
        if not local.is_file():
            raise DeviceError(f"{local}: no such bundle file")
        size, have = local.stat().st_size, 0
    if size is not None:
        free = delta.filesystem_space(p7)[1]
        if free - MARGIN < size - have:
            raise DeviceError(f"the bundle needs {(size - have) / layout.MiB:.1f} MiB more on the persistence "
                              f"partition, which has {free / layout.MiB:.1f} MiB free (keeping "
                              f"{MARGIN // layout.MiB} MiB): delete snapshots or data, or resize it")
    if local is None:
        return fetch.download(url, part, size, progress.print_progress)
    # A file: copied onto p7 whole, so that a removed USB stick cannot take the system away.
    tmp = part.with_suffix(".copy")
    shutil.copyfile(local, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, part)
    return part


def read_back(path: Path, meta: bundle.Metadata) -> None:
    """Hash the system as the card holds it (not as the page cache does)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while chunk := f.read(4 * layout.MiB):
            h.update(chunk)
    if h.hexdigest() != meta.system_sha256:
        raise DeviceError(f"{path} does not read back as written (the card may be failing): the new system "
                          "is not installed; this one boots as before")


def copy_system(src_p7: Path, dest_p7: Path, name: str) -> int:
    """An installed system onto another card's p7 (liveng install of a running updated system), read
    back there against its signed hash. Returns its size."""
    meta = system_metadata(src_p7, name)
    if meta is None:
        raise DeviceError(f"system {name}'s {layout.SYSTEM_META_NAME} is missing or damaged: run liveng verify")
    src, dest = src_p7 / layout.SYSTEMS_DIR / name, dest_p7 / layout.SYSTEMS_DIR / name
    dest.mkdir(mode=0o755, parents=True)
    for file in (layout.SYSTEM_META_NAME, layout.SYSTEM_SIG_NAME, layout.SYSTEM_ISO_NAME):
        shutil.copyfile(src / file, dest / file, follow_symlinks=False)
        with open(dest / file, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(dest)
    read_back(dest / layout.SYSTEM_ISO_NAME, meta)
    return meta.system_size


def system_bytes(p7: Path, name: str) -> int:
    """What an installed system takes on p7."""
    d = p7 / layout.SYSTEMS_DIR / name
    return sum(f.stat().st_size for f in d.iterdir()) if d.is_dir() else 0


def _install_system(p7: Path, part: Path, meta: bundle.Metadata, signed: tuple[bytes, bytes]) -> Path:
    systems = p7 / layout.SYSTEMS_DIR
    systems.mkdir(mode=0o755, parents=True, exist_ok=True)
    final = systems / meta.system_name
    tmp = systems / f".{meta.system_name}.new"
    delta.remove_tree(tmp)
    tmp.mkdir(mode=0o755)
    for name, data in ((layout.SYSTEM_META_NAME, signed[0]), (layout.SYSTEM_SIG_NAME, signed[1])):
        bootstate.write_atomic(tmp / name, data, 0o644)
    os.replace(part, tmp / layout.SYSTEM_ISO_NAME)
    fsync_dir(tmp)
    delta.remove_tree(final)
    os.replace(tmp, final)
    fsync_dir(systems)
    read_back(final / layout.SYSTEM_ISO_NAME, meta)
    return final


def _stage_delta(p7: Path, name: str, keep: tuple[str, ...]) -> list[str]:
    """The new system's delta: the kept paths of the running delta (p7:rw), copied. Returns them."""
    src = p7 / layout.DELTA_DIR
    present = [p for p in keep if p == "/" or (src / p.lstrip("/")).exists() or (src / p.lstrip("/")).is_symlink()]
    members = tuple("." if p == "/" else f".{p}" for p in present)
    parents = tuple(sorted({f".{'/'.join(p.split('/')[:i])}" for p in present if p != "/"
                            for i in range(2, p.count("/") + 1)}))
    if "/" in present:
        need = delta.used_bytes(src) or 0
    else:
        need = sum(delta.used_bytes(src / p.lstrip("/")) or 0 for p in present)
    if delta.filesystem_space(p7)[1] - MARGIN < need:
        raise DeviceError(f"the kept paths need {need // layout.MiB} MiB on the persistence partition, more than "
                          "it has free: delete snapshots or data first")
    deltas = p7 / layout.DELTAS_DIR
    deltas.mkdir(mode=0o700, parents=True, exist_ok=True)
    final, tmp = deltas / name, deltas / f".{name}.new"
    delta.remove_tree(tmp)
    tmp.mkdir(mode=0o755)
    try:
        if members:
            snapshot.copy_tree(src, tmp, members, parents=parents)
        os.sync()
    except BaseException:
        delta.remove_tree(tmp)
        raise
    delta.remove_tree(final)
    os.replace(tmp, final)
    fsync_dir(deltas)
    return present


def _mark_owner(p7: Path, running: str) -> None:
    """The marker that names rw's system: the initramfs assumes the factory's when there is none, but
    renaming an existing marker (the swap) needs no free inode, and a running update system has one."""
    state = p7 / layout.DELTA_STATE_DIR
    if any(state.glob(Path(layout.DELTA_OWNER_PREFIX).name + "*")):
        return
    fd = os.open(p7 / f"{layout.DELTA_OWNER_PREFIX}{running}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                 0o644)
    os.fsync(fd)
    os.close(fd)
    fsync_dir(state)


def _kernel_files(iso: Path, meta: bundle.Metadata, workdir: Path) -> dict[str, Path]:
    """The kernel, initrd and device trees of the system, copied out of its ISO and checked."""
    mnt = workdir / "iso"
    mnt.mkdir()
    run(["mount", "-t", "iso9660", "-o", "loop,ro", str(iso), str(mnt)])
    try:
        wanted = [rel for rel in meta.files if rel in (layout.KERNEL_PATH, layout.INITRD_PATH)
                  or rel.startswith(layout.DTB_DIR + "/")]
        files = {}
        for rel in wanted:
            dest = workdir / "kernel" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(mnt / rel, dest)
            if manifest.sha256_file(dest) != meta.files[rel]:
                raise DeviceError(f"{rel} in the new system does not match its signed hash: nothing was switched")
            files[rel] = dest
        return files
    finally:
        run(["umount", str(mnt)])


def _verified(p7: Path, part: Path, factory: dict[str, object], running: str,
              allow_downgrade: bool) -> tuple[bundle.Metadata, tuple[bytes, bytes]]:
    """Every check before anything is written: signature, target, layout, version, the system's hash.
    Returns the metadata and the signed bytes (to keep beside the system); the bundle is cut to its system."""
    opened = fetch.open_signed_bundle(part, keyring())
    meta = opened.meta
    if meta.target != factory.get("target") or meta.arch != factory.get("arch"):
        raise DeviceError(f"the bundle is for {meta.target}/{meta.arch}, this device is "
                          f"{factory.get('target')}/{factory.get('arch')}")
    if meta.layout != layout.LAYOUT_VERSION:
        raise DeviceError(f"the bundle's system has layout {meta.layout}, this device layout {layout.LAYOUT_VERSION}")
    current = version_of(p7, running, factory)
    if not allow_downgrade and not newer(meta.version, current):
        raise DeviceError(f"the bundle's version {meta.version} is not newer than the running {current} "
                          "(--allow-downgrade installs it anyway)")
    if meta.system_name == running:
        raise DeviceError(f"the system {meta.system_name} is the one running")
    fetch.check_system(part, meta, progress.print_progress)
    fetch.cut_to_system(part, meta)
    return meta, (opened.metadata, opened.signature)


def apply(source: str | None, allow_downgrade: bool = False) -> str:
    conf, ring = config(), keyring()
    factory = factory_info()
    if int(str(factory.get("layout", 1))) < layout.UPDATABLE_LAYOUT:
        raise DeviceError("this device's factory system was built before system updates: its initramfs cannot "
                          "boot an updated system; flash a newer image")
    running = system.booted_system()
    booted = kernel.booted_entry()
    with update_lock(), delta.persistence_root(writable=True) as p7:
        if delta.read_pending(p7) is not None or delta.switch_in_progress(p7):
            raise DeviceError("a restore, reset or commit waits for the next boot: reboot first (or 'liveng cancel')")
        collect_garbage(p7, set(bound_systems().values()) | {running})
        url, size = _source(source, conf, ring)
        clock = _Clock()
        part = _download(p7, url, size)
        clock.lap("download")
        try:
            meta, signed = _verified(p7, part, factory, running, allow_downgrade)
        except (DeviceError, bundle.BundleError) as exc:
            # A bundle that is refused is not kept: the next attempt downloads afresh.
            part.unlink(missing_ok=True)
            text = str(exc)
            raise DeviceError(text if "nothing was" in text else f"{text}; nothing was installed") from None
        clock.lap("checks")
        # The boot-state lock from here to the end: a kernel install waits instead of choosing the
        # same idle slot. That slot leaves the boot order first, so that no boot takes it while the
        # system it names (a system installed before, applied again) is being replaced.
        with bootenv.locked():
            state = bootstate.read_state()
            target = kernel.target_slot(state, booted)
            entry = layout.ENTRY_SLOT[target]
            if entry in state.order:
                bootstate.update_state(order=kernel.normalized([e for e in state.order if e != entry]))
            final = _install_system(p7, part, meta, signed)
            clock.lap("system written and read back")
            kept = _stage_delta(p7, meta.system_name, conf.keep)
            _mark_owner(p7, running)
            clock.lap("delta")
            base = "/dev/shm" if Path("/dev/shm").is_dir() else None
            with tempfile.TemporaryDirectory(prefix="liveng-update-", dir=base) as tmp:
                files = _kernel_files(final / layout.SYSTEM_ISO_NAME, meta, Path(tmp))
                slots.write_slot(target, meta.kernel, files, {rel: meta.files[rel] for rel in files},
                                 meta.system_name)
            rest = [e for e in state.order if e != entry]
            if booted and booted != layout.ENTRY_FACTORY and booted not in rest:
                rest.insert(0, booted)
            bootstate.update_state(order=kernel.normalized([entry, *rest]), tries=layout.TRIES)
            clock.lap("kernel slot")
    return (f"system {meta.version} installed (kernel {meta.kernel} in slot {target.upper()}, kept from this "
            f"system: {', '.join(kept) or 'nothing'}); it boots next and falls back to "
            f"{rest[0] if rest else layout.ENTRY_FACTORY} if it does not come up ({clock})")
