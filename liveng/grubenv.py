"""GRUB environment blocks (boot/grub/grubenv on p1): the boot state shared by GRUB, the device
tool and the host builder. Standard library only.

The format is GRUB's: exactly 1024 bytes, a header line, ``name=value`` lines, '#' padding. GRUB's
save_env rewrites the file's own blocks in place, so the file must keep its size.
"""

from __future__ import annotations

HEADER = "# GRUB Environment Block\n"
SIZE = 1024


class GrubEnvError(ValueError):
    pass


def parse(data: bytes) -> dict[str, str]:
    text = data.decode("utf-8", errors="strict")
    if not text.startswith(HEADER):
        raise GrubEnvError("not a GRUB environment block (bad header)")
    env: dict[str, str] = {}
    for line in text[len(HEADER):].split("\n"):
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
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
