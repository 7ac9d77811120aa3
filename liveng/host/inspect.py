"""The device status of an image or a card, read from the host without mounting anything.

p1 with mtools, the ISO9660 kernel slots with xorriso (at the partition's offset), p7 with
debugfs (which opens a file at an offset as ``FILE?offset=N``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from liveng import bundle, grubenv, layout, settings
from liveng.host.errors import CommandError, ImageError
from liveng.host.imagefile import ImageFile, fat_file
from liveng.host.runner import output, run
from liveng.requests import RequestError, parse_request

ISO_BLOCK = 2048


def _is_iso(image: Path, offset: int) -> bool:
    with open(image, "rb") as f:
        f.seek(offset + 16 * ISO_BLOCK + 1)
        return f.read(5) == b"CD001"


def iso_file(image: Path, offset: int, path: str) -> bytes | None:
    """One file of the ISO9660 at ``offset``, or None if there is no ISO or no such file."""
    if offset % ISO_BLOCK or not _is_iso(image, offset):
        return None
    block = str(offset // ISO_BLOCK)
    with tempfile.TemporaryDirectory(prefix="liveng-inspect-") as tmp:
        dest = Path(tmp) / "file"
        try:
            output(["xorriso", "-abort_on", "FAILURE", "-displacement", block, "-load", "sbsector", block,
                    "-indev", image, "-osirrox", "on", "-extract", f"/{path}", dest])
        except CommandError:
            return None
        return dest.read_bytes() if dest.is_file() else None


def _e2(image: Path, offset: int) -> str:
    return f"{image}?offset={offset}"


def _debugfs(image: Path, offset: int, commands: list[str]) -> str:
    with tempfile.NamedTemporaryFile("w", prefix="liveng-debugfs-", suffix=".cmd") as f:
        f.write("\n".join(commands) + "\n")
        f.flush()
        return output(["debugfs", "-f", f.name, _e2(image, offset)])


def _listing(image: Path, offset: int, dirs: list[str]) -> dict[str, list[tuple[int, int, str, int]]]:
    """``ls -p`` of each directory in one debugfs run: (inode, mode, name, size) per entry."""
    text = _debugfs(image, offset, [f'ls -p "{d}"' for d in dirs])
    out: dict[str, list[tuple[int, int, str, int]]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("debugfs: ls -p "):
            current = line[len("debugfs: ls -p "):].strip('"')
            out[current] = []
        elif current is not None and line.startswith("/"):
            fields = line.split("/")
            # /inode/mode/uid/gid/name/size/ ; a name cannot hold "/" but the split keeps it whole
            if len(fields) >= 8 and fields[1].isdigit():
                name = "/".join(fields[5:-2])
                size = int(fields[-2]) if fields[-2].isdigit() else 0
                out[current].append((int(fields[1]), int(fields[2], 8), name, size))
    return out


def delta_bytes(image: Path, offset: int) -> int:
    """Apparent size of the files in p7's rw/ (each inode once), walking it a level per debugfs run."""
    seen: set[int] = set()
    total = 0
    level = [f"/{layout.DELTA_DIR}"]
    while level:
        nxt = []
        for d, entries in _listing(image, offset, level).items():
            for inode, mode, name, size in entries:
                if name in (".", "..") or inode in seen:
                    continue
                seen.add(inode)
                if mode & 0o170000 == 0o040000:
                    nxt.append(f"{d}/{name}")
                else:
                    total += size
        level = nxt
    return total


