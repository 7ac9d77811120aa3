"""cloud-config's users in liveng's terms: ``user:``, ``users:``, ``chpasswd`` and the top-level
``ssh_authorized_keys`` (the rules are in cloudinit's docstring)."""

from __future__ import annotations

import re
from typing import Any

from liveng import settings
from liveng.seeds.common import REMOVED, Builder, Path, Seed, add_keys

_FULL_RULE = re.compile(r"ALL\s*=\s*\(\s*ALL\s*(:\s*ALL\s*)?\)\s*(NOPASSWD:\s*)?ALL")
NO_DEFAULT_USER = "the distribution's default user: liveng images have none (name the user)"


def translate(b: Builder, seed: Seed, cfg: dict[str, Any]) -> None:
    users: list[tuple[dict[str, Any], dict[str, Path]]] = []
    default: dict[str, Any] | None = None
    if cfg.get("user") is not None:
        entry = cfg["user"]
        entry = {"name": entry} if isinstance(entry, str) else seed.table(("user",), entry)
        if "name" in entry:
            users.append(_user(seed, ("user",), entry, default=True))
            default = users[-1][0]
        else:
            seed.ignore(("user",), NO_DEFAULT_USER)
    listed = cfg.get("users")
    if isinstance(listed, str | dict):
        raise seed.fail(("users",), "must be a list of users (cloud-init deprecated the text and mapping forms in "
                        "22.2; liveng reads the list)")
    for i, entry in enumerate(seed.items(("users",), listed) if listed is not None else []):
        path = ("users", i)
        names = [n.strip() for n in entry.split(",") if n.strip()] if isinstance(entry, str) else None
        if names is not None and names != ["default"]:
            if "default" in names or len(names) != 1:
                raise seed.fail(path, "name one user per entry")
            entry = {"name": names[0]}
        if entry == "default":
            if default is None:
                seed.ignore(path, NO_DEFAULT_USER)
            continue
        entry = seed.table(path, entry)
        if "name" not in entry:
            seed.ignore(path, NO_DEFAULT_USER)
            continue
        users.append(_user(seed, path, entry, default=False))
    by_name: dict[str, int] = {}
    for i, (table, where) in enumerate(users):
        if table["name"] in by_name:
            raise seed.fail(where["name"], f"the user {table['name']!r} is given twice")
        by_name[table["name"]] = i
    if "chpasswd" in cfg:
        _chpasswd(seed, seed.table(("chpasswd",), cfg["chpasswd"] or {}), users, by_name)
    if cfg.get("ssh_authorized_keys") is not None:
        if default is None:
            seed.ignore(("ssh_authorized_keys",), NO_DEFAULT_USER)
        else:
            add_keys(seed, ("ssh_authorized_keys",), cfg["ssh_authorized_keys"], users[0][0], users[0][1])
    if users:
        b.data["users"] = [table for table, _ in users]
        for i, (_, where) in enumerate(users):
            b.sources[f"users[{i}]"] = seed.file
            for key, origin in where.items():
                b.where[f"users[{i}]{'.' + key if key else ''}"] = seed.at(origin)
        b.where["users"] = seed.at(("users",) if listed is not None else ("user",))


