"""Which Debian mirror to use when the recipe leaves it empty: the one the host's apt already uses."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from liveng.host.errors import RecipeError

APT_DIR = Path("/etc/apt")
_CODENAMES = ("buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid", "stable", "testing", "unstable")


@dataclass(frozen=True)
class Mirrors:
    archive: str
    security: str | None


def _entries(apt_dir: Path) -> list[tuple[str, list[str]]]:
    """(uri, suites) of every "deb" source the host has, in apt's order."""
    found: list[tuple[str, list[str]]] = []
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
                if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                    for uri in fields.get("uris", "").split():
                        found.append((uri, fields.get("suites", "").split()))
        elif f.suffix == ".list" or f.name == "sources.list":
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb":
                    found.append((words[1], [words[2]]))
    return found


def host_mirrors(apt_dir: Path = APT_DIR) -> Mirrors:
    archive = security = None
    for uri, suites in _entries(apt_dir):
        for suite in suites:
            base, _, pocket = suite.partition("-")
            if base not in _CODENAMES:
                continue
            if pocket == "security" and security is None:
                security = uri.rstrip("/")
            elif pocket == "" and archive is None:
                archive = uri.rstrip("/")
    if archive is None:
        raise RecipeError(
            "the recipe sets no mirror and the host's apt sources name no Debian mirror: "
            "set mirror = \"http://<your Debian mirror>/debian\" in the recipe")
    return Mirrors(archive=archive, security=security)


def resolve_mirrors(mirror: str, security_mirror: str, apt_dir: Path = APT_DIR) -> Mirrors:
    """The recipe's mirrors, empty values taken from the host; security_mirror "none" means none."""
    host: Mirrors | None = None
    if not mirror or not security_mirror:
        try:
            host = host_mirrors(apt_dir)
        except RecipeError:
            if not mirror:
                raise
    archive = mirror or (host.archive if host else "")
    if security_mirror == "none":
        security = None
    elif security_mirror:
        security = security_mirror
    else:
        security = host.security if host else None
    return Mirrors(archive, security)
