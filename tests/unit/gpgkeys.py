"""Real OpenPGP keys for tests, made by gpg in a home directory of their own (ed25519: fast)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SigningKey:
    fingerprint: str
    secret: Path  # armored secret key (gpg --export-secret-keys --armor)
    public: Path  # armored public key
    public_binary: Path  # binary public key (gpg --export)


def make_key(dest: Path, name: str, passphrase: str = "") -> SigningKey:
    """A signing key ``name`` (no passphrase unless given), exported into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    # Not under dest: gpg-agent's socket path must stay short, and pytest's directories can be long.
    home = Path(tempfile.mkdtemp(prefix="liveng-test-gpg-"))
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase", passphrase]
    try:
        subprocess.run([*gpg, "--quick-gen-key", f"{name} <{name}@example.org>", "ed25519", "sign", "never"],
                       check=True, capture_output=True)
        listing = subprocess.run([*gpg, "--with-colons", "--list-secret-keys"], check=True, capture_output=True,
                                 text=True).stdout
        fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        key = SigningKey(fingerprint=fpr, secret=dest / f"{name}.secret.asc", public=dest / f"{name}.asc",
                      public_binary=dest / f"{name}.gpg")
        for path, args in ((key.secret, ["--armor", "--export-secret-keys"]), (key.public, ["--armor", "--export"]),
                           (key.public_binary, ["--export"])):
            path.write_bytes(subprocess.run([*gpg, *args, fpr], check=True, capture_output=True).stdout)
        return key
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def gpgv(keyring: Path, signature: Path, data: Path) -> subprocess.CompletedProcess[str]:
    """gpgv as a device runs it: only ``keyring`` is trusted."""
    home = Path(tempfile.mkdtemp(prefix="liveng-test-gpgv-"))
    try:
        return subprocess.run(["gpgv", "--homedir", str(home), "--keyring", str(keyring.absolute()), str(signature),
                               str(data)], capture_output=True, text=True, check=False)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def sign(key: SigningKey, data: Path) -> Path:
    """A detached signature of ``data`` made with ``key`` by gpg itself (not by liveng's code)."""
    home = Path(tempfile.mkdtemp(prefix="liveng-test-gpg-"))
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    try:
        subprocess.run([*gpg, "--import", str(key.secret)], check=True, capture_output=True)
        sig = data.with_name(data.name + ".sig")
        subprocess.run([*gpg, "--yes", "--detach-sign", "--output", str(sig), str(data)], check=True,
                       capture_output=True)
        return sig
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
