"""Recipe [[files]] stay inside the image tree; recipe inputs are read with a size cap."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

from liveng.host import customize, recipe
from liveng.host.errors import RecipeError


def _recipe(tmp_path: Path, files: str) -> recipe.Recipe:
    return recipe.loads(files, "r.toml", tmp_path)


@pytest.mark.parametrize("dest", ["/.", "//", "/", "/etc//x", "/etc/./x", "/etc/../x", "/etc/x/", "/etc/x\x00y",
                                  "/etc/x\ny", "etc/x"])
def test_destination_must_be_a_normalised_path(dest: str) -> None:
    text = f'[[files]]\nsource = "/etc/hostname"\ndestination = {json.dumps(dest)}\n'
    with pytest.raises(RecipeError, match=r"r\.toml: files\[0\]\.destination: .* must be an absolute path"):
        recipe.loads(text, "r.toml", None)


def test_absolute_links_in_the_tree_mean_the_tree(tmp_path: Path) -> None:
    host = tmp_path / "host"
    (host / "run").mkdir(parents=True)
    (host / "zone").write_text("host zone\n")
    os.chmod(host / "zone", 0o644)
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "usr/share/zoneinfo").mkdir(parents=True)
    (tree / "var").mkdir()
    (tree / "run").mkdir()
    # What debootstrap leaves, pointing (as seen from the build host) at the host's files.
    (tree / "etc/localtime").symlink_to(host / "zone")
    (tree / "var/run").symlink_to("/run")
    name = f"liveng-test-{secrets.token_hex(6)}"
    (tree / "etc/dir").symlink_to("/../../../../../" + str(host.relative_to("/")))
    src = tmp_path / "src"
    src.mkdir()
    (src / "tz").write_text("mine\n")
    (src / "d").mkdir()
    (src / "d/f").write_text("in d\n")
    r = _recipe(tmp_path, f'[[files]]\nsource = "src/tz"\ndestination = "/etc/localtime"\nmode = "0600"\n'
                          f'[[files]]\nsource = "src/tz"\ndestination = "/var/run/{name}"\n'
                          '[[files]]\nsource = "src/d"\ndestination = "/etc/dir/sub"\n')
    try:
        customize.copy_files(tree, r)
    finally:
        host_run = Path("/run") / name
        escaped = host_run.exists()
        host_run.unlink(missing_ok=True)
    assert not escaped  # the build host's /run
    assert (host / "zone").read_text() == "host zone\n" and (host / "zone").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in host.rglob("*")) == ["run", "zone"]
    local = tree / "etc/localtime"
    assert not local.is_symlink() and local.read_text() == "mine\n" and local.stat().st_mode & 0o777 == 0o600
    assert (tree / "run" / name).read_text() == "mine\n"  # /var/run -> /run of the image
    # An absolute link with .. in it stops at the tree's root.
    assert (tree / str(host.relative_to("/")) / "sub/f").read_text() == "in d\n"


def test_key_file_and_recipe_are_read_with_a_cap(tmp_path: Path) -> None:
    text = '[persistence]\nencryption = "luks2"\nkey_file = "/dev/zero"\n'
    with pytest.raises(RecipeError, match=r"persistence\.key_file: cannot read /dev/zero: not a regular file"):
        recipe.loads(text, "r.toml", None)
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(recipe.KEY_FILE_MAX + 1)
    with pytest.raises(RecipeError, match=r"larger than"):
        recipe.loads(f'[persistence]\nencryption = "luks2"\nkey_file = "{big}"\n', "r.toml", None)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(RecipeError, match=r"fifo\.toml: cannot read the recipe: not a regular file"):
        recipe.load(fifo)
