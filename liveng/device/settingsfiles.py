"""What the settings service keeps outside the delta, and how it takes secrets off p1.

Kept outside the delta: a factory reset (or a restore to before the settings) discards the delta, but
p1's file, now without its Wi-Fi passphrase, is applied again. The key derived from the passphrase is
kept on p7 in liveng's own directory (layout.SETTINGS_KEPT_NAME, beside rw/, mode 0600), so that the
reset device joins the network again instead of refusing the whole file.

Off p1: a temporary file and a rename would leave the old file's clusters, secrets and all, free but
unwiped on the FAT. The redacted copy is written and synced first under a fixed temporary name, then
the old file is overwritten in place and synced, then renamed over; a power cut in between is rolled
forward at the next boot (finish_redaction).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from liveng import boundedread, layout
from liveng.device import bootstate, delta
from liveng.device.bootstate import DeviceError
from liveng.durable import fsync_dir


@contextlib.contextmanager
def kept_dir(live: bool) -> Iterator[Path | None]:
    """liveng's directory on p7 (outside the delta), or None when p7 cannot be reached (locked...)."""
    with contextlib.ExitStack() as stack:
        root = None
        if live:
            try:
                # Read-only unless live-boot mounted it writable (persistent mode): a RAM boot leaves p7 alone.
                root = stack.enter_context(delta.persistence_root(writable=False))
            except DeviceError as exc:
                print(f"liveng: warning: {exc}: the Wi-Fi key is not kept for a reset", file=sys.stderr)
        # Outside the try: an error of the caller's goes out as it came.
        yield root / layout.DELTA_STATE_DIR if root is not None else None


def kept_psk(kept: Path | None, ssid: str) -> str | None:
    if kept is None:
        return None
    try:
        value = json.loads((kept / layout.SETTINGS_KEPT_NAME).read_text()).get("wifi_psk", {}).get(ssid)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and len(value) == 64 else None


def keep_psk(kept: Path | None, ssid: str, psk: str) -> None:
    """Remember the key for ``ssid`` (written only when it changes: RAM modes leave the card alone)."""
    if kept is None or kept_psk(kept, ssid) == psk:
        return
    path = kept / layout.SETTINGS_KEPT_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data = data if isinstance(data, dict) and isinstance(data.get("wifi_psk"), dict) else {"wifi_psk": {}}
    data["wifi_psk"][ssid] = psk
    try:
        kept.mkdir(mode=0o700, parents=True, exist_ok=True)
        bootstate.write_atomic(path, (json.dumps(data, indent=1) + "\n").encode(), mode=0o600)
    except OSError as exc:  # p7 read-only (RAM mode): the settings still apply
        print(f"liveng: warning: the Wi-Fi key could not be kept on the persistence partition ({exc.strerror}): "
              "after a factory reset, put the passphrase back into the settings file", file=sys.stderr)


def _pending(boot: Path, name: str = layout.SETTINGS_PATH) -> Path:
    # No leading dot: write_atomic adds its own, and a name starting with ".." is best kept off FAT.
    return boot / f"{name.removesuffix('.toml')}.redacted"


def replace_wiping(boot: Path, data: bytes, name: str = layout.SETTINGS_PATH) -> None:
    """Replace the file ``name`` on the mounted p1 with ``data``, its old bytes overwritten first."""
    bootstate.write_atomic(_pending(boot, name), data)  # whole or absent: only a whole copy is rolled forward
    finish_redaction(boot, (name,))


def finish_redaction(boot: Path, names: tuple[str, ...] = (layout.SETTINGS_PATH,)) -> bool:
    """Complete the replacements replace_wiping began (p1 mounted writable); False when none was pending."""
    done = False
    for name in names:
        tmp, path = _pending(boot, name), boot / name
        if not tmp.exists():
            continue
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            pass
        else:
            try:
                # Newlines: an interrupted overwrite still reads as TOML or YAML (the copy beside it is applied next).
                size = os.fstat(fd).st_size
                os.write(fd, b"\n" * size)
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
        fsync_dir(boot)
        done = True
    return done


def read_boot_files(names: tuple[str, ...]) -> tuple[dict[str, bytes], bool]:
    """p1's files ``names`` that are present, and whether an error note lies beside them; a redaction a power
    cut interrupted is finished first. Raises boundedread.ReadError for what is not a small file."""
    with bootstate.mounted(layout.Role.BOOT, "vfat") as boot:
        if not any(_pending(boot, n).exists() for n in names):
            return _read(boot, names)
    with bootstate.mounted(layout.Role.BOOT, "vfat", writable=True) as boot:
        finish_redaction(boot, names)
        return _read(boot, names)


def _read(boot: Path, names: tuple[str, ...]) -> tuple[dict[str, bytes], bool]:
    found = {}
    for name in names:
        path = boot / name
        if path.is_file():
            found[name] = boundedread.read_regular(path, boundedread.SETTINGS_CAP)
    return found, (boot / layout.SETTINGS_ERROR_PATH).exists()


def note_error(when: str, message: str) -> None:
    """The reason, next to the file on p1, for an owner who has no console."""
    text = (f"liveng did NOT apply the settings at {when}: nothing was changed.\r\n{message}\r\n"
            "Fix the file named above and boot again.\r\n")
    try:
        with bootstate.mounted(layout.Role.BOOT, "vfat", writable=True) as boot:
            bootstate.write_atomic(boot / layout.SETTINGS_ERROR_PATH, text.encode())
    except (bootstate.DeviceError, OSError):
        pass  # the console and the journal have it anyway
