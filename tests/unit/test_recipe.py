"""Recipe parsing and each validation error."""

from __future__ import annotations

from pathlib import Path

import pytest

from liveng.host import recipe
from liveng.host.cli import main
from liveng.host.errors import RecipeError


def parse(text: str, base: Path | None = None) -> recipe.Recipe:
    return recipe.loads(text, "r.toml", base)


def test_default_recipe_is_valid_and_has_no_password() -> None:
    r = recipe.load(None)
    assert r.target == "rpi"
    assert r.suite == "trixie"
    assert r.autologin is False
    assert r.users == ()
    assert r.sizes == recipe.Sizes(boot=256, slot=256, persistence=1024)


def test_full_recipe(tmp_path: Path) -> None:
    (tmp_path / "motd").write_text("hello\n")
    r = parse(
        """
target = "pc"
suite = "bookworm"
mirror = "http://mirror.example/debian"
security_mirror = "none"
hostname = "kiosk-1"
packages = ["vim-tiny", "libc6-dev"]
compression = "lz4"
cmdline = ["quiet", "init_on_alloc=0"]
autologin = true
grub_timeout = 0
[services]
enable = ["ssh.service", "getty@tty2.service"]
disable = ["apt-daily.timer"]
[sizes]
boot = 128
slot = 64
persistence = 512
[[files]]
source = "motd"
destination = "/etc/motd"
mode = "0600"
[[users]]
name = "pi"
password_hash = "$y$j9T$abc$def"
ssh_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE me@host"]
sudo = true
""",
        tmp_path,
    )
    assert r.suite == "bookworm"
    assert r.arch == "amd64"
    assert r.packages == ("vim-tiny", "libc6-dev")
    assert r.services.enable == ("ssh.service", "getty@tty2.service") and r.services.disable == ("apt-daily.timer",)
    assert r.cmdline == ("quiet", "init_on_alloc=0")
    assert r.sizes == recipe.Sizes(boot=128, slot=64, persistence=512)
    assert r.files[0].source == tmp_path / "motd"
    assert r.files[0].mode == 0o600
    assert r.users[0].sudo is True
    assert r.users[0].ssh_keys[0].startswith("ssh-ed25519 ")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('colour = "red"', "colour: unknown key"),
        ("[sizes]\nroot = 5", "sizes.root: unknown key"),
        ("target = 3", "target: must be a string, not an integer"),
        ('target = "mac"', "target: 'mac' is not one of: pc, rpi"),
        ('suite = "jessie"', "suite: 'jessie' is not one of"),
        ('mirror = "ftp://x"', "mirror: 'ftp://x' is not"),
        ('security_mirror = "x"', "security_mirror: 'x' is not"),
        ('hostname = "Bad_Host"', "hostname: 'Bad_Host' is not a valid host name"),
        ('packages = "vim"', "packages: must be a list of strings, not a string"),
        ('packages = ["Vim!"]', "packages[0]: 'Vim!' is not a Debian package name"),
        ('packages = [1]', "packages[0]: must be a string, not an integer"),
        ('compression = "brotli"', "compression: 'brotli' is not one of"),
        ("[services]\nenable = [\"../x.service\"]", "services.enable[0]: '../x.service' is not a systemd unit"),
        ("[services]\nenable = \"a.service\"", "services.enable: must be a list of strings"),
        ("[services]\nstart = []", "services.start"),
        ("[services]\nenable = [\"a.service\"]\ndisable = [\"a.service\"]", "a.service both enabled and disabled"),
        ('cmdline = ["a b"]', "cmdline[0]: 'a b' must be one kernel argument"),
        ('cmdline = ["x;reboot"]', "cmdline[0]"),
        ('autologin = "yes"', "autologin: must be true or false, not a string"),
        ('docs = "no"', "docs: must be true or false, not a string"),
        ("translations = 0", "translations: must be true or false, not an integer"),
        ("grub_timeout = -1", "grub_timeout: -1 s is impossible"),
        ("grub_timeout = 1.5", "grub_timeout: must be an integer s, not a number"),
        ("sizes = 3", "sizes: must be a table, not an integer"),
        ("[sizes]\nboot = 16", "sizes.boot: 16 MiB is impossible: it must be between 64 and 4096 MiB"),
        ("[sizes]\nslot = 0", "sizes.slot: 0 MiB is impossible"),
        ("[sizes]\npersistence = 10", "sizes.persistence: 10 MiB is impossible"),
        ("[sizes]\npersistence = true", "sizes.persistence: must be an integer MiB, not a boolean"),
        ("[sizes]\npersistence = 2097000\nboot=4096\nslot=4096", "more than an MBR disk can address"),
        ('files = "x"', "files: must be an array of tables"),
        ('[[files]]\ndestination = "/x"', "files[0].source: is missing"),
        ('[[files]]\nsource = "/nonexistent/liveng"\ndestination = "/x"', "does not exist"),
        ('[[files]]\nsource = "/etc/hostname"\ndestination = "etc/x"', "must be an absolute path"),
        ('[[files]]\nsource = "/etc/hostname"\ndestination = "/../x"', "must be an absolute path"),
        ('[[files]]\nsource = "/etc/hostname"\ndestination = "/x"\nmode = "rw"', "files[0].mode"),
        ('[[files]]\nsource = "/etc/hostname"\ndestination = "/x"\nowner = "me"', "files[0].owner: unknown key"),
        ("[[users]]\nsudo = true", "users[0].name: is missing"),
        ('[[users]]\nname = "Bad Name"', "users[0].name: 'Bad Name' is not a valid user name"),
        ('[[users]]\nname = "pi"\npassword_hash = "raspberry"', "plain passwords are refused"),
        ('[[users]]\nname = "pi"\nssh_keys = ["not a key"]', "users[0].ssh_keys[0]"),
        ('[[users]]\nname = "pi"\npassword = "x"', "users[0].password: unknown key"),
        ('[[users]]\nname = "pi"\n[[users]]\nname = "pi"', "user 'pi' is listed twice"),
        ("target = ", "r.toml: not valid TOML"),
    ],
)
def test_validation_errors_name_file_and_key(text: str, needle: str) -> None:
    with pytest.raises(RecipeError) as info:
        parse(text, Path("/"))
    message = str(info.value)
    assert message.startswith("r.toml: ")
    assert needle in message


