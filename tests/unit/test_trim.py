"""What an image leaves out of Debian's packages (trim.py): dpkg's path filters, from the recipe,
handed to mmdebstrap and part of the rootfs cache key."""

from __future__ import annotations

import dataclasses

from liveng import layout
from liveng.host import recipe, rootfs, trim
from liveng.host.mirrors import Mirrors

MIRRORS = Mirrors("http://m.example/debian", "http://m.example/debian-security")


def kept(filters: tuple[str, ...], path: str) -> bool:
    return not trim.excluded(filters, path)


def test_dpkgs_rule_the_last_matching_filter_wins() -> None:
    filters = ("path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright")
    assert trim.excluded(filters, "/usr/share/doc/bash/README")
    assert not trim.excluded(filters, "/usr/share/doc/bash/copyright")
    assert trim.excluded(filters[::-1], "/usr/share/doc/bash/copyright")  # the exclude came last
    assert trim.excluded(filters, "/usr/share/doc/a/b/c")  # * matches / too, as dpkg's glob does
    assert not trim.excluded(filters, "/usr/bin/bash") and not trim.excluded((), "/usr/share/doc/x")
    assert not trim.excluded(("# a comment", ""), "/x")


def test_default_recipe_leaves_out_docs_translations_and_other_boards_device_trees() -> None:
    filters = trim.dpkg_filters(recipe.load(None))
    assert not kept(filters, "/usr/share/man/man1/ls.1.gz")
    assert not kept(filters, "/usr/share/doc/bash/changelog.Debian.gz")
    assert kept(filters, "/usr/share/doc/bash/copyright")
    assert not kept(filters, "/usr/share/locale/de/LC_MESSAGES/coreutils.mo")
    assert kept(filters, "/usr/share/locale/locale.alias")
    assert not kept(filters, "/usr/lib/linux-image-6.12.1-arm64/rockchip/rk3588-rock-5b.dtb")
    for pattern in layout.DTB_GLOBS:  # what the boot and kernel partitions take from there
        assert kept(filters, f"/usr/lib/linux-image-6.12.1-arm64/{pattern.replace('*', 'x')}")
    assert kept(filters, "/usr/lib/modules/6.12.1-arm64/kernel/fs/ext4/ext4.ko.xz")
    for wifi in ("brcm/brcmfmac43455-sdio.bin", "cypress/cyfmac43455-sdio.bin", "brcm/brcmfmac43430-sdio.txt",
                 "brcm/brcmfmac43236b.bin"):  # the Pis' own chips, USB dongles'
        assert kept(filters, f"/usr/lib/firmware/{wifi}") and kept(filters, f"/lib/firmware/{wifi}")
    for card in ("brcm/brcmfmac4366c-pcie.bin", "cypress/cyfmac54591-pcie.clm_blob"):
        assert not kept(filters, f"/usr/lib/firmware/{card}") and not kept(filters, f"/lib/firmware/{card}")
    assert kept(filters, "/usr/share/zoneinfo/Europe/Rome")


def test_recipe_keeps_what_it_asks_for() -> None:
    r = dataclasses.replace(recipe.load(None), target="pc", docs=True, translations=True)
    assert trim.dpkg_filters(r) == ()
    german = dataclasses.replace(r, translations=False, locale="de_DE.UTF-8")
    filters = trim.dpkg_filters(german)
    assert kept(filters, "/usr/share/locale/de/LC_MESSAGES/coreutils.mo")
    assert kept(filters, "/usr/share/locale/de_AT/LC_MESSAGES/x.mo")
    assert not kept(filters, "/usr/share/locale/fr/LC_MESSAGES/coreutils.mo")
    assert not kept(filters, "/usr/share/locale/da/LC_MESSAGES/coreutils.mo")


def test_language_of_a_locale() -> None:
    assert trim.language("de_DE.UTF-8") == "de"
    assert trim.language("sr_RS@latin") == "sr"
    assert trim.language("ast") == "ast"
    assert trim.language("C.UTF-8") is None
    assert trim.language(None) is None


def test_filters_reach_mmdebstrap_and_the_cache_key() -> None:
    r = dataclasses.replace(recipe.load(None), target="pc")
    spec = rootfs.spec_for(r, MIRRORS)
    assert spec.dpkg_filters == trim.dpkg_filters(r)
    docs = rootfs.spec_for(dataclasses.replace(r, docs=True), MIRRORS)
    assert docs.key("mmdebstrap 1.5.0") != spec.key("mmdebstrap 1.5.0")


def test_recipe_keys_parse() -> None:
    r = recipe.parse({"docs": True, "translations": True}, "r.toml", None)
    assert (r.docs, r.translations) == (True, True)
    assert (recipe.load(None).docs, recipe.load(None).translations) == (False, False)
