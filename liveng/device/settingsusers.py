"""The system settings are applied to, and the users part of the settings (liveng-settings.service).

``System`` is the running system (root /) or a directory in a test; ``write`` replaces one file whole.
The users part: accounts made with useradd, the sudo group and liveng's NOPASSWD drop-in, supplementary
groups (those the system lacks are skipped and said so: a seed written for Raspberry Pi OS names gpio,
i2c and spi, which Debian has not), password hashes on chpasswd's stdin, SSH keys written without
following the user's links (userfiles).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from liveng import configfiles
from liveng.device import bootstate, runner, userfiles
from liveng.settings import SettingsError, User

SUDO_GROUP = "sudo"
FIRST_UID = 1000  # below: Debian's system accounts, which the settings may not take over

Runner = Callable[[list[str], str | None], str]


def _run(argv: list[str], input_text: str | None = None) -> str:
    return runner.run(argv, input_text)


@dataclass
class System:
    """Where settings are applied: the running system (root /, live) or a directory in a test."""

    root: Path = Path("/")
    run: Runner = _run
    live: bool = True  # set the host name now, start and stop services
    kept: Path | None = None  # liveng's directory on p7, outside the delta (settingsfiles)
    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was not applied, and why (no error)

    def path(self, rel: str) -> Path:
        return self.root / rel

    def exists(self, *rels: str) -> bool:
        return any(self.path(r).exists() for r in rels)


def write(system: System, rel: str, text: str, mode: int = 0o644, owner: tuple[int, int] | None = None) -> bool:
    """Replace one file whole; False when it already had this content (nothing to do)."""
    path = system.path(rel)
    data = text.encode()
    if (path.is_file() and not path.is_symlink() and path.read_bytes() == data and owner is None
            and path.stat().st_mode & 0o7777 == mode):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    bootstate.write_atomic(path, data, mode=mode, owner=owner)
    system.changes.append(f"/{rel}")
    return True


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str


def accounts(system: System) -> dict[str, Account]:
    found = {}
    passwd = system.path("etc/passwd")
    for line in passwd.read_text().splitlines() if passwd.exists() else []:
        f = line.split(":")
        if len(f) >= 6 and f[2].isdigit() and f[3].isdigit():
            found[f[0]] = Account(f[0], int(f[2]), int(f[3]), f[5])
    return found


def groups(system: System) -> set[str]:
    group = system.path("etc/group")
    return {line.split(":")[0] for line in group.read_text().splitlines()} if group.exists() else set()


def members(system: System, group: str) -> set[str]:
    path = system.path("etc/group")
    for line in path.read_text().splitlines() if path.exists() else []:
        f = line.split(":")
        if f[0] == group and len(f) >= 4:
            return {m for m in f[3].split(",") if m}
    return set()


def check(users: tuple[User, ...], system: System, fail: Callable[[str, str], SettingsError]) -> None:
    known = accounts(system)
    present = groups(system)
    for i, user in enumerate(users):
        account = known.get(user.name)
        if account is not None and account.uid != 0 and account.uid < FIRST_UID:
            raise fail(f"users[{i}].name", f"{user.name!r} is a system account: choose another name")
        if account is None and user.name in present:
            raise fail(f"users[{i}].name", f"{user.name!r} is the name of a group on this system: choose another "
                       "name")
        if user.sudo and SUDO_GROUP not in present:
            raise fail(f"users[{i}].sudo", "this image has no sudo: build it with sudo in the recipe's packages")
        if user.sudo_nopasswd and not system.exists("usr/bin/sudo"):
            raise fail(f"users[{i}].sudo_nopasswd", "this image has no sudo: build it with sudo in the recipe's "
                       "packages")
        if account is not None and user.ssh_keys:
            problem = userfiles.unsafe(system.root, account.home, account.uid)
            if problem:
                raise fail(f"users[{i}].ssh_keys", problem)


def apply(user: User, system: System) -> None:
    account = accounts(system).get(user.name)
    present = groups(system)
    wanted = ([SUDO_GROUP] if user.sudo and user.name != "root" else []) + [g for g in user.groups if g in present]
    missing = [g for g in user.groups if g not in present]
    if missing:
        system.notes.append(f"user {user.name}: not in {', '.join(missing)}: this system has no such group")
    if account is None:
        argv = ["useradd", "--create-home", "--shell", "/bin/bash", "--user-group"]
        if wanted:
            argv += ["--groups", ",".join(wanted)]
        system.run([*argv, user.name], None)
        system.changes.append(f"user {user.name} added")
    else:
        new = [g for g in wanted if user.name not in members(system, g)]
        if new:
            system.run(["usermod", "--append", "--groups", ",".join(new), user.name], None)
            system.changes.append(f"user {user.name} in {', '.join(new)}")
    _nopasswd(user, system)
    if user.password_hash is not None:
        # On stdin, not the command line (which any process can read).
        system.run(["chpasswd", "--encrypted"], f"{user.name}:{user.password_hash}\n")
        system.changes.append(f"password of {user.name}")
    if user.ssh_keys:
        _authorized_keys(user, system)


def _nopasswd(user: User, system: System) -> None:
    # Like sudo itself, given and not taken away (the drop-in is removed on the device, by its name).
    if user.sudo_nopasswd:
        write(system, configfiles.nopasswd_path(user.name), configfiles.nopasswd_text(user.name), 0o440)


def _authorized_keys(user: User, system: System) -> None:
    account = accounts(system).get(user.name)
    if account is None:
        raise SettingsError(f"user {user.name} was not created (useradd)")
    owner = (account.uid, account.gid)
    # The user owns ~ and ~/.ssh: nothing in there is followed (userfiles).
    with userfiles.user_dir(system.root, account.home, ".ssh", owner) as ssh_dir:
        keys = f"{account.home.rstrip('/')}/.ssh/authorized_keys"
        lines = userfiles.read_text(ssh_dir, "authorized_keys", keys).splitlines()
        missing = [k for k in user.ssh_keys if k not in lines]
        if missing:
            userfiles.write_file(ssh_dir, "authorized_keys", ("\n".join(lines + missing) + "\n").encode(), 0o600,
                                 owner)
            system.changes.append(keys)