def test_relative_file_source_without_recipe_file() -> None:
    with pytest.raises(RecipeError, match="needs a recipe file"):
        parse('[[files]]\nsource = "motd"\ndestination = "/etc/motd"', None)


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="no such recipe file"):
        recipe.load(tmp_path / "nope.toml")


def test_override_target_is_checked() -> None:
    with pytest.raises(RecipeError, match="--target"):
        recipe.with_overrides(recipe.load(None), target="sparc")


def test_cli_bad_recipe_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('suite = "trixie"\n[sizes]\nboot = 1\n')
    out = tmp_path / "out"
    out.mkdir()
    assert main(["build", str(bad), "-o", str(out / "x.img")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: sizes.boot: 1 MiB is impossible" in err
    assert list(out.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml", "out"]


def test_a_service_the_image_lacks_stops_the_build(tmp_path: Path) -> None:
    from liveng.host import customize
    from liveng.host.errors import BuildError
    from liveng.host.recipe import Services

    (tmp_path / "usr/lib/systemd/system").mkdir(parents=True)
    (tmp_path / "usr/lib/systemd/system/getty@.service").write_text("[Install]\nWantedBy=getty.target\n")
    with pytest.raises(BuildError, match=r"services\.enable: nginx\.service is not in the image"):
        customize.recipe_services(tmp_path, Services(enable=("getty@tty2.service", "nginx.service")))
    with pytest.raises(BuildError, match=r"services\.disable: cron\.service"):
        customize.recipe_services(tmp_path, Services(disable=("cron.service",)))
