"""OpenPGP keys, signatures and their checks, all done by gpg and gpgv: liveng does no cryptography.

Each use runs gpg in a home directory of its own (mode 0700, deleted afterwards with the agent gpg
started there), so the user's keyrings are neither read nor changed, and a secret key imported to
sign is gone when the command ends.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from liveng import boundedread
from liveng.host import preflight
from liveng.host.errors import CommandError
from liveng.host.runner import run

# tool -> Debian package
TOOLS = {"gpg": "gpg", "gpgv": "gpgv", "gpgconf": "gpgconf"}
KEY_FILE_MAX = 1024 * 1024  # an exported key with its signatures is a few KiB
PASSPHRASE_MAX = 4096
# What gpg says when the secret key wants a passphrase it was not given, or not the right one.
_PASSPHRASE_ERRORS = ("No passphrase given", "Bad passphrase", "No pinentry")


class KeyFileError(ValueError):
    """A key file that cannot serve; the message says what it holds and what to do (no file name:
    the caller names the file and where it came from)."""


class SignatureError(ValueError):
    """gpgv did not accept a signature."""


@contextlib.contextmanager
def gnupg_home() -> Iterator[Path]:
    preflight.check_tools(TOOLS)
    home = Path(tempfile.mkdtemp(prefix="liveng-gpg-"))  # mkdtemp makes it 0700, as gpg wants
    try:
        yield home
    finally:
        # An imported secret key starts gpg-agent in the home; it would outlive the directory.
        run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], check=False)
        shutil.rmtree(home, ignore_errors=True)


def _gpg(home: Path, *args: str | Path) -> list[str | Path]:
    return ["gpg", "--homedir", home, "--batch", "--no-tty", "--no-auto-check-trustdb", *args]


@dataclass(frozen=True)
class Listing:
    """The primary keys a key file holds (fingerprints), as ``gpg --show-keys`` lists them."""

    public: tuple[str, ...]
    secret: tuple[str, ...]
    can_sign: tuple[str, ...]  # of either kind: the key or one of its subkeys may sign
    unusable: tuple[str, ...]  # expired or revoked


def show_keys(home: Path, key_file: Path) -> Listing:
    """What ``key_file`` holds, read without importing it; KeyFileError if it is no OpenPGP key file."""
    try:
        boundedread.read_regular(key_file, KEY_FILE_MAX)
    except boundedread.ReadError as exc:
        raise KeyFileError(f"cannot be read: {exc.reason}") from None
    try:
        text = run(_gpg(home, "--with-colons", "--show-keys", key_file), capture=True).stdout.decode()
    except CommandError as exc:
        last = (exc.stderr.strip().splitlines() or ["no output"])[-1].removeprefix("gpg: ")
        raise KeyFileError(f"is not an OpenPGP key file (gpg: {last})") from None
    found: dict[str, list[str]] = {"pub": [], "sec": [], "sign": [], "unusable": []}
    record: list[str] = []
    for line in text.splitlines():
        fields = line.split(":")
        if fields[0] in ("pub", "sec"):
            record = fields
        elif fields[0] == "fpr" and record:
            # Only the primary key's fpr line follows its pub/sec record directly; subkeys have their own.
            fpr = fields[9]
            found[record[0]].append(fpr)
            if len(record) > 11 and "S" in record[11]:  # capital: usable by the key as a whole
                found["sign"].append(fpr)
            if record[1] in ("e", "r"):
                found["unusable"].append(fpr)
            record = []
        elif fields[0] in ("sub", "ssb"):
            record = []
    return Listing(public=tuple(found["pub"]), secret=tuple(found["sec"]), can_sign=tuple(found["sign"]),
                   unusable=tuple(found["unusable"]))


def public_keyring(key_file: Path) -> tuple[bytes, tuple[str, ...]]:
    """The public keys of ``key_file`` (armored or binary) as a binary keyring gpgv reads (what
    ``gpg --export`` writes), and their fingerprints. A file holding a secret key is refused: it
    would travel inside every image."""
    with gnupg_home() as home:
        listing = show_keys(home, key_file)
        if listing.secret:
            raise KeyFileError("keyring must be a public key: this file holds a SECRET key, which must not go into "
                               "an image; export the public part with gpg --export KEYID > FILE")
        if not listing.public:
            raise KeyFileError("holds no OpenPGP public key: export one with gpg --export KEYID > FILE")
        if not listing.can_sign:
            raise KeyFileError("holds no key that can sign: the key that signs bundles needs the signing capability")
        if len(listing.unusable) == len(listing.public):
            raise KeyFileError(f"holds only expired or revoked keys ({', '.join(listing.unusable)})")
        run(_gpg(home, "--quiet", "--import", key_file))
        keyring = run(_gpg(home, "--export", *listing.public), capture=True).stdout
        if not keyring:
            raise KeyFileError("holds no public key gpg can import (a key needs a user ID)")
        return keyring, listing.public


def verify(keyring: bytes, data: bytes, signature: bytes) -> None:
    """Check a detached signature as a device does: gpgv with ``keyring`` and nothing else."""
    with gnupg_home() as home:
        (home / "keyring.gpg").write_bytes(keyring)
        (home / "data").write_bytes(data)
        (home / "data.sig").write_bytes(signature)
        proc = run(["gpgv", "--homedir", home, "--keyring", home / "keyring.gpg", home / "data.sig", home / "data"],
                   check=False)
        if proc.returncode != 0:
            raise SignatureError(proc.stderr.decode(errors="replace").strip() or f"gpgv exit status {proc.returncode}")


@dataclass(frozen=True)
class Signer:
    home: Path
    fingerprint: str
    passphrase: bytes

    def sign(self, data: bytes) -> bytes:
        """A detached binary signature of ``data``."""
        src, sig = self.home / "to-sign", self.home / "to-sign.sig"
        src.write_bytes(data)
        sig.unlink(missing_ok=True)
        try:
            # The passphrase on stdin (loopback): never on a command line, no pinentry window.
            run(_gpg(self.home, "--yes", "--pinentry-mode", "loopback", "--passphrase-fd", "0",
                     "--local-user", self.fingerprint, "--detach-sign", "--output", sig, src),
                input_bytes=self.passphrase + b"\n")
        except CommandError as exc:
            if any(text in exc.stderr for text in _PASSPHRASE_ERRORS):
                raise KeyFileError("the secret key is protected by a passphrase, and it was "
                                   + ("not the right one" if self.passphrase else "not given: give it with "
                                      "--passphrase-file FILE (one line)")) from None
            raise
        return sig.read_bytes()

    def public_key(self) -> bytes:
        return run(_gpg(self.home, "--export", self.fingerprint), capture=True).stdout


def read_passphrase(path: Path) -> bytes:
    """The one line of a passphrase file (what a person types), for Signer."""
    try:
        data = boundedread.read_regular(path, PASSPHRASE_MAX)
    except boundedread.ReadError as exc:
        raise KeyFileError(f"passphrase file {path}: {exc.reason}") from None
    line = data.removesuffix(b"\n").removesuffix(b"\r")
    if b"\n" in line:
        raise KeyFileError(f"passphrase file {path} holds more than one line: a passphrase is one line")
    return line


@contextlib.contextmanager
def signer(key_file: Path, passphrase: bytes = b"") -> Iterator[Signer]:
    """The one secret key of ``key_file`` (armored or binary), ready to sign until the block ends."""
    with gnupg_home() as home:
        listing = show_keys(home, key_file)
        if not listing.secret:
            raise KeyFileError("holds no secret key: export the signing key with "
                               "gpg --export-secret-keys --armor KEYID > FILE")
        if len(listing.secret) > 1:
            raise KeyFileError(f"holds {len(listing.secret)} secret keys ({', '.join(listing.secret)}): "
                               "export only the one that signs bundles")
        fpr = listing.secret[0]
        if fpr not in listing.can_sign:
            raise KeyFileError(f"key {fpr} cannot sign (it has no key with the signing capability)")
        if fpr in listing.unusable:
            raise KeyFileError(f"key {fpr} is expired or revoked: devices would refuse its signatures")
        run(_gpg(home, "--quiet", "--import", key_file))
        yield Signer(home=home, fingerprint=fpr, passphrase=passphrase)
