"""Seed files without their secrets: what stays on p1 once the settings are applied.

A secret (a password hash, a Wi-Fi passphrase or key) is not deleted but replaced by ``common.REMOVED``, so
that the file still says what it said: a network that had a key is not read as an open one afterwards,
and the translators know the value was applied before (liveng-settings.toml's own secrets are commented
out instead: liveng's schema reads a missing passphrase that way already). The owner's file keeps its
layout and comments: the value is replaced on its own line. Where that does not give exactly the
expected document (a multi-line value, a flow mapping the value cannot be told apart in), the file is
written anew from the document: JSON for YAML (JSON is YAML; a ``#cloud-config`` header stays first),
``settings.dump`` for TOML. Either way the result is read back and compared before it is used.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from typing import Any

from liveng import settings
from liveng.seeds import miniyaml
from liveng.seeds.common import REMOVED, Path, SeedError

_TOML_TABLE = re.compile(r"^\s*\[([A-Za-z0-9_-]+)\]\s*(#.*)?$")
_TOML_KEY = re.compile(r"^(\s*)([A-Za-z0-9_-]+)(\s*=\s*)(.*)$")


def _set(document: Any, path: Path) -> Any:
    """A copy of ``document`` with the value at ``path`` replaced by REMOVED (in a chpasswd list text: each
    password of its ``user:password`` lines)."""
    out = copy.deepcopy(document)
    node = out
    for part in path[:-1]:
        node = node[part]
    value = node[path[-1]]
    if isinstance(value, str) and "\n" in value.strip():
        node[path[-1]] = "".join(_line_without_password(line) for line in value.splitlines(keepends=True))
    elif isinstance(value, str) and path[-2:-1] == ("list",) and ":" in value:
        node[path[-1]] = _line_without_password(value)
    else:
        node[path[-1]] = REMOVED
    return out


def _line_without_password(line: str) -> str:
    """``user:HASH`` (chpasswd's list) as ``user:REMOVED``, the line end kept."""
    body = line.rstrip("\r\n")
    name, colon, _ = body.strip().partition(":")
    return f"{body[:len(body) - len(body.lstrip())]}{name}:{REMOVED}{line[len(body):]}" if colon else line


def yaml(text: str, file: str, paths: list[Path]) -> str:
    """``text`` (a YAML seed file) with the values at ``paths`` replaced by REMOVED."""
    document = miniyaml.parse(text, file)
    wanted = document.value
    for path in paths:
        wanted = _set(wanted, path)
    lines = text.split("\n")
    for path in paths:
        lines = _replace_on_line(lines, document, path)
    candidate = "\n".join(lines)
    if _reads_as(candidate, file, wanted):
        return candidate
    header = "#cloud-config\n" if text.lstrip("\ufeff").startswith("#cloud-config") else ""
    candidate = (f"{header}# liveng: written anew without its secrets, which were applied and removed.\n"
                 + json.dumps(wanted, ensure_ascii=False) + "\n")
    if not _reads_as(candidate, file, wanted):
        raise SeedError(file, None, "cannot be written without its secrets; nothing was removed from it")
    return candidate


def _reads_as(text: str, file: str, wanted: Any) -> bool:
    try:
        return bool(miniyaml.parse(text, file).value == wanted)
    except SeedError:
        return False


def _replace_on_line(lines: list[str], document: miniyaml.Document, path: Path) -> list[str]:
    """The value at ``path`` replaced on the line its key is on, when it is a one-line scalar there."""
    number = document.lines.get(path)
    value: Any = document.value
    for part in path:
        value = value[part]
    if number is None or not isinstance(value, str) or "\n" in value:
        return lines
    line = lines[number - 1]
    key = path[-1]
    start = 0
    if isinstance(key, str):
        m = re.search(r"(^|[\s{,-])" + re.escape(key) + r"\s*:\s", line)
        if m is None:
            return lines
        start = m.end()
    if path[-2:-1] == ("list",) and ":" in value:
        name = value.partition(":")[0]
        replacement = json.dumps(f"{name}:{REMOVED}")
    else:
        replacement = json.dumps(REMOVED)
    for written in (json.dumps(value, ensure_ascii=False), "'" + value.replace("'", "''") + "'", value):
        at = line.find(written, start)
        if at >= 0:
            return [*lines[:number - 1], line[:at] + replacement + line[at + len(written):], *lines[number:]]
    return lines


def toml(text: str, file: str, paths: list[Path]) -> str:
    """``text`` (rpi-preseed.toml: tables of keys) with the values at ``paths`` replaced by REMOVED."""
    document = tomllib.loads(text.removeprefix("\ufeff"))
    wanted = document
    for path in paths:
        wanted = _set(wanted, path)
    secret = {tuple(p) for p in paths}
    out, table = [], ""
    for line in text.removeprefix("\ufeff").split("\n"):
        header = _TOML_TABLE.match(line)
        if header:
            table = header.group(1)
        m = _TOML_KEY.match(line)
        if m and ((table, m.group(2)) in secret or (not table and (m.group(2),) in secret)):
            line = f"{m.group(1)}{m.group(2)}{m.group(3)}{json.dumps(REMOVED)}"
        out.append(line)
    candidate = "\n".join(out)
    try:
        if tomllib.loads(candidate) == wanted:
            return candidate
    except tomllib.TOMLDecodeError:
        pass
    candidate = "# liveng: written anew without its secrets, which were applied and removed.\n" + settings.dump(wanted)
    if tomllib.loads(candidate) != wanted:
        raise SeedError(file, None, "cannot be written without its secrets; nothing was removed from it")
    return candidate
