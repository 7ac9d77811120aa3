"""What the seed translators share: the error, the result, and checking a result against liveng's schema."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from liveng import settings

# A seed file on a FAT partition is a few KiB; write_files may carry small files. Callers read with this
# cap (boundedread.read_regular) and the readers refuse longer texts, so /dev/zero is no hang here either.
MAX_BYTES = 1024 * 1024

Path = tuple[str | int, ...]

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
# An OpenSSH key line after authorized_keys options ('no-pty,command="..." ssh-ed25519 AAAA...').
_OPTIONS_KEY = re.compile(r"\s(ssh-(ed25519|rsa|dss)|ecdsa-sha2-\S+|sk-\S+) [A-Za-z0-9+/=]+")


# What a secret's value becomes on p1 once applied (liveng.seeds.redact): the translators read it as "given
# before, and removed" (no password; the Wi-Fi network keeps the key the device kept), not as a value.
REMOVED = "(removed by liveng after it was applied)"


class SeedError(ValueError):
    """A seed cannot be translated: the message names the file, the line where known, and what to do."""

    def __init__(self, file: str, line: int | None, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}" if line is not None else f"{file}: {message}")
        self.file = file
        self.line = line


def dotted(path: Path) -> str:
    """``("users", 0, "name")`` as ``users[0].name``; keys that are not plain words are quoted."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if _PLAIN_KEY.match(part) else json.dumps(part, ensure_ascii=False)
            out += f".{text}" if out else text
    return out


def decode(data: bytes, file: str) -> str:
    """A seed file's bytes as text: UTF-8, a byte-order mark dropped; compressed user-data is refused."""
    if data[:2] == b"\x1f\x8b":
        raise SeedError(file, None, "gzip-compressed user-data is not supported by liveng's reader: write it "
                        "uncompressed, or use an image with real cloud-init")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise SeedError(file, None, f"not UTF-8 text (byte {exc.start}): save it as UTF-8") from None


@dataclass
class Translation:
    """A seed in liveng's terms.

    ``data`` has the shape of liveng-settings.toml (pass it to ``settings.parse``); ``ignored`` lists what
    the seed asks for that liveng does not apply, as ``FILE: key`` (sorted), and ``notes`` say why where
    it is not plain (a partly applied value, a default chosen). ``secrets`` are the places in the seed
    files that hold a password, a password hash or a Wi-Fi key: the caller removes them once applied.
    ``secret_paths`` has the same places as (file, path in the file), for the redaction. ``instance_id``
    is NoCloud's (meta-data, else ``ds=nocloud;i=`` on the kernel command line);
    ``digest`` covers every input text, for seeds that carry no instance id. ``sources`` names the file each
    key of ``data`` came from (``users[N]`` for each user).
    """

    data: dict[str, Any] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    secret_paths: list[tuple[str, Path]] = field(default_factory=list)
    instance_id: str | None = None
    digest: str = ""


Where = tuple[str, int | None, str]  # a seed file, the line (None: not known), the seed's key


class Builder:
    """Collects a translation; ``where`` maps liveng keys to seed locations, so that a value liveng refuses
    is reported at the line of the seed that gave it."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.ignored: set[str] = set()
        self.notes: list[str] = []
        self.secrets: set[str] = set()
        self.sources: dict[str, str] = {}
        self.where: dict[str, Where] = {}
        self.secret_paths: list[tuple[str, Path]] = []
        self.instance_id: str | None = None

    def ignore(self, file: str, key: str, note: str | None = None) -> None:
        self.ignored.add(f"{file}: {key}")
        if note:
            self.note(f"{file}: {key}: {note}")

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def secret(self, file: str, key: str, path: Path | None = None) -> None:
        self.secrets.add(f"{file}: {key}")
        if path is not None and (file, path) not in self.secret_paths:
            self.secret_paths.append((file, path))

    def finish(self, texts: list[tuple[str, str | None]]) -> Translation:
        check(self.data, self.where)
        digest = hashlib.sha256()
        for name, text in texts:
            if text is not None:
                digest.update(f"{len(name)}:{name}{len(text)}:".encode() + text.encode("utf-8", "surrogatepass"))
        return Translation(data=self.data, ignored=sorted(self.ignored), notes=list(self.notes),
                           secrets=sorted(self.secrets), sources=dict(self.sources),
                           secret_paths=list(self.secret_paths),
                           instance_id=self.instance_id, digest=digest.hexdigest())


def check(data: dict[str, Any], where: dict[str, Where]) -> None:
    """Validate ``data`` against liveng's schema, reporting a refused value at the seed line that gave it."""
    marker = "\x00"
    try:
        settings.parse(data, marker)
    except settings.SettingsError as exc:
        key, _, message = str(exc).removeprefix(f"{marker}: ").partition(": ")
        # The most precise location known: "users[0].ssh_keys[1]", else "users[0].ssh_keys", "users[0]"...
        probe = key
        while probe not in where:
            shorter = re.sub(r"(\[\d+\]|\.[^.\[]+)$", "", probe)
            if shorter == probe:
                break
            probe = shorter
        if probe not in where:
            raise SeedError("seed", None, f"{key}: {message}") from None
        file, line, seed_key = where[probe]
        raise SeedError(file, line, f"{seed_key}: {message} (liveng's {key})") from None


def kind(value: Any) -> str:
    return "empty (null)" if value is None else settings.kind(value)


class Seed:
    """One seed file being translated: where its keys are (for messages and ``Builder.where``), and the
    type checks that name the file, the line and the seed's own key."""

    def __init__(self, builder: Builder, file: str, lines: dict[Path, int] | None = None) -> None:
        self.b = builder
        self.file = file
        self.lines = lines or {}

    def at(self, path: Path) -> Where:
        return (self.file, self.lines.get(path), dotted(path))

    def ignore(self, path: Path, note: str | None = None) -> None:
        self.b.ignore(self.file, dotted(path), note)

    def secret(self, path: Path) -> None:
        self.b.secret(self.file, dotted(path), path)

    def fail(self, path: Path, message: str) -> SeedError:
        return SeedError(self.file, self.lines.get(path), f"{dotted(path)}: {message}" if path else message)

    def text(self, path: Path, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"must be text, not {kind(value)}")
        return value

    def flag(self, path: Path, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"must be true or false, not {kind(value)}")
        return value

    def table(self, path: Path, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping (key: value lines), not {kind(value)}")
        return value

    def items(self, path: Path, value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(path, f"must be a list ('- ' lines or [ ]), not {kind(value)}")
        return value


def add_keys(seed: Seed, path: Path, value: Any, table: dict[str, Any], where: dict[str, Path]) -> None:
    """SSH keys (a list, or one key as text) into a user's ``ssh_keys``; ``where`` records each one's place."""
    keys = table.setdefault("ssh_keys", [])
    for i, key in enumerate([value] if isinstance(value, str) else seed.items(path, value)):
        line = seed.text((*path, i), key).strip()
        if not settings.SSH_KEY_RE.fullmatch(line) and _OPTIONS_KEY.search(line):
            seed.ignore((*path, i), "a key with authorized_keys options: liveng writes keys without options")
            continue
        where[f"ssh_keys[{len(keys)}]"] = (*path, i)
        keys.append(line)
    if not keys:
        del table["ssh_keys"]
