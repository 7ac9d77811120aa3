"""liveng update status: the running system, the installed ones, their kernel slots and deltas."""

from __future__ import annotations

from pathlib import Path

from liveng import bundle, layout
from liveng.device import delta, system
from liveng.device.update import bound_systems, config, factory_info, system_metadata, version_of


def status_dict() -> dict[str, object]:
    factory = factory_info()
    running = system.booted_system()
    report: dict[str, object] = {"running": running, "channel": config().channel,
                                 "keyring": (Path("/") / bundle.UPDATE_KEYRING_PATH).is_file()}
    slot_systems = bound_systems()
    with delta.persistence_root(writable=False) as p7:
        report["version"] = version_of(p7, running, factory)
        systems: dict[str, dict[str, object]] = {layout.SYSTEM_FACTORY: {"version": str(factory.get("version") or "0"),
                                                                         "where": "p2"}}
        base = p7 / layout.SYSTEMS_DIR
        for d in sorted(base.iterdir()) if base.is_dir() else ():
            if d.name.startswith("."):
                continue
            meta = system_metadata(p7, d.name)
            iso = d / layout.SYSTEM_ISO_NAME
            systems[d.name] = {"version": meta.version if meta else None, "where": "p7",
                               "size": iso.stat().st_size if iso.exists() else None,
                               "built": meta.built if meta else None}
        for name, info in systems.items():
            info["slots"] = sorted(s for s, owner in slot_systems.items() if owner == name)
            parked = p7 / layout.DELTAS_DIR / name
            info["delta"] = "running" if name == running else ("parked" if parked.is_dir() else None)
        report["systems"] = systems
    return report


def status_lines(report: dict[str, object]) -> list[str]:
    lines = [f"system:       {report['running']}, version {report['version']}",
             f"updates:      channel {report['channel'] or '(none)'}, "
             f"{'signed bundles accepted' if report['keyring'] else 'no keyring: no bundles accepted'}"]
    systems = report["systems"]
    assert isinstance(systems, dict)
    for name, info in systems.items():
        slots_text = ",".join(s.upper() for s in info["slots"]) or "none"
        lines.append(f"  {name}: version {info['version']} on {info['where']}, kernel slots {slots_text}, "
                     f"delta {info['delta'] or 'none'}")
    return lines
