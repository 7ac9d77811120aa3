"""GRUB environment blocks (layout.GRUBENV_PATH on p1): the boot state shared by GRUB, the device
tool and the host builder. Standard library only.

The format is GRUB's: exactly 1024 bytes, a header line, ``name=value`` lines, '#' padding. GRUB's
save_env rewrites the file's own blocks in place, so the file must keep its size.

The boot state is kept twice (layout.GRUBENV_PATH, the primary, and layout.GRUBENV_BACKUP_PATH):
``choose`` says which copy counts, ``copies`` makes the bytes of both.
"""

from __future__ import annotations

from dataclasses import dataclass

HEADER = "# GRUB Environment Block\n"
SIZE = 1024


class GrubEnvError(ValueError):
    pass


def parse(data: bytes) -> dict[str, str]:
    """The variables of an environment block; GrubEnvError for anything that is not one.

    GRUB (grub_envblk_iterate) skips '#' lines and stops at the first part without '=', which is
    how it reads NUL padding too; a block cut there is read the same way here.
    """
    if not data.startswith(HEADER.encode()):
        raise GrubEnvError("not a GRUB environment block (bad header)")
    body = data[len(HEADER):].split(b"\0", 1)[0]
    try:
        text = body.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise GrubEnvError(f"not text (byte {exc.start + len(HEADER)} is not UTF-8)") from None
    env: dict[str, str] = {}
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line or line.startswith("#"):
            continue
        if i == len(lines) - 1:
            break  # no newline: GRUB drops such a cut-off tail, so it is not set here either
        name, sep, value = line.partition("=")
        if not sep or not name:
            raise GrubEnvError(f"malformed line {line!r}")
        env[name] = value.replace("\\n", "\n").replace("\\\\", "\\")
    return env


def serialize(env: dict[str, str]) -> bytes:
    body = HEADER
    for name, value in env.items():
        if not name or "=" in name or "\n" in name:
            raise GrubEnvError(f"bad variable name {name!r}")
        body += f"{name}={value.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}\n"
    raw = body.encode()
    if len(raw) > SIZE:
        raise GrubEnvError(f"environment is {len(raw)} bytes, more than the {SIZE} of a GRUB block")
    return raw + b"#" * (SIZE - len(raw))


def check(data: bytes | None) -> dict[str, str]:
    """``parse``, and the block must be whole: GRUB's save_env rewrites only a full-size block."""
    if data is None:
        raise GrubEnvError("missing")
    if len(data) != SIZE:
        raise GrubEnvError(f"{len(data)} bytes instead of {SIZE}")
    return parse(data)


@dataclass(frozen=True)
class Choice:
    env: dict[str, str]
    source: str  # "primary", "backup" or "defaults"
    damaged: dict[str, str]  # copy ("primary"/"backup") -> what is wrong with it


def choose(primary: bytes | str | None, backup: bytes | str | None) -> Choice:
    """Which copy counts (None: the file is missing; a str: why it could not be read): the primary
    when valid, else the backup, else none (empty env: the caller's defaults). Writers write the
    primary first, so a valid primary is never older than the backup."""
    damaged: dict[str, str] = {}
    found: list[tuple[str, dict[str, str]]] = []
    for name, data in (("primary", primary), ("backup", backup)):
        if isinstance(data, str):
            damaged[name] = data
            continue
        try:
            found.append((name, check(data)))
        except GrubEnvError as exc:
            damaged[name] = str(exc)
    if not found:
        return Choice({}, "defaults", damaged)
    return Choice(found[0][1], found[0][0], damaged)


def copies(env: dict[str, str]) -> tuple[bytes, bytes]:
    """The bytes of the primary and of the backup (the same block: the backup is a full copy)."""
    raw = serialize(env)
    return raw, raw
