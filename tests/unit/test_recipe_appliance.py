"""The recipe's appliance keys: [[repositories]], debs, extra_tree, [[scripts]] (liveng/host/appliance.py),
the extra tree laid over the image, scripts run in a chroot of it, and the rootfs cache key."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from liveng.host import buildscripts, recipe, treecopy
from liveng.host.errors import BuildError, RecipeError
from liveng.host.rootfs import Pocket, RootfsSpec

KEY = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZabc\n=AbCd\n-----END PGP PUBLIC KEY BLOCK-----\n"


def load(tmp_path: Path, text: str) -> recipe.Recipe:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return recipe.load(path)


def repo(extra: str = "", key: str = 'key_file = "app.asc"') -> str:
    return (f'[[repositories]]\nname = "app"\nuri = "https://apt.example.org/debian"\nsuites = ["stable"]\n'
            f"{key}\n{extra}")


def test_repository_becomes_a_deb822_source_with_its_key_inside(tmp_path: Path) -> None:
    (tmp_path / "app.asc").write_text("some comment\n" + KEY)
    r = load(tmp_path, repo()).repositories[0]
    assert r.keep and r.components == ("main",) and r.file_name == "liveng-app.sources"
    text = r.deb822()
    assert text.startswith("Types: deb\nURIs: https://apt.example.org/debian\nSuites: stable\nComponents: main\n")
    assert "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mDMEZabc\n" in text
    assert "some comment" not in text


def test_a_local_repository_is_not_kept_on_the_device_unless_asked(tmp_path: Path) -> None:
    (tmp_path / "app.asc").write_text(KEY)
    text = repo().replace("https://apt.example.org/debian", "file:///srv/repo")
    assert not load(tmp_path, text).repositories[0].keep
    assert load(tmp_path, text + "keep = true\n").repositories[0].keep


@pytest.mark.parametrize(("text", "message"), [
    (repo(key=""), "repositories[0].key_file: is missing (an unsigned repository is not accepted)"),
    (repo(key='key_file = "binary.gpg"'), "is not an ASCII-armored OpenPGP public key"),
    (repo(key='key_file = "nothere.asc"'), "repositories[0].key_file: cannot read"),
    (repo("colour = 1\n"), "repositories[0].colour: unknown key"),
    (repo().replace('"app"', '"My App"'), "repositories[0].name: 'My App' is not a short name"),
    (repo().replace("https://apt.example.org/debian", "ftp://x"), "repositories[0].uri: 'ftp://x' is not"),
    (repo('components = ["main contrib"]\n'), "repositories[0].components[0]"),
    (repo() + "\n" + repo(), "repositories[1].name: 'app' names another repository already"),
    ('debs = ["pkg.txt"]\n', "debs[0]: "),
    ('debs = ["missing.deb"]\n', "does not exist"),
    ('debs = ["fake.deb"]\n', "is not a Debian package"),
    ('extra_tree = "app.asc"\n', "extra_tree: "),
    ('[[scripts]]\nname = "x"\n', "scripts[0].name: unknown key"),
    ('[[scripts]]\npath = "app.asc"\n', "does not start with #!"),
    ('[[scripts]]\npath = "none.sh"\n', "scripts[0].path: cannot read"),
    ('scripts = "setup.sh"\n', "scripts: must be an array of tables"),
])
def test_bad_appliance_keys_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "app.asc").write_text(KEY)
    (tmp_path / "binary.gpg").write_bytes(b"\x99\x01\x0d\x04")
    (tmp_path / "fake.deb").write_text("not an archive")
    (tmp_path / "pkg.txt").write_text("x")
    with pytest.raises(RecipeError) as err:
        load(tmp_path, text)
    assert str(err.value).startswith(str(tmp_path / "recipe.toml"))
    assert message in str(err.value)


def test_debs_extra_tree_and_scripts_resolve_against_the_recipe(tmp_path: Path) -> None:
    (tmp_path / "app_1.0_all.deb").write_bytes(b"!<arch>\n" + b"x" * 60)
    (tmp_path / "tree").mkdir()
    (tmp_path / "setup.sh").write_text("#!/bin/sh\ntrue\n")
    r = load(tmp_path, 'debs = ["app_1.0_all.deb"]\nextra_tree = "tree"\n[[scripts]]\npath = "setup.sh"\n')
    assert r.debs == ((tmp_path / "app_1.0_all.deb").resolve(),)
    assert r.extra_tree == tmp_path / "tree"
    assert [s.path for s in r.scripts] == [tmp_path / "setup.sh"]


def spec(**kw: object) -> RootfsSpec:
    base: dict[str, object] = dict(suite="trixie", pockets=(Pocket("http://deb.debian.org/debian", "trixie"),),
                                   arch="amd64", components=("main",), packages=("a", "b"), overlay={"x": b"y"})
    base.update(kw)
    return RootfsSpec(**base)  # type: ignore[arg-type]


def test_rootfs_key_unchanged_without_appliance_keys_and_following_them(tmp_path: Path) -> None:
    # The key this spec had before repositories and debs existed: caches made then are still used.
    assert spec().key("mmdebstrap 1.3.5") == "a896bf7a9dc0d59726f62838"
    deb = tmp_path / "app_1.0_all.deb"
    deb.write_bytes(b"!<arch>\none")
    with_deb = spec(debs=(deb,)).key("v")
    with_source = spec(sources=(("liveng-app.sources", "Types: deb\n"),)).key("v")
    assert len({spec().key("v"), with_deb, with_source}) == 3
    deb.write_bytes(b"!<arch>\ntwo")
    assert spec(debs=(deb,)).key("v") != with_deb
    assert not spec().needs_file_mounts and spec(debs=(deb,)).needs_file_mounts
    assert spec(sources=(("a.sources", "URIs: file:///srv\n"),)).needs_file_mounts


def test_extra_tree_goes_through_the_images_directory_links(tmp_path: Path) -> None:
    tree = tmp_path / "image"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "bin").symlink_to("usr/bin")
    (tree / "etc").mkdir()
    (tree / "etc").chmod(0o755)
    extra = tmp_path / "extra"
    (extra / "bin").mkdir(parents=True)
    (extra / "bin/tool").write_text("#!/bin/sh\n")
    (extra / "etc/app").mkdir(parents=True)
    (extra / "etc").chmod(0o700)
    (extra / "etc/app/conf").write_text("on\n")
    (extra / "etc/shadow-link").symlink_to("/etc/shadow")
    (extra / "srv/empty").mkdir(parents=True)
    treecopy.copy_over(tree, extra)
    assert (tree / "bin").is_symlink() and (tree / "usr/bin/tool").read_text() == "#!/bin/sh\n"
    assert (tree / "etc/app/conf").read_text() == "on\n"
    assert (tree / "etc").stat().st_mode & 0o777 == 0o755  # the image's directory keeps its mode
    assert os.readlink(tree / "etc/shadow-link") == "/etc/shadow"  # copied as a link, not followed
    assert (tree / "srv/empty").is_dir()


def shell_tree(tmp_path: Path) -> Path:
    """A tree with the host's /bin/sh and its libraries: enough for a chroot to run a script."""
    tree = tmp_path / "tree"
    sh = Path(os.path.realpath("/bin/sh"))
    libs = [line.split()[-2] if "=>" in line else line.split()[0]
            for line in subprocess.run(["ldd", str(sh)], capture_output=True, text=True, check=True).stdout.splitlines()
            if "/" in line]
    for path in (str(sh), *libs):
        dest = tree / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)
    (tree / "bin").mkdir(exist_ok=True)
    if not (tree / "bin/sh").exists():
        (tree / "bin/sh").symlink_to(sh)
    (tree / "usr/sbin").mkdir(parents=True, exist_ok=True)
    return tree


needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chroot") is None, reason="needs root and chroot")


@needs_root
def test_scripts_run_in_order_inside_the_tree_and_a_failure_names_the_script(tmp_path: Path) -> None:
    tree = shell_tree(tmp_path)
    (tmp_path / "data.txt").write_text("from the recipe directory\n")
    (tmp_path / "first.sh").write_text('#!/bin/sh\necho "$LIVENG_TARGET $LIVENG_ARCH $LIVENG_SUITE" > /result\n'
                                       'read line < "$LIVENG_RECIPE_DIR/data.txt"; echo "$line" >> /result\n'
                                       'test -x /usr/sbin/policy-rc.d && echo no-services >> /result\n'
                                       'test -e /proc/self/status && echo proc >> /result\n')
    (tmp_path / "second.sh").write_text("#!/bin/sh\necho second >> /result\n")
    r = load(tmp_path, 'target = "pc"\nsuite = "bookworm"\n[[scripts]]\npath = "first.sh"\n'
                       '[[scripts]]\npath = "second.sh"\n')
    buildscripts.run_scripts(tree, r)
    assert (tree / "result").read_text().splitlines() == [
        "pc amd64 bookworm", "from the recipe directory", "no-services", "proc", "second"]
    assert not (tree / "usr/sbin/policy-rc.d").exists()
    assert str(tree) not in Path("/proc/self/mounts").read_text()

    (tmp_path / "bad.sh").write_text("#!/bin/sh\necho working\necho 'no such package: foo' >&2\nexit 3\n")
    r = load(tmp_path, '[[scripts]]\npath = "bad.sh"\n[[scripts]]\npath = "second.sh"\n')
    (tree / "result").unlink()
    with pytest.raises(BuildError) as err:
        buildscripts.run_scripts(tree, r)
    assert f"recipe script {tmp_path / 'bad.sh'} failed with exit status 3" in str(err.value)
    assert "working\nno such package: foo" in str(err.value)
    assert not (tree / "result").exists()  # the second script did not run
    assert str(tree) not in Path("/proc/self/mounts").read_text()


@pytest.mark.parametrize("name", ["server/server.toml", "signage/signage.toml"])
def test_the_examples_are_valid_recipes(name: str) -> None:
    r = recipe.load(Path(__file__).resolve().parents[2] / "examples" / name)
    assert r.extra_tree is not None and r.extra_tree.is_dir()
    assert r.services.enable
