"""The layers: shared contract <- device <- host. The device tool runs inside the image with the
standard library only, so its modules and the shared ones import nothing else, and nothing below
imports from a layer above."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from liveng.host.customize import SHARED_MODULES

PKG = Path(__file__).resolve().parents[2] / "liveng"
SHARED = {name.removesuffix(".py") for name in SHARED_MODULES if name != "__init__.py"}


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out += [f"{node.module}.{a.name}" for a in node.names] if node.module == "liveng" else [node.module]
    return out


def allowed(name: str, device: bool) -> bool:
    top = name.split(".")[0]
    if top != "liveng":
        return top in sys.stdlib_module_names or top == "__future__"
    parts = name.split(".")
    if len(parts) == 1:
        return True
    if parts[1] in SHARED or parts[1] == "seeds":
        return True
    return device and parts[1] == "device"


DEVICE = sorted((PKG / "device").glob("*.py"))
# liveng/seeds (Raspberry Pi Imager and cloud-init set-up files): shared too, standard library only.
SEEDS = sorted((PKG / "seeds").glob("*.py"))
SHARED_FILES = sorted(PKG / f"{name}.py" for name in SHARED) + SEEDS


@pytest.mark.parametrize("path", DEVICE + SHARED_FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_stay_in_their_layer(path: Path) -> None:
    device = path.parent.name == "device"
    bad = [name for name in imports(path) if not allowed(name, device)]
    assert not bad, f"{path.relative_to(PKG)} imports {bad}: the device tool has the standard library and " \
                    "the shared modules only"


def test_every_module_is_covered() -> None:
    top = {p.stem for p in PKG.glob("*.py")} - {"__init__"}
    # Every top-level module is shared (installed in the image) or host-only by its own choice:
    # a new top-level module must say which by joining SHARED_MODULES or this list.
    host_only: set[str] = set()
    assert top - SHARED - host_only == set(), "a top-level liveng module is neither shared nor host-only"
    assert len(DEVICE) > 10
