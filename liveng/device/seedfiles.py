"""Everything the settings service reads at boot: liveng-settings.toml, Raspberry Pi Imager's files on p1
(rpi-preseed.toml; user-data, network-config, meta-data and the arguments it appends to cmdline.txt) and a
cloud-init NoCloud seed disk (a filesystem labelled CIDATA or cidata: cloud-localds, libvirt, Proxmox).

They are translated together into one Settings (liveng.seeds: which source wins is written there), so the
whole of it is checked before anything is applied, exactly as for liveng-settings.toml alone. Debian's
cloud-init is not in liveng images: nothing else reads these files.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from liveng import boundedread, layout, seeds, settings
from liveng.device import runner
from liveng.seeds import network, redact
from liveng.settings import Settings, SettingsError

PRESEED = "rpi-preseed.toml"
NOCLOUD = ("user-data", "network-config", "meta-data")
CMDLINE = "cmdline.txt"
# Read from p1, in this order; the pending copies of a redaction are named after them (settingsfiles).
P1_FILES = (layout.SETTINGS_PATH, PRESEED, *NOCLOUD, CMDLINE)
SEED_LABELS = ("CIDATA", "cidata")
P1_PREFIX = ""  # p1's files are named as they are: the owner knows them by these names
DISK_PREFIX = "CIDATA:"


@dataclass
class Found:
    """The raw files: ``p1`` by name (present ones), ``disk`` those of a seed disk (None: no such disk)."""

    p1: dict[str, bytes] = field(default_factory=dict)
    disk: dict[str, bytes] | None = None
    error_note: bool = False

    @property
    def empty(self) -> bool:
        return not any(n in self.p1 for n in P1_FILES if n != CMDLINE) and not self.disk

    @property
    def seeds_present(self) -> bool:
        return any(n in self.p1 for n in (PRESEED, *NOCLOUD)) or bool(self.disk)

    def digest(self) -> str:
        """What was applied. liveng-settings.toml alone keeps its own digest (the record of older versions)."""
        if not self.seeds_present:
            return settings.digest(self.p1.get(layout.SETTINGS_PATH, b""))
        h = hashlib.sha256()
        for where, files in (("p1", self.p1), ("disk", self.disk or {})):
            for name in sorted(files):
                data = files[name]
                if name == CMDLINE:  # only what Imager appends matters, not the rest of the line
                    data = " ".join(network.kernel(data.decode(errors="replace"), name).relevant).encode()
                h.update(f"{where}:{name}:{len(data)}:".encode() + data)
        return h.hexdigest()


def read_dir(where: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """The files ``names`` present in ``where``, each read with a cap (boundedread.ReadError if one is no
    small regular file)."""
    found = {}
    for name in names:
        path = where / name
        if path.is_file():
            found[name] = boundedread.read_regular(path, seeds.MAX_BYTES)
    return found


def seed_disk() -> Path | None:
    """The block device labelled CIDATA/cidata, if one is attached. blkid reads the devices the kernel knows
    (no udev database: waiting for udev to settle would hold up every boot for a disk that is rarely there)."""
    for label in SEED_LABELS:
        try:
            found = runner.run(["blkid", "-c", "/dev/null", "-o", "device", "-t", f"LABEL={label}"]).split()
        except runner.DeviceError:  # blkid's status 2: no such device
            continue
        if found:
            return Path(found[0])
    return None


def read_seed_disk() -> dict[str, bytes] | None:
    """The NoCloud files of a seed disk (mounted read-only: it is never written), None without one."""
    dev = seed_disk()
    if dev is None:
        return None
    Path("/run/liveng").mkdir(parents=True, exist_ok=True)
    where = Path(tempfile.mkdtemp(prefix="cidata.", dir="/run/liveng"))
    try:
        try:
            runner.run(["mount", "-o", "ro,nosuid,nodev,noexec", str(dev), str(where)])
        except runner.DeviceError as exc:
            # Its settings are part of the whole: none is applied without them.
            raise SettingsError(f"{DISK_PREFIX} the seed disk {dev} cannot be read ({exc}): detach it or "
                                "make it again (cloud-localds)") from None
        try:
            return read_dir(where, NOCLOUD)
        finally:
            runner.run(["umount", str(where)])
    finally:
        with contextlib.suppress(OSError):
            where.rmdir()


@dataclass
class Translated:
    settings: Settings
    translation: seeds.Translation
    native_text: str | None  # liveng-settings.toml as text, for its own redaction
    notes: list[str] = field(default_factory=list)


def _text(data: bytes | None, name: str) -> str | None:
    return None if data is None else seeds.decode(data, name)


def _nocloud(files: dict[str, bytes], prefix: str) -> seeds.NoCloud:
    user_data, network_config, meta_data = (_text(files.get(n), prefix + n) for n in NOCLOUD)
    return seeds.NoCloud(user_data, network_config, meta_data, prefix=prefix)


def translate(found: Found) -> Translated:
    """All sources as one Settings, checked against the schema; SettingsError names the file (and line)."""
    native_path = layout.SETTINGS_PATH
    try:
        native_text = None
        parts = []
        if layout.SETTINGS_PATH in found.p1:
            try:
                native_text = found.p1[layout.SETTINGS_PATH].decode()
            except UnicodeDecodeError:
                raise SettingsError(f"{native_path}: not UTF-8 text: save it as UTF-8") from None
            data = settings.decode(native_text, native_path)
            settings.parse(data, native_path)  # its own errors, named in its own terms
            parts.append(seeds.native(data, native_path))
        p1 = found.p1
        cmdline = _text(p1.get(CMDLINE), CMDLINE)
        nocloud = _nocloud(p1, P1_PREFIX) if any(n in p1 for n in NOCLOUD) else None
        disk = _nocloud(found.disk, DISK_PREFIX) if found.disk else None
        parts.append(seeds.gather(preseed=_text(p1.get(PRESEED), PRESEED), p1=nocloud, seed_disk=disk,
                                  cmdline=cmdline))
        merged = seeds.merge(parts)
    except seeds.SeedError as exc:
        raise SettingsError(str(exc)) from None
    s = settings.parse(merged.data, "the settings")
    return Translated(s, merged, native_text, list(merged.notes))


def without_wifi(t: Translated, why: str) -> Translated:
    t.notes.append(f"{t.translation.sources.get('wifi', 'wifi')}: the Wi-Fi network is not set up: {why}")
    return replace(t, settings=replace(t.settings, wifi=None))


def redacted(found: Found, t: Translated, note: str) -> dict[str, bytes]:
    """p1's files that hold secrets, without them (name -> new content); a seed disk is never written."""
    out: dict[str, bytes] = {}
    if t.native_text is not None and settings.has_secrets(settings.decode(t.native_text, layout.SETTINGS_PATH)):
        out[layout.SETTINGS_PATH] = settings.redact(t.native_text, note).encode()
    by_file: dict[str, list[seeds.common.Path]] = {}
    for file, path in t.translation.secret_paths:
        if not file.startswith(DISK_PREFIX):
            by_file.setdefault(file, []).append(path)
    for file, paths in by_file.items():
        text = seeds.decode(found.p1[file], file)
        fresh = redact.toml(text, file, paths) if file == PRESEED else redact.yaml(text, file, paths)
        if fresh != text:
            out[file] = fresh.encode()
    return out


def report(t: Translated) -> list[str]:
    """What the owner should know beyond what changed: keys liveng does not apply, defaults it chose."""
    lines = list(t.notes)
    if t.translation.ignored:
        lines.append("not applied (liveng does not do these; an image with Debian's cloud-init would): "
                     + ", ".join(t.translation.ignored))
    if any(f.startswith(DISK_PREFIX) for f, _ in t.translation.secret_paths):
        lines.append("the seed disk's passwords and keys stay on it: liveng never writes to a seed disk")
    return lines
