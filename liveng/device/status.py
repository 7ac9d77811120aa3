"""liveng status: layout, boot, delta, kernel slots, snapshots and pending requests in one report."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from liveng import layout
from liveng.device import bootstate, delta, kernel, ram, snapshot, system, updatestatus
from liveng.device.bootstate import DeviceError


def _partitions(image_id: str) -> list[dict[str, Any]]:
    out = []
    for part in layout.PARTITIONS:
        dev = Path(layout.partuuid_path(image_id, part.role))
        entry: dict[str, Any] = {"number": part.number, "role": part.role.value, "device": None, "size": None}
        if dev.exists():
            real = dev.resolve()
            entry["device"] = str(real)
            size_file = Path("/sys/class/block") / real.name / "size"
            if part.role is not layout.Role.EXTENDED and size_file.exists():
                entry["size"] = int(size_file.read_text()) * layout.SECTOR
        out.append(entry)
    return out


def _persistence(report: dict[str, Any]) -> None:
    with delta.persistence_root(writable=False) as root:
        size, free = delta.filesystem_space(root)
        report["persistence"] = {"size": size, "free": free,
                                 "delta_bytes": delta.used_bytes(root / layout.DELTA_DIR),
                                 "encrypted": bootstate.is_luks(bootstate.device_path(layout.Role.PERSISTENCE))}
        snaps = snapshot.list_snapshots(root)
        report["snapshots"] = {"count": len(snaps), "bytes": sum(s.size for s in snaps),
                               "last": ({"name": snaps[-1].name, "created": snaps[-1].created,
                                         "size": snaps[-1].size} if snaps else None)}
        try:
            pending = delta.read_pending(root)
            report["pending"] = dataclasses.asdict(pending) | {"text": pending.describe()} if pending else None
        except DeviceError as exc:
            report["pending"] = {"error": str(exc)}
        report["switch_in_progress"] = delta.switch_in_progress(root)


def _initramfs_notices() -> list[str]:
    """What the initramfs did to p7 at this boot (live-premount/liveng-p7: a repair; liveng-room: no
    free inodes)."""
    try:
        return Path(layout.INITRAMFS_NOTICE_PATH).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []


def collect() -> dict[str, Any]:
    st = system.status()
    report: dict[str, Any] = dataclasses.asdict(st)
    report["firmware"] = "UEFI" if Path("/sys/firmware/efi").is_dir() else "BIOS"
    report["errors"] = []
    report["warnings"] = _initramfs_notices()
    if st.image_id is None:
        return report
    report["partitions"] = _partitions(st.image_id)
    report["mode"] = {"running": ram.running_mode(), "persistent_paths": ram.mounted_paths()}
    for name, func in (("persistence", _persistence),
                       ("kernel slots", lambda r: r.update(kernel_slots=kernel.status_dict())),
                       ("systems", lambda r: r.update(systems=updatestatus.status_dict()))):
        try:
            func(report)
        except (DeviceError, OSError) as exc:
            report["errors"].append(f"{name}: {exc}")
    return report


def _mib(value: object) -> str:
    return f"{int(value) / layout.MiB:.1f} MiB" if isinstance(value, int) else "?"


def lines(r: dict[str, Any]) -> list[str]:
    out = [f"image id:     {r['image_id'] or 'unknown (not booted by liveng GRUB)'}",
           f"booted from:  {r['boot_entry'] or 'unknown'} ({r['firmware']})",
           f"kernel:       {r['kernel']}",
           f"root:         {r['root_fstype']}",
           f"system layer: {', '.join(r['lower']) or '-'}",
           f"delta layer:  {r['upper'] or '-'} on {r['persistence_device'] or 'RAM'}"]
    if "mode" in r:
        kept = ", ".join(r["mode"]["persistent_paths"])
        out.append(f"mode:         {r['mode']['running']}" + (f" (on the card: {kept})" if kept else ""))
    for p in r.get("partitions", []):
        size = _mib(p["size"]) if p["size"] is not None else ""
        out.append(f"  p{p['number']}  {p['role']:<12} {p['device'] or 'missing':<14} {size}")
    if "persistence" in r:
        pst = r["persistence"]
        out.append(f"delta:        {_mib(pst['delta_bytes'])} used; persistence {_mib(pst['size'])}, "
                   f"{_mib(pst['free'])} free" + (", encrypted (LUKS2)" if pst.get("encrypted") else ""))
        snaps = r["snapshots"]
        last = snaps["last"]
        out.append(f"snapshots:    {snaps['count']} ({_mib(snaps['bytes'])})" +
                   (f", last: {last['name']} {last['created']}" if last else ""))
        pending = r["pending"]
        if r["switch_in_progress"]:
            out.append("pending:      a restore or reset was interrupted during boot: it completes at the next boot")
        elif pending:
            out.append(f"pending:      {pending.get('text') or pending.get('error')} ('liveng cancel' withdraws it)")
        else:
            out.append("pending:      nothing")
    if "kernel_slots" in r:
        ks = r["kernel_slots"]
        out.append(f"boot order:   {' '.join(ks['order'])}   tries {ks['tries']}   last good {ks['good'] or 'none'}")
        for name, slot in ks["slots"].items():
            what = (f"kernel {slot['kernel']}, written {slot['written']}, system {slot.get('system')}"
                    if slot["kernel"] else "empty")
            out.append(f"slot {name.upper()}:       {what}")
    if "systems" in r:
        out.extend(f"{line}" for line in updatestatus.status_lines(r["systems"]))
    out.extend(f"warning:      {w}" for w in r.get("warnings", []))
    out.extend(f"error:        {e}" for e in r.get("errors", []))
    return out