def ext4_superblock(image: Path, offset: int) -> dict[str, str] | None:
    """The superblock fields of the ext4 at byte ``offset`` of ``image``, named as dumpe2fs -h names
    them; None when no ext4 opens there. debugfs, not dumpe2fs: trixie's dumpe2fs (1.47.2) no longer
    opens FILE?offset=N. -c: without the bitmaps, which a power cut can leave with checksums the
    journal has yet to fix."""
    done = run(["debugfs", "-c", "-R", "stats -h", _e2(image, offset)], capture=True, check=False)
    fields = {}
    for line in done.stdout.decode(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    # The magic, not the exit code alone: debugfs exits 0 when the file to open is missing.
    return fields if done.returncode == 0 and fields.get("Filesystem magic number") == "0xEF53" else None


def persistence_status(image: Path, offset: int) -> dict[str, Any]:
    fields = ext4_superblock(image, offset)
    if fields is None:
        raise ValueError("no ext4 file system opens there (debugfs reads no superblock)")
    block = int(fields["Block size"])
    size, free = int(fields["Block count"]) * block, int(fields["Free blocks"]) * block
    top = _listing(image, offset, ["/", f"/{layout.DELTA_STATE_DIR}", f"/{layout.SNAPSHOT_DIR}"])
    snaps = sorted((name.removesuffix(layout.SNAPSHOT_SUFFIX), sz) for _, _, name, sz in top.get(
        f"/{layout.SNAPSHOT_DIR}", []) if name.endswith(layout.SNAPSHOT_SUFFIX) and not name.startswith("."))
    state = {name for _, _, name, _ in top.get(f"/{layout.DELTA_STATE_DIR}", [])}
    pending = None
    if Path(layout.PENDING_PATH).name in state:
        text = _debugfs(image, offset, [f"cat /{layout.PENDING_PATH}"])
        body = "\n".join(line for line in text.splitlines() if not line.startswith("debugfs"))
        try:
            pending = parse_request(body).describe().replace(", applied at the next boot", "")
        except RequestError as exc:
            pending = str(exc)
    root_names = {name for _, _, name, _ in top.get("/", [])}
    return {"size": size, "free": free,
            "delta_bytes": delta_bytes(image, offset) if layout.DELTA_DIR in root_names else 0,
            "booted": layout.DELTA_DIR in root_names,
            "snapshots": [{"name": n, "size": s} for n, s in snaps],
            "pending": pending,
            # The journal, or a boot-menu reset not finished: the next boot finishes either.
            "switch_in_progress": bool(state & {Path(layout.SWITCH_PATH).name, Path(layout.RESET_DELTA_DIR).name})}


def _debugfs_cat(image: Path, offset: int, path: str) -> bytes:
    text = _debugfs(image, offset, [f'cat "/{path}"'])
    return "\n".join(line for line in text.splitlines() if not line.startswith("debugfs")).encode()


def systems_status(image: Path, offset: int, slot_systems: dict[str, str], factory_version: str) -> dict[str, Any]:
    """The systems an image can boot: the factory one (p2) and the updated ones on p7, with the kernel
    slots bound to each and where each one's delta is (the booted one's in rw, the others parked)."""
    top = _listing(image, offset, ["/liveng", f"/{layout.SYSTEMS_DIR}", f"/{layout.DELTAS_DIR}"])
    owner_name = Path(layout.DELTA_OWNER_PREFIX).name
    owners = [name.removeprefix(owner_name) for _, _, name, _ in top.get("/liveng", []) if name.startswith(owner_name)]
    in_rw = owners[0] if owners else layout.SYSTEM_FACTORY
    parked = {name for _, _, name, _ in top.get(f"/{layout.DELTAS_DIR}", []) if name not in (".", "..")}
    systems: dict[str, dict[str, Any]] = {layout.SYSTEM_FACTORY: {"version": factory_version, "where": "p2"}}
    for _, mode, name, _ in top.get(f"/{layout.SYSTEMS_DIR}", []):
        if name in (".", "..") or name.startswith(".") or mode & 0o170000 != 0o040000:
            continue  # an unfinished install (a dot name) is not a system
        d = f"{layout.SYSTEMS_DIR}/{name}"
        version: str | None
        try:
            version = bundle.parse_metadata(_debugfs_cat(image, offset, f"{d}/{layout.SYSTEM_META_NAME}")).version
        except bundle.BundleError:
            version = None  # `liveng verify` on the device names what is wrong
        sizes = {n: sz for _, _, n, sz in _listing(image, offset, [f"/{d}"]).get(f"/{d}", [])}
        systems[name] = {"version": version, "where": "p7", "size": sizes.get(layout.SYSTEM_ISO_NAME)}
    for name, info in systems.items():
        info["slots"] = sorted(s for s, owner in slot_systems.items() if owner == name)
        info["delta"] = "rw" if name == in_rw else ("parked" if name in parked else None)
    return systems


def settings_status(image: Path, offset: int) -> dict[str, Any]:
    """The owner's settings file on p1: what it sets, whether it still holds secrets, the device's last error."""
    def read(path: str) -> str | None:
        try:
            return fat_file(image, offset, path).decode(errors="replace")
        except ImageError:
            return None

    text, note = read(layout.SETTINGS_PATH), read(layout.SETTINGS_ERROR_PATH)
    result: dict[str, Any] = {"present": text is not None, "sets": [], "secrets": False, "error": None,
                              "device_error": note.strip().replace("\r", "") if note else None}
    if text is not None:
        try:
            data = settings.decode(text, layout.SETTINGS_PATH)
            settings.parse(data, layout.SETTINGS_PATH)
            result["sets"] = sorted(data)
            result["secrets"] = settings.has_secrets(data)
        except settings.SettingsError as exc:
            result["error"] = str(exc)
    return result


def _factory_version(image: ImageFile) -> str:
    raw = iso_file(image.path, image.table.entry(layout.partition(layout.Role.SYSTEM).number).start,
                   layout.IMAGE_INFO_PATH)
    try:
        info = json.loads(raw) if raw else None
    except ValueError:
        info = None
    return str(info.get("version") or "0") if isinstance(info, dict) else "unknown (p2's image.json unreadable)"


def boot_state_copies(image: Path, p1: int, paths: tuple[str, str]) -> list[bytes | None]:
    """The two copies at ``paths`` (None: missing or unreadable, which grubenv.choose reports)."""
    copies: list[bytes | None] = []
    for path in paths:
        try:
            copies.append(fat_file(image, p1, path))
        except ImageError:
            copies.append(None)
    return copies


def status(image: ImageFile) -> dict[str, Any]:
    table = image.table
    report: dict[str, Any] = {"image_id": table.image_id, "errors": []}
    boot = table.entry(layout.partition(layout.Role.BOOT).number)
    try:
        menu = fat_file(image.path, boot.start, layout.GRUB_CFG_PATH)
    except ImageError:
        menu = b""
    copies = boot_state_copies(image.path, boot.start, layout.grubenv_paths(menu))  # where its GRUB reads them
    choice = grubenv.choose(*copies)
    env = choice.env
    report["boot"] = {"order": list(layout.order_from_env(env.get(layout.ENV_ORDER, layout.INITIAL_ORDER))),
                      "tries": env.get(layout.ENV_TRIES), "good": env.get(layout.ENV_GOOD),
                      "source": choice.source, "damaged": choice.damaged}
    for copy, why in choice.damaged.items():
        report["errors"].append(f"boot state: the {copy} copy is damaged ({why}); the device repairs it at "
                                "its next boot-state change")
    report["settings"] = settings_status(image.path, boot.start)
    slots = {}
    for name, role in layout.SLOTS.items():
        raw = iso_file(image.path, table.entry(layout.partition(role).number).start, layout.SLOT_INFO_PATH)
        try:
            info = json.loads(raw) if raw else {}
        except ValueError as exc:
            info = exc
        if not isinstance(info, dict):
            report["errors"].append(f"slot {name}: {layout.SLOT_INFO_PATH} is damaged: the slot cannot be trusted "
                                    "(a kernel update rewrites it)")
            info = {}
        bound = iso_file(image.path, table.entry(layout.partition(role).number).start, layout.SLOT_SYSTEM_PATH)
        slots[name] = {"kernel": info.get("kernel"), "written": info.get("written"),
                       "system": bound.decode(errors="replace").strip() if bound else layout.SYSTEM_FACTORY}
    report["slots"] = slots
    p7 = table.entry(layout.partition(layout.Role.PERSISTENCE).number).start
    with open(image.path, "rb") as f:
        f.seek(p7)
        encrypted = f.read(6) == b"LUKS\xba\xbe"
    try:
        report["persistence_encrypted"] = encrypted
        if not encrypted:
            report["persistence"] = persistence_status(image.path, p7)
            report["systems"] = systems_status(image.path, p7, {n: str(s["system"]) for n, s in slots.items()
                                                                 if s["kernel"]}, _factory_version(image))
    except (CommandError, KeyError, ValueError) as exc:
        report["errors"].append(f"persistence partition: {exc}")
    return report


def lines(report: dict[str, Any]) -> list[str]:
    def mib(v: int) -> str:
        return f"{v / layout.MiB:.1f} MiB"

    out = []
    if "boot" in report:
        b = report["boot"]
        out.append(f"boot:    order {' '.join(b['order'])}, tries {b['tries']}, last good {b['good'] or 'none'} "
                   f"(from the {b['source']} copy)")
    st = report.get("settings")
    if st:
        if not st["present"]:
            out.append(f"settings: no {layout.SETTINGS_PATH} on p1")
        elif st["error"]:
            out.append(f"settings: INVALID, the device will apply none of it: {st['error']}")
        elif not st["sets"]:
            out.append(f"settings: {layout.SETTINGS_PATH} sets nothing (the commented example)")
        else:
            secrets = "; holds secrets: not applied yet" if st["secrets"] else ""
            out.append(f"settings: {layout.SETTINGS_PATH} sets {', '.join(st['sets'])}{secrets}")
        if st["device_error"]:
            why = st["device_error"].splitlines()  # when, the reason, what to do (settingsfiles.note_error)
            out.append(f"settings: the device could not apply it: {why[1] if len(why) > 1 else why[0]}")
    for name, s in report["slots"].items():
        out.append(f"slot {name.upper()}:  " + (f"kernel {s['kernel']}, written {s['written']}" if s["kernel"]
                                               else "empty"))
    for name, info in report.get("systems", {}).items():
        slots_text = ",".join(s.upper() for s in info["slots"]) or "none"
        out.append(f"system {name}: version {info['version']} on {info['where']}, kernel slots {slots_text}, "
                   f"delta {info['delta'] or 'none'}")
    p = report.get("persistence")
    if p:
        delta = mib(p["delta_bytes"]) if p["booted"] else "none yet (never booted)"
        out.append(f"delta:   {delta}; persistence {mib(p['size'])}, {mib(p['free'])} free")
        snaps = p["snapshots"]
        out.append(f"snapshots: {len(snaps)}" + "".join(f"\n  {s['name']:<24} {mib(s['size'])}" for s in snaps))
        if p["switch_in_progress"]:
            out.append("pending: a restore or reset was interrupted during boot: it completes at the next boot")
        else:
            out.append(f"pending: {p['pending'] or 'nothing'}")
    if report.get("persistence_encrypted"):
        out.append("delta:   encrypted (LUKS2): the delta and snapshots are not shown offline")
    out.extend(f"error:   {e}" for e in report["errors"])
    return out
