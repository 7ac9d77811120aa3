"""The `python3 -c` programs the boot tests and benchmarks run in the guest are strings, out of ruff's
and mypy's sight: each one that uses a liveng module by name must import it (a module moved from
layout.py to manifest.py once failed two boot tests in CI with a NameError in the guest)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import liveng

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(ROOT / "tests/boot").glob("*.py"), *(ROOT / "bench").rglob("*.py")])
MODULES = {p.stem for d in (Path(liveng.__file__).parent, Path(liveng.__file__).parent / "device")
           for p in d.glob("*.py") if p.stem != "__init__"}


def snippets(path: Path) -> list[tuple[int, str]]:
    """The source text of every outermost expression that holds a `python3 -c` program."""
    source = path.read_text()
    found: list[tuple[int, str]] = []
    seen: set[tuple[int, int]] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.Constant, ast.JoinedStr, ast.BinOp)):
            continue
        text = ast.get_source_segment(source, node) or ""
        if "python3 -c" in text and (node.lineno, node.col_offset) not in seen:
            seen.add((node.lineno, node.col_offset))
            found.append((node.lineno, text))
    return found


def missing_imports(text: str) -> set[str]:
    used = {m for m in re.findall(r"(?<![\w.])(\w+)\.\w", text) if m in MODULES}
    imported = set()
    for names in re.findall(r"\bimport ([\w, ]+)", text):
        imported |= {n.strip() for n in names.split(",")}
    return used - imported


def test_every_guest_program_imports_the_liveng_modules_it_names() -> None:
    problems = [f"{path.relative_to(ROOT)}:{line}: {sorted(missing)}"
                for path in SOURCES for line, text in snippets(path)
                if (missing := missing_imports(text))]
    assert problems == []


def test_the_check_finds_a_module_named_but_not_imported() -> None:
    assert missing_imports("python3 -c 'from liveng import layout; print(manifest.sha256_file(p))'") == {"manifest"}
    assert missing_imports("python3 -c 'from liveng import layout, manifest; manifest.x(layout.Y)'") == set()
    assert missing_imports("python3 -c 'import os; os.sync()'") == set()
