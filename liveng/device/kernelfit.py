"""Which kernels can run on a delta: a restore or reset must not leave GRUB booting a kernel whose
modules the new delta does not have (an updated kernel's modules live in the delta)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from liveng import layout
from liveng.device import bootenv, bootstate, kernel, slots, system


def factory_kernel() -> str | None:
    """The kernel on p2, whose modules are in the squashfs."""
    try:
        info = json.loads((Path(layout.LIVE_MEDIUM_MOUNT) / layout.IMAGE_INFO_PATH).read_text())
    except (OSError, ValueError):
        # The RAM modes copy only the squashfs into RAM (no image.json): the kernel whose modules it has.
        found = {m.name for lower in system.status().lower for d in ("usr/lib/modules", "lib/modules")
                 if (Path(lower) / d).is_dir() for m in (Path(lower) / d).iterdir()}
        return found.pop() if len(found) == 1 else None
    value = info.get("kernel")
    return value if isinstance(value, str) else None


def has_modules(delta: Path, version: str) -> bool:
    return any((delta / d / version).is_dir() for d in ("usr/lib/modules", "lib/modules"))


def fitting_order(order: tuple[str, ...], slot_kernel: Callable[[str], str | None],
                  fits: Callable[[str], bool]) -> tuple[str, ...]:
    """``order`` without the slots whose kernel would have no modules; the factory kernel always fits."""
    kept = []
    for entry in order:
        name = kernel.slot_of(entry)
        version = slot_kernel(name) if name else None
        if name is None or (version is not None and fits(version)):
            kept.append(entry)
    return kernel.normalized(kept)


def adjust_order(new_delta: Path) -> str:
    """Point the boot order at kernels that run on ``new_delta``; returns the previous order (grubenv text)."""
    factory = factory_kernel()
    with bootenv.locked():
        state = bootstate.read_state()
        order = fitting_order(state.order, lambda name: slots.read_slot(name).kernel,
                              lambda v: v == factory or has_modules(new_delta, v))
        if order != state.order:
            bootstate.update_state(order=order, tries=layout.TRIES)
    return layout.order_to_env(state.order)


def restore_order(previous: str) -> None:
    if previous:
        bootstate.update_state(order=layout.order_from_env(previous), tries=layout.TRIES)
