"""The set-up files other tools put on a card, translated into liveng's own settings (issue 16).

Raspberry Pi Imager customises a card by writing, into its FAT partition 1, either cloud-init NoCloud
files (``user-data``, ``network-config``, ``meta-data``, plus ``ds=nocloud;i=ID`` and
``cfg80211.ieee80211_regdom=XX`` appended to ``cmdline.txt``) or, from 2.0.11 for images that ask for it,
one ``rpi-preseed.toml``. People also hand a device a NoCloud seed disk (a filesystem labelled CIDATA,
as cloud-localds makes). This package reads those texts, with the standard library only (it runs inside
the image), into a ``Translation``: a dict in the shape of liveng-settings.toml, which ``settings.parse``
accepts (the translators check that, and report a refused value at the seed's file and line), plus what
liveng does not apply (``ignored``) and where the secrets are. Reading files and applying settings are
the caller's.

Which source wins, key by key (hostname, timezone, locale, keyboard, ssh, wifi; users by name), when
several are present, highest first:

1. liveng-settings.toml on p1: liveng's own file, written for this system (``native``);
2. rpi-preseed.toml on p1: the newest format Imager writes, and one file only;
3. NoCloud files on p1: what Imager's cloud-init customisation wrote for this card;
4. a NoCloud seed disk (CIDATA): the least specific, often shared between devices.

``merge`` applies that order to translations; ``gather`` translates and merges the seed texts found.

Versions verified against Raspberry Pi Imager's sources: 1.8 (``users:`` list with groups, keyboard by
``runcmd`` localectl, network-config without a ``network:`` key, no meta-data), 1.9 (``keyboard:``),
2.0.0-2.0.8 (``enable_ssh``, meta-data, ``ethernets``, open networks as ``key-management: none``),
2.0.9 on (``user:``, ``runcmd`` enabling ssh and writing a NOPASSWD sudoers file, ``sudo: null``) and
rpi-preseed.toml (2.0.11 on).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from liveng.seeds.cloudinit import from_cloud_init
from liveng.seeds.common import MAX_BYTES, REMOVED, SeedError, Translation, decode
from liveng.seeds.preseed import from_preseed

__all__ = ["MAX_BYTES", "REMOVED", "NoCloud", "SeedError", "Translation", "decode", "from_cloud_init", "from_preseed",
           "gather", "merge", "native"]


@dataclass(frozen=True)
class NoCloud:
    """The texts of one NoCloud seed (None: the file is absent). ``prefix`` goes before the file names in
    messages: "/boot/firmware/" for p1, "CIDATA:" for a seed disk."""

    user_data: str | None = None
    network_config: str | None = None
    meta_data: str | None = None
    prefix: str = ""


def native(data: dict[str, Any], path: str) -> Translation:
    """liveng-settings.toml's decoded document (checked by settings.parse) as a translation, to merge above the
    seeds."""
    sources = {key: path for key in data if key != "users"}
    sources.update({f"users[{i}]": path for i, _ in enumerate(data.get("users") or [])})
    digest = hashlib.sha256(repr(sorted(data.items())).encode()).hexdigest()
    return Translation(data=dict(data), sources=sources, digest=digest)


def gather(*, preseed: str | None = None, p1: NoCloud | None = None, seed_disk: NoCloud | None = None,
           cmdline: str | None = None, preseed_path: str = "rpi-preseed.toml",
           cmdline_path: str = "cmdline.txt") -> Translation:
    """Translate the seed texts found and merge them, rpi-preseed.toml over p1's NoCloud over a seed disk.

    ``cmdline`` (p1's cmdline.txt) gives every seed its Wi-Fi country when it names none; its
    ``ds=nocloud;i=`` instance id belongs to p1's NoCloud files.
    """
    parts: list[Translation] = []
    if preseed is not None:
        parts.append(from_preseed(preseed, cmdline, path=preseed_path, cmdline_path=cmdline_path))
    if p1 is not None:
        parts.append(from_cloud_init(p1.user_data, p1.network_config, p1.meta_data, cmdline, prefix=p1.prefix))
    if seed_disk is not None:
        regdom = " ".join(a for a in (cmdline or "").split() if a.startswith("cfg80211.ieee80211_regdom="))
        parts.append(from_cloud_init(seed_disk.user_data, seed_disk.network_config, seed_disk.meta_data,
                                     regdom or None, prefix=seed_disk.prefix))
    return merge(parts)


def merge(parts: list[Translation]) -> Translation:
    """One translation from several, the first winning each key (users: each name); ``sources`` says which
    file each key of the result came from. ``ignored``, ``notes`` and ``secrets`` are those of every part
    (a key that a higher source overrides is not listed as ignored: it is simply not used)."""
    out = Translation()
    names: dict[str, int] = {}
    digest = hashlib.sha256()
    for part in parts:
        for key in part.data:
            if key != "users" and key not in out.data:
                out.data[key] = part.data[key]
                out.sources[key] = part.sources.get(key, "")
        # A country alone (cmdline.txt's regulatory domain) does not hide a network a lower source gives: that
        # network is joined, under the higher source's country.
        wifi = part.data.get("wifi")
        if wifi and "ssid" in wifi and "ssid" not in out.data["wifi"]:
            out.data["wifi"] = {**wifi, "country": out.data["wifi"]["country"]}
            out.sources["wifi"] = part.sources.get("wifi", "")
        for i, user in enumerate(part.data.get("users") or []):
            if isinstance(user, dict) and user.get("name") not in names:
                names[user["name"]] = len(names)
                out.data.setdefault("users", []).append(user)
                out.sources[f"users[{names[user['name']]}]"] = part.sources.get(f"users[{i}]", "")
        out.ignored += [x for x in part.ignored if x not in out.ignored]
        out.notes += [x for x in part.notes if x not in out.notes]
        out.secrets += [x for x in part.secrets if x not in out.secrets]
        out.secret_paths += [x for x in part.secret_paths if x not in out.secret_paths]
        if out.instance_id is None:
            out.instance_id = part.instance_id
        digest.update(part.digest.encode())
    out.ignored.sort()
    out.secrets.sort()
    out.digest = digest.hexdigest()
    return out
