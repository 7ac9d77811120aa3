"""The recipe's version and [update] keys (liveng/host/updaterecipe.py), what they put into the image,
and what they do to the package list and the rootfs cache key."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest

from liveng import bundle
from liveng.host import recipe, rootfs, updaterecipe
from liveng.host.build import Context
from liveng.host.errors import RecipeError
from liveng.host.mirrors import Mirrors
from tests.unit.gpgkeys import SigningKey, gpgv, make_key, sign

MIRRORS = Mirrors("http://m.example/debian", "http://m.example/debian-security")


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return make_key(tmp_path_factory.mktemp("keys"), "updates")


def load(tmp_path: Path, text: str) -> recipe.Recipe:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return recipe.load(path)


def test_without_the_keys_an_image_has_a_time_version_and_takes_no_bundles() -> None:
    r = recipe.load(None)
    assert r.version is None
    assert r.update == updaterecipe.Update()
    assert r.update.keyring == b"" and r.update.keyring_file is None
    assert json.loads(r.update.config.to_json()) == {"channel": "", "keep": list(bundle.UPDATE_KEEP_DEFAULT)}


def dpkg_less(a: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, "lt", b], check=False).returncode == 0


def test_the_default_version_sorts_by_build_time_and_below_a_set_one() -> None:
    early = updaterecipe.default_version("2026-01-09T09:05:00Z")
    assert early == "0.20260109.090500"
    bundle.check_version(early)
    later_that_day = updaterecipe.default_version("2026-01-09T10:00:00Z")
    next_day = updaterecipe.default_version("2026-01-10T00:00:00Z")
    assert dpkg_less(early, later_that_day) and dpkg_less(later_that_day, next_day)
    assert dpkg_less(next_day, "1.0") and dpkg_less(next_day, "1")


def test_version_goes_into_image_json(tmp_path: Path) -> None:
    ctx = Context(recipe=recipe.loads('version = "2.1+site1"\n', "r.toml", None), output=tmp_path / "x.img",
                  workdir=tmp_path, cache_dir=tmp_path, image_id="1234abcd", mirrors=MIRRORS)
    assert ctx.image_info()["version"] == "2.1+site1"
    assert ctx.image_info()["update_keys"] == []
    ctx = Context(recipe=recipe.load(None), output=tmp_path / "x.img", workdir=tmp_path, cache_dir=tmp_path,
                  image_id="1234abcd", mirrors=MIRRORS, built="2026-03-04T05:06:07Z")
    assert ctx.image_info()["version"] == "0.20260304.050607"


@pytest.mark.parametrize("name", ["public", "public_binary"])
def test_keyring_armored_or_binary_becomes_a_keyring_gpgv_accepts(tmp_path: Path, key: SigningKey,
                                                                  name: str) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys/updates.key").write_bytes(getattr(key, name).read_bytes())
    r = load(tmp_path, '[update]\nkeyring = "keys/updates.key"\nchannel = "https://updates.example.org/kiosk"\n')
    assert r.update.keyring_file == tmp_path / "keys/updates.key"
    assert r.update.fingerprints == (key.fingerprint,)
    assert r.update.channel == "https://updates.example.org/kiosk"
    assert r.update.keep == bundle.UPDATE_KEEP_DEFAULT
    assert not r.update.keyring.startswith(b"-----BEGIN")  # binary, as gpgv's --keyring wants
    tree = tmp_path / "tree"
    updaterecipe.install(tree, r.update)
    keyring = tree / bundle.UPDATE_KEYRING_PATH
    assert keyring.read_bytes() == r.update.keyring
    assert keyring.stat().st_mode & 0o777 == 0o644
    config = bundle.parse_config((tree / bundle.UPDATE_CONFIG_PATH).read_bytes())
    assert config == bundle.UpdateConfig(channel="https://updates.example.org/kiosk")
    data = tmp_path / "data"
    data.write_bytes(b"signed by the key the recipe names\n")
    assert gpgv(keyring, sign(key, data), data).returncode == 0
    data.write_bytes(b"something else\n")
    assert gpgv(keyring, data.with_name("data.sig"), data).returncode != 0


def test_another_key_is_not_in_the_keyring(tmp_path: Path, key: SigningKey) -> None:
    other = make_key(tmp_path / "other", "other")
    (tmp_path / "updates.asc").write_bytes(key.public.read_bytes())
    r = load(tmp_path, '[update]\nkeyring = "updates.asc"\n')
    (tmp_path / "keyring.gpg").write_bytes(r.update.keyring)
    data = tmp_path / "data"
    data.write_bytes(b"payload\n")
    result = gpgv(tmp_path / "keyring.gpg", sign(other, data), data)
    assert result.returncode != 0 and "No public key" in result.stderr


def test_without_a_keyring_the_image_gets_the_config_only(tmp_path: Path) -> None:
    r = load(tmp_path, '[update]\nchannel = "file:///srv/channel"\nkeep = ["/"]\n')
    tree = tmp_path / "tree"
    updaterecipe.install(tree, r.update)
    assert not (tree / bundle.UPDATE_KEYRING_PATH).exists()
    assert bundle.parse_config((tree / bundle.UPDATE_CONFIG_PATH).read_bytes()) == bundle.UpdateConfig(
        channel="file:///srv/channel", keep=("/",))
    updaterecipe.install(tree, updaterecipe.Update())
    assert json.loads((tree / bundle.UPDATE_CONFIG_PATH).read_text()) == {
        "channel": "", "keep": list(bundle.UPDATE_KEEP_DEFAULT)}


def test_keep_takes_paths(tmp_path: Path) -> None:
    r = load(tmp_path, '[update]\nkeep = ["/home", "/var/lib/myapp", "/etc/machine-id"]\n')
    assert r.update.keep == ("/home", "/var/lib/myapp", "/etc/machine-id")
    assert load(tmp_path, "[update]\nkeep = []\n").update.keep == ()


def test_gpgv_and_a_new_rootfs_only_with_a_keyring(tmp_path: Path, key: SigningKey) -> None:
    plain = dataclasses.replace(recipe.load(None), target="pc")
    (tmp_path / "k.asc").write_bytes(key.public.read_bytes())
    channel_only = dataclasses.replace(load(tmp_path, '[update]\nchannel = "https://u.example"\nkeep = ["/"]\n'),
                                       target="pc")
    keyed = dataclasses.replace(load(tmp_path, '[update]\nkeyring = "k.asc"\n'), target="pc")
    assert "gpgv" not in rootfs.packages(plain) and "gpgv" not in rootfs.packages(channel_only)
    assert "gpgv" in rootfs.packages(keyed)
    key_of = {name: rootfs.spec_for(r, MIRRORS).key("mmdebstrap 1.5.7")
              for name, r in (("plain", plain), ("channel", channel_only), ("keyed", keyed))}
    assert key_of["plain"] == key_of["channel"] != key_of["keyed"]


def test_secret_key_is_refused_as_keyring(tmp_path: Path, key: SigningKey) -> None:
    (tmp_path / "sec.asc").write_bytes(key.secret.read_bytes())
    with pytest.raises(RecipeError) as err:
        load(tmp_path, '[update]\nkeyring = "sec.asc"\n')
    assert str(err.value).startswith(f"{tmp_path / 'recipe.toml'}: update.keyring: {tmp_path / 'sec.asc'}: ")
    assert "keyring must be a public key" in str(err.value)


@pytest.mark.parametrize(("text", "message"), [
    ('version = 1.2\n', "version: must be a string: write it in quotes"),
    ('version = "v1.2"\n', "version: version 'v1.2' is not a Debian-style version"),
    ('version = "1:2.0"\n', "version: version '1:2.0' is not a Debian-style version"),
    ('update = "yes"\n', "update: must be a table"),
    ('[update]\ncolour = "red"\n', "update.colour: unknown key (known keys: channel, keep, keyring)"),
    ('[update]\nkeyring = "missing.asc"\n', "update.keyring: "),
    ('[update]\nkeyring = "notes.txt"\n', "is not an OpenPGP key file"),
    ('[update]\nkeyring = "empty.asc"\n', "is not an OpenPGP key file"),
    ('[update]\nkeyring = 3\n', "update.keyring: must be a string"),
    ('[update]\nchannel = "ftp://u.example/c"\n', "update.channel: 'ftp://u.example/c' is not an http://"),
    ('[update]\nchannel = "https://u.example/a b"\n', "update.channel: "),
    ('[update]\nchannel = ""\n', "update.channel: '' is not"),
    ('[update]\nkeep = "/home"\n', "update.keep: must be a list of strings"),
    ('[update]\nkeep = ["home"]\n', "update.keep[0]: keep path 'home' is not an absolute path"),
    ('[update]\nkeep = ["/home", "/proc/x"]\n', "update.keep[1]: keep path '/proc/x': /proc is not part of the delta"),
    ('[update]\nkeep = ["/home/../etc"]\n', "update.keep[0]: "),
    ('[update]\nkeep = ["/", "/home"]\n', "update.keep[0]: \"/\" keeps the whole delta: list nothing else"),
    ('[update]\nkeep = ["/home", "/home"]\n', "update.keep[0]: /home is listed twice"),
    ('[update]\nkeep = ["/home", "/home/pi"]\n', "update.keep[1]: /home/pi is inside /home"),
])
def test_bad_update_keys_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "notes.txt").write_text("not a key\n")
    (tmp_path / "empty.asc").write_text("")
    with pytest.raises(RecipeError) as err:
        load(tmp_path, text)
    assert str(err.value).startswith(f"{tmp_path / 'recipe.toml'}: ")
    assert message in str(err.value)
    assert err.value.exit_code == 2


def test_a_relative_keyring_needs_a_recipe_file() -> None:
    with pytest.raises(RecipeError, match=r"update\.keyring: a relative path needs a recipe file"):
        recipe.loads('[update]\nkeyring = "k.asc"\n', "r.toml", None)
