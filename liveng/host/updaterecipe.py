"""The recipe's keys for whole-system updates, and what they put into the image.

- ``version``: the system's version (Debian version syntax), in image.json and in every bundle made
  of the image; devices compare versions with dpkg's rules. Default: the build's UTC time as
  0.YYYYMMDD.HHMMSS, which sorts by time and below any version a recipe sets from 1 on.
- ``[update]``: ``keyring`` (the OpenPGP public key(s) bundles must be signed with; without it the
  image takes no bundles), ``channel`` (the URL of a channel directory, or none), ``keep`` (what an
  update carries over from the running delta; ``["/"]``: all of it).

The keyring is read and converted when the recipe is loaded, so that a wrong key stops the build
before any work, like every other recipe error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from liveng import bundle
from liveng.host import appliance, openpgp
from liveng.settings import Checker

UPDATE_KEYS = {"keyring", "channel", "keep"}
_CHANNEL_RE = re.compile(r"(https?|file)://[^\s\"'\\]+")
BUILT_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # build.Context.built
# The keyring's place in the image is bundle.UPDATE_KEYRING_PATH; gpgv on the device reads it.
GPGV_PACKAGE = "gpgv"


@dataclass(frozen=True)
class Update:
    """[update]; the defaults are an image without the table: no keyring, so it takes no bundles."""

    keyring_file: Path | None = None
    keyring: bytes = b""  # binary public keyring (gpg --export), as the image keeps it
    fingerprints: tuple[str, ...] = ()  # of the keyring's primary keys
    channel: str = ""
    keep: tuple[str, ...] = bundle.UPDATE_KEEP_DEFAULT

    @property
    def config(self) -> bundle.UpdateConfig:
        return bundle.UpdateConfig(channel=self.channel, keep=self.keep)


def version(c: Checker, value: Any) -> str:
    if not isinstance(value, str):
        raise c.fail("version", "must be a string: write it in quotes, e.g. version = \"1.2\"")
    try:
        return bundle.check_version(value)
    except bundle.BundleError as exc:
        raise c.fail("version", str(exc)) from None


def default_version(built: str) -> str:
    """The version of a build whose recipe sets none, from its time (build.Context.built)."""
    when = datetime.strptime(built, BUILT_FORMAT)
    return f"0.{when:%Y%m%d}.{when:%H%M%S}"


def update(c: Checker, value: Any, base: Path | None) -> Update:
    table = c.table("update", value)
    c.unknown(table, UPDATE_KEYS, "update")
    kw: dict[str, Any] = {}
    if "keyring" in table:
        path = appliance.recipe_path(c, "update.keyring", table["keyring"], base)
        try:
            kw["keyring"], kw["fingerprints"] = openpgp.public_keyring(path)
        except openpgp.KeyFileError as exc:
            raise c.fail("update.keyring", f"{path}: {exc}") from None
        kw["keyring_file"] = path
    if "channel" in table:
        kw["channel"] = c.pattern("update.channel", table["channel"], _CHANNEL_RE,
                                  "an http://, https:// or file:// URL of a channel directory (leave it out for none)")
    if "keep" in table:
        kw["keep"] = _keep(c, c.strings("update.keep", table["keep"]))
    return Update(**kw)


def _keep(c: Checker, paths: tuple[str, ...]) -> tuple[str, ...]:
    for i, path in enumerate(paths):
        key = f"update.keep[{i}]"
        try:
            bundle.check_keep([path])
        except bundle.BundleError as exc:
            raise c.fail(key, str(exc)) from None
        if path == "/" and len(paths) > 1:
            raise c.fail(key, "\"/\" keeps the whole delta: list nothing else with it")
        if paths.count(path) > 1:
            raise c.fail(key, f"{path} is listed twice")
        for other in paths:
            if other not in (path, "/") and path.startswith(other + "/"):
                raise c.fail(key, f"{path} is inside {other}, which is listed already")
    return paths


def install(tree: Path, update: Update) -> None:
    """The [update] settings and the keyring into the image (the device tool reads them)."""
    config = tree / bundle.UPDATE_CONFIG_PATH
    config.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    config.write_text(update.config.to_json())
    config.chmod(0o644)
    if update.keyring:
        keyring = tree / bundle.UPDATE_KEYRING_PATH
        keyring.write_bytes(update.keyring)
        keyring.chmod(0o644)