def _user(seed: Seed, path: Path, entry: dict[str, Any], default: bool) -> tuple[dict[str, Any], dict[str, Path]]:
    """One user's liveng table, and where in the seed each of its keys came from."""
    name = entry["name"]
    name = str(name) if isinstance(name, int) and not isinstance(name, bool) else seed.text((*path, "name"), name)
    table: dict[str, Any] = {"name": name}
    # A user named by a bare "- bob" entry has its name on the entry's own line.
    where: dict[str, Path] = {"": path, "name": (*path, "name") if (*path, "name") in seed.lines else path}
    groups = _groups(seed, (*path, "groups"), entry.get("groups"))
    sudo = "sudo" in groups or (default and "groups" not in entry)
    others = [g for g in groups if g != "sudo"]
    if others:
        table["groups"], where["groups"] = others, (*path, "groups")
    rules = entry.get("sudo")
    nopasswd = False
    if rules is not None and rules is not False:
        for rule in [rules] if isinstance(rules, str) else seed.items((*path, "sudo"), rules):
            rule = seed.text((*path, "sudo"), rule).strip()
            if not _FULL_RULE.fullmatch(rule):
                seed.ignore((*path, "sudo"), f"the rule {rule!r} is not applied: liveng grants sudo only as the "
                            "sudo group (every command, with the user's password)")
                continue
            sudo = True
            nopasswd = nopasswd or "NOPASSWD" in rule
    if sudo:
        table["sudo"] = True
    if nopasswd:
        table["sudo_nopasswd"], where["sudo_nopasswd"] = True, (*path, "sudo")
    locked = seed.flag((*path, "lock_passwd"), entry.get("lock_passwd", True))
    for key in ("passwd", "hashed_passwd", "plain_text_passwd"):
        if entry.get(key) is None:
            continue
        seed.secret((*path, key))
        if entry[key] == REMOVED:
            continue  # applied before: the account has it
        if key == "plain_text_passwd":
            seed.ignore((*path, key), "a plain-text password: liveng takes crypt(3) hashes only (mkpasswd -m "
                        "yescrypt)")
        elif locked:
            seed.ignore((*path, key), "lock_passwd is true (cloud-init's default), which leaves the password "
                        "unusable; write lock_passwd: false to use it")
        elif key == "passwd" and entry.get("hashed_passwd") is not None:
            seed.ignore((*path, key), "hashed_passwd is used instead")
        else:
            table["password_hash"] = seed.text((*path, key), entry[key])
            where["password_hash"] = (*path, key)
    if entry.get("ssh_authorized_keys") is not None:
        add_keys(seed, (*path, "ssh_authorized_keys"), entry["ssh_authorized_keys"], table, where)
    expected = {"shell": "/bin/bash", "homedir": f"/home/{name}", "primary_group": name}
    for key, value in entry.items():
        if key in expected and value != expected[key]:
            seed.ignore((*path, key), f"liveng gives a user {expected[key]}")
        elif key not in expected and key not in ("name", "groups", "sudo", "lock_passwd", "passwd", "hashed_passwd",
                                                 "plain_text_passwd", "ssh_authorized_keys"):
            seed.ignore((*path, key))
    return table, where


def _groups(seed: Seed, path: Path, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [g.strip() for g in value.split(",") if g.strip()]
    return [seed.text((*path, i), g).strip() for i, g in enumerate(seed.items(path, value))]


def _chpasswd(seed: Seed, cfg: dict[str, Any], users: list[tuple[dict[str, Any], dict[str, Path]]],
              by_name: dict[str, int]) -> None:
    entries: list[tuple[Path, str, str, str]] = []  # where, user, password, type
    for i, entry in enumerate(seed.items(("chpasswd", "users"), cfg.get("users") or [])):
        path: Path = ("chpasswd", "users", i)
        entry = seed.table(path, entry)
        name = seed.text((*path, "name"), entry.get("name"))
        kind = seed.text((*path, "type"), entry.get("type", "text"))
        entries.append(((*path, "password"), name, str(entry.get("password", "")), kind))
    listed = cfg.get("list")
    lines = listed.splitlines() if isinstance(listed, str) else seed.items(("chpasswd", "list"), listed or [])
    for i, line in enumerate(lines):
        path = ("chpasswd", "list", i) if not isinstance(listed, str) else ("chpasswd", "list")
        name, _, password = seed.text(path, line).strip().partition(":")
        kind = "RANDOM" if password in ("R", "RANDOM") else "hash" if settings.HASH_RE.match(password) else "text"
        entries.append((path, name, password, kind))
    applied = False
    for path, name, password, kind in entries:
        seed.secret(path)
        if REMOVED in password:
            continue  # applied before
        if kind != "hash":
            why = "random passwords are" if kind.upper() == "RANDOM" else "a plain-text password is"
            seed.ignore(path, f"{why} not applied: liveng takes crypt(3) hashes only (mkpasswd -m yescrypt)")
        elif name not in by_name and name != "root":
            seed.ignore(path, f"{name!r} is not a user this seed creates")
        else:
            if name not in by_name:
                by_name[name] = len(users)
                users.append(({"name": name}, {"": path, "name": path}))
            table, where = users[by_name[name]]
            table["password_hash"], where["password_hash"] = password, path
            applied = True
    if applied and cfg.get("expire", True) is not False:
        seed.ignore(("chpasswd", "expire"), "liveng does not make users change their password at the first login")
    for key in cfg:
        if key not in ("users", "list", "expire"):
            seed.ignore(("chpasswd", key))
