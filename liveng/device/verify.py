"""liveng verify: check the system partition, the kernel slots and the updated systems on p7 against
their SHA-256 manifests (an updated system: its ISO against its signed metadata)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from liveng import bundle, layout, manifest
from liveng.device import bootstate, delta, slots, system
from liveng.device.runner import DeviceError


@dataclass
class Report:
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_tree(root: Path, label: str, report: Report) -> None:
    """Check every file the manifest under ``root`` names, and that no file is missing from it."""
    try:
        lines = (root / layout.MANIFEST_PATH).read_text().splitlines()
    except OSError as exc:
        report.problems.append(f"{label}: cannot read {layout.MANIFEST_PATH}: {exc}")
        return
    listed = set()
    for line in lines:
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            report.problems.append(f"{label}: {layout.MANIFEST_PATH}: malformed line {line!r}")
            continue
        listed.add(name)
        path = root / name
        try:
            actual = manifest.sha256_file(path)
        except OSError as exc:
            report.problems.append(f"{label}: {name}: cannot read ({exc.strerror})")
            continue
        report.checked += 1
        if actual != digest:
            report.problems.append(f"{label}: {name}: content differs from the build (sha256 {actual[:16]}…, "
                                   f"expected {digest[:16]}…)")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel != layout.MANIFEST_PATH and rel not in listed:
            report.problems.append(f"{label}: {rel}: not in the manifest")


def verify_system(report: Report) -> None:
    """p2: live-boot has it mounted at /run/live/medium; otherwise mount it read-only."""
    own = bootstate.device_path(layout.Role.SYSTEM).resolve()
    for m in system.mounts():
        if m.mountpoint == layout.LIVE_MEDIUM_MOUNT and Path(m.device).resolve() == own:
            verify_tree(Path(m.mountpoint), "system partition", report)
            return
    with bootstate.mounted(layout.Role.SYSTEM, "iso9660") as root:
        verify_tree(root, "system partition", report)


def verify_slots(report: Report) -> None:
    for name, role in layout.SLOTS.items():
        if slots.read_slot(name).kernel is None:
            continue  # an empty slot has nothing to verify
        with bootstate.mounted(role, "iso9660") as root:
            verify_tree(root, f"kernel slot {name.upper()}", report)


def intact(name: str) -> bool:
    """Whether a slot holds a kernel whose files all match the slot's manifest."""
    if slots.read_slot(name).kernel is None:
        return False
    report = Report()
    try:
        with bootstate.mounted(layout.SLOTS[name], "iso9660") as root:
            verify_tree(root, f"slot {name.upper()}", report)
    except DeviceError:
        return False
    return report.ok


def verify_updated_systems(report: Report) -> None:
    """Each system on p7: its ISO against the hash in its metadata (and that metadata's signature, when
    the image has a keyring); each slot's system must be there."""
    try:
        with delta.persistence_root(writable=False) as p7:
            _updated_systems(p7, report)
    except DeviceError as exc:
        report.problems.append(f"updated systems: the persistence partition cannot be read: {exc}")


def _updated_systems(p7: Path, report: Report) -> None:
    from liveng.device import fetch  # only here: every boot's mark-good imports this module

    keyring = Path("/") / bundle.UPDATE_KEYRING_PATH
    base = p7 / layout.SYSTEMS_DIR
    present = {d.name for d in base.iterdir() if not d.name.startswith(".")} if base.is_dir() else set()
    for name in sorted(present):
        d = base / name
        try:
            raw = (d / layout.SYSTEM_META_NAME).read_bytes()
            if keyring.is_file():
                fetch.verify_signature(raw, (d / layout.SYSTEM_SIG_NAME).read_bytes(), keyring)
            meta = bundle.parse_metadata(raw)
            actual = manifest.sha256_file(d / layout.SYSTEM_ISO_NAME)
        except (OSError, DeviceError, bundle.BundleError) as exc:
            report.problems.append(f"system {name}: {exc}")
            continue
        report.checked += 1
        if actual != meta.system_sha256:
            report.problems.append(f"system {name}: {layout.SYSTEM_ISO_NAME} differs from its signed hash "
                                   f"(sha256 {actual[:16]}…, expected {meta.system_sha256[:16]}…)")
    for slot in layout.SLOTS:
        info = slots.read_slot(slot)
        if info.kernel and info.system != layout.SYSTEM_FACTORY and info.system not in present:
            report.problems.append(f"kernel slot {slot.upper()} boots the system {info.system}, which is not on "
                                   "the persistence partition: that slot cannot boot")
