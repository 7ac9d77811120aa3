"""What an image leaves out of Debian's packages, through dpkg's own path filters (dpkg(1):
--path-exclude, --path-include). mmdebstrap hands them to dpkg from the first package on and keeps
them in the image (/etc/dpkg/dpkg.cfg.d/99mmdebstrap), so packages installed later on the device are
filtered alike. `dpkg --verify` lists a filtered file as "missing": dpkg's way of saying so.

Where the bytes were (the default rpi image, bench/RESULTS.md): translations 37 MiB, the device trees
of every arm64 board 53 MiB, documentation and man pages 20 MiB, PCIe Wi-Fi firmware 7.5 MiB, in a
rootfs of about 500 MiB."""

from __future__ import annotations

import fnmatch

from liveng.host.recipe import Recipe

# Every package's copyright file stays (Debian's licences ask for it to travel with the binaries).
DOCS = ("path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
        "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*")
# gettext's message catalogues; glibc reads locale.alias to resolve locale names.
TRANSLATIONS = ("path-exclude=/usr/share/locale/*", "path-include=/usr/share/locale/locale.alias")
def language(locale: str | None) -> str | None:
    """The language part of a locale name (de_DE.UTF-8: de), None for C and POSIX."""
    if locale is None:
        return None
    lang = locale.split(".", 1)[0].split("_", 1)[0].split("@", 1)[0]
    return None if lang in ("C", "POSIX") else lang


def excluded(filters: tuple[str, ...] | list[str], path: str) -> bool:
    """Whether dpkg leaves ``path`` out under ``filters`` ("path-exclude=GLOB"/"path-include=GLOB"):
    dpkg(1) applies them in order, the last that matches wins, and its glob's * matches / too."""
    out = False
    for option in filters:
        kind, _, pattern = option.partition("=")
        if kind in ("path-exclude", "path-include") and fnmatch.fnmatchcase(path, pattern):
            out = kind == "path-exclude"
    return out


def dpkg_filters(recipe: Recipe) -> tuple[str, ...]:
    """dpkg options (without the leading --), in the order dpkg must see them: each include after
    the exclude it opens a hole in."""
    options: list[str] = []
    if not recipe.docs:
        options += DOCS
    if not recipe.translations:
        options += TRANSLATIONS
        lang = language(recipe.locale)
        if lang:  # the image's own language keeps its messages
            options += [f"path-include=/usr/share/locale/{lang}/*", f"path-include=/usr/share/locale/{lang}_*/*"]
    options += recipe.platform.dpkg_filters
    return tuple(options)
