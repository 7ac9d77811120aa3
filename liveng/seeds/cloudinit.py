"""cloud-init NoCloud seeds in liveng's terms: user-data (#cloud-config), meta-data, network-config and the
kernel command line.

Each key means here what it means to cloud-init on Debian and Raspberry Pi OS, where liveng has the same
setting; the rest is listed as ignored. Choices where cloud-init's meaning needs a reading:

- ``user:`` is the distribution's default user, which is in the sudo group on Debian and Raspberry Pi OS:
  without its own ``groups`` it gets ``sudo = true``. A ``users:`` entry gets sudo from ``groups``
  containing ``sudo`` or from a sudoers rule granting every command (``ALL=(ALL) ALL``, with or without
  NOPASSWD, which becomes ``sudo_nopasswd``). Narrower rules are not widened into sudo: they are ignored.
  Other ``groups`` become the user's groups (the device skips those its system lacks, and says so).
- ``lock_passwd`` is true unless set to false (cloud-init's default): a locked user's ``passwd`` is not
  applied, as cloud-init would leave it unusable. ``chpasswd`` hashes are applied (to users of the seed
  and to root); plain-text passwords never are (liveng takes crypt(3) hashes only).
- SSH is switched on by ``enable_ssh: true`` (Imager 2.0.0-2.0.8), by ``runcmd`` entries that only enable
  or start ssh (Imager 2.0.9 on), and by ``ssh_pwauth: true`` (asking for password logins over SSH means
  wanting SSH; cloud images run sshd anyway); a user's SSH key switches it on in liveng itself.
- ``runcmd`` entries that write a NOPASSWD sudoers file for a user who has ``sudo_nopasswd`` anyway, and the
  ``chmod`` of that file (Imager 2.0.9 on), are accepted: liveng writes its own.
- ``runcmd`` entries that set the X keyboard map (``localectl set-x11-keymap``, Imager 1.8) become
  ``keyboard`` unless a ``keyboard:`` key says it; ``setupcon`` (which applies it to the console) is
  accepted. Every other entry is ignored (``runcmd[N]``).
- The host name comes from ``hostname``, else the first label of ``fqdn``, else meta-data's
  ``local-hostname``, else ``h=`` of ``ds=nocloud`` on the kernel command line; a domain is not applied;
  upper case is lowered (host names are case-insensitive); ``preserve_hostname: true`` keeps none.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from liveng import settings
from liveng.seeds import cloudusers, miniyaml, network
from liveng.seeds.common import Builder, Path, Seed, SeedError, Translation

# Accepted without a trace: they ask for what liveng does anyway, or change nothing in one document.
_SILENT = {"manage_etc_hosts", "merge_how", "merge_type"}
_SSH_UNITS = {"ssh", "ssh.service", "sshd", "sshd.service", "ssh.socket"}
_NOT_CLOUD_CONFIG = {
    "#!": "a shell script", "#include": "an #include list", "#cloud-config-archive": "a cloud-config archive",
    "#cloud-boothook": "a boothook", "#part-handler": "a part handler", "## template:": "a Jinja template",
    "content-type:": "a MIME multi-part message", "mime-version:": "a MIME multi-part message",
    "#cloud-config-jsonp": "a JSON patch",
}


def from_cloud_init(user_data: str | None, network_config: str | None = None, meta_data: str | None = None,
                    cmdline: str | None = None, *, prefix: str = "") -> Translation:
    """Translate one NoCloud seed. ``prefix`` is put before the file names in messages ("/boot/firmware/")."""
    names = {n: prefix + n for n in ("user-data", "network-config", "meta-data", "cmdline.txt")}
    b = Builder()
    boot = network.kernel(cmdline, names["cmdline.txt"])
    meta = _meta_data(b, meta_data, names["meta-data"])
    if user_data is not None:
        document = _cloud_config(user_data, names["user-data"])
        _user_data(b, Seed(b, names["user-data"], document.lines), document.value, meta, boot)
    else:
        _hostname(b, None, {}, meta, boot)
    if network_config is not None and network_config.strip():
        document = miniyaml.parse(network_config, names["network-config"])
        network.translate(b, Seed(b, names["network-config"], document.lines), document.value, boot)
    network.country_only(b, boot)
    b.instance_id = meta.instance_id or boot.instance_id
    return b.finish([(names["user-data"], user_data), (names["network-config"], network_config),
                     (names["meta-data"], meta_data), (names["cmdline.txt"], " ".join(boot.relevant) or None)])


class _Meta:
    def __init__(self, seed: Seed) -> None:
        self.seed = seed
        self.instance_id: str | None = None
        self.hostname: str | None = None


def _meta_data(b: Builder, text: str | None, file: str) -> _Meta:
    document = miniyaml.parse(text or "", file)
    meta = _Meta(Seed(b, file, document.lines))
    seed = meta.seed
    for key, value in seed.table((), document.value or {}).items():
        if key == "instance-id" and value is not None:
            meta.instance_id = str(value) if isinstance(value, int | str) else seed.text((key,), value)
        elif key == "local-hostname" and value is not None:
            meta.hostname = seed.text((key,), value)
        elif key == "public-keys":
            seed.ignore((key,), cloudusers.NO_DEFAULT_USER)
        elif key not in ("instance-id", "local-hostname", "dsmode"):
            seed.ignore((key,))
    return meta


def _cloud_config(text: str, file: str) -> miniyaml.Document:
    first = text.removeprefix("\ufeff").lstrip("\r\n").split("\n", 1)[0].strip()
    if first == "#cloud-config" or not text.strip():
        document = miniyaml.parse(text, file)
        if document.value is not None and not isinstance(document.value, dict):
            raise SeedError(file, min(document.lines.values(), default=None), "the cloud-config is not a mapping "
                            "of 'key: value' lines")
        return document
    for start, what in _NOT_CLOUD_CONFIG.items():
        if first.lower().startswith(start):
            raise SeedError(file, 1, f"{what} is not supported by liveng's reader, which takes #cloud-config "
                            "user-data: write the settings as #cloud-config, or use an image with real cloud-init")
    raise SeedError(file, 1, "user-data must start with the line '#cloud-config' (cloud-init ignores it "
                    "otherwise)")


def _user_data(b: Builder, seed: Seed, cfg: dict[str, Any] | None, meta: _Meta, boot: network.Kernel) -> None:
    cfg = cfg or {}
    _hostname(b, seed, cfg, meta, boot)
    cloudusers.translate(b, seed, cfg)
    ssh: dict[str, bool] = {}
    if cfg.get("ssh_pwauth") is not None:
        value = cfg["ssh_pwauth"]
        text = value.lower() if isinstance(value, str) else value
        if text in (True, "yes", "true"):
            ssh.update(enabled=True, password_authentication=True)
        elif text in (False, "no", "false"):
            ssh["password_authentication"] = False
        elif text != "unchanged":
            raise seed.fail(("ssh_pwauth",), "must be true, false or \"unchanged\"")
        for key in ssh:
            b.where[f"ssh.{key}"] = seed.at(("ssh_pwauth",))
    if cfg.get("enable_ssh") is not None:
        ssh["enabled"] = seed.flag(("enable_ssh",), cfg["enable_ssh"])
    keyboard = _keyboard(seed, cfg)
    if "runcmd" in cfg:
        _runcmd(seed, cfg["runcmd"], ssh, keyboard)
    if ssh:
        b.data["ssh"], b.sources["ssh"] = ssh, seed.file
        b.where.setdefault("ssh", seed.at(("ssh_pwauth",)))
    for key in ("timezone", "locale"):
        value = cfg.get(key)
        if value is not None and value is not False:
            b.data[key], b.sources[key], b.where[key] = seed.text((key,), value), seed.file, seed.at((key,))
    if keyboard:
        b.data["keyboard"], b.sources["keyboard"] = keyboard[0], seed.file
        b.where["keyboard"] = seed.at(keyboard[1])
    handled = {"hostname", "fqdn", "preserve_hostname", "user", "users", "chpasswd", "ssh_authorized_keys",
               "ssh_pwauth", "enable_ssh", "keyboard", "runcmd", "timezone", "locale", "manage_resolv_conf"}
    for key, value in cfg.items():
        if key in ("ssh_keys", "password"):
            seed.secret((key,))  # SSH host private keys; the default user's plain-text password
        if (key == "manage_resolv_conf" and value is not False) or (key not in handled and key not in _SILENT):
            seed.ignore((key,))


def _hostname(b: Builder, seed: Seed | None, cfg: dict[str, Any], meta: _Meta, boot: network.Kernel) -> None:
    if seed is not None and seed.flag(("preserve_hostname",), cfg.get("preserve_hostname", False) or False):
        for key in ("hostname", "fqdn"):
            if key in cfg:
                seed.ignore((key,), "preserve_hostname is true")
        return
    if seed is not None and cfg.get("hostname") is not None:
        found: tuple[Any, str, Any] = (cfg["hostname"], seed.file, seed.at(("hostname",)))
        if cfg.get("fqdn") is not None:
            seed.ignore(("fqdn",), "liveng sets the host name only, which hostname gives")
    elif seed is not None and cfg.get("fqdn") is not None:
        found = (cfg["fqdn"], seed.file, seed.at(("fqdn",)))
    elif meta.hostname is not None:
        found = (meta.hostname, meta.seed.file, meta.seed.at(("local-hostname",)))
    elif boot.hostname is not None:
        found = (boot.hostname, boot.where["hostname"][0], boot.where["hostname"])
    else:
        return
    value, file, where = found
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # cloud-init takes "hostname: 1234" as text too
    if not isinstance(value, str):
        raise SeedError(where[0], where[1], f"{where[2]}: must be text, not {settings.kind(value)}")
    name, _, domain = value.strip().partition(".")
    if domain:
        b.note(f"{file}: {where[2]}: only the host name {name.lower()!r} is applied: liveng sets no domain")
    b.data["hostname"], b.sources["hostname"], b.where["hostname"] = name.lower(), file, where

def _keyboard(seed: Seed, cfg: dict[str, Any]) -> tuple[str, Path] | None:
    if cfg.get("keyboard") is None:
        return None
    table = seed.table(("keyboard",), cfg["keyboard"])
    layout = seed.text(("keyboard", "layout"), table.get("layout"))
    if "," in layout:
        seed.ignore(("keyboard",), "several layouts: liveng sets one")
        return None
    for key, value in table.items():
        if (key == "model" and value not in ("pc105", None)) or key not in ("layout", "model", "variant"):
            seed.ignore(("keyboard", key), "liveng's keyboard model is pc105" if key == "model" else None)
    variant = table.get("variant")
    if variant:
        layout += f"({seed.text(('keyboard', 'variant'), variant)})"
    return layout, ("keyboard", "layout")


def _runcmd(seed: Seed, value: Any, ssh: dict[str, bool], keyboard: tuple[str, Path] | None) -> None:
    nopasswd = {u["name"] for u in seed.b.data.get("users", []) if u.get("sudo_nopasswd")}
    sudoers: set[str] = set()  # the files such entries wrote
    for i, entry in enumerate(seed.items(("runcmd",), value or [])):
        commands = _commands(entry)
        if commands and all(_starts_ssh(c) for c in commands):
            ssh["enabled"] = True
            seed.b.where["ssh.enabled"] = seed.at(("runcmd", i))
            continue
        if commands and len(commands) == 1 and _sudoers_entry(commands[0], nopasswd, sudoers):
            continue
        if commands and len(commands) == 1:
            keymap = _x11_keymap(commands[0])
            if keymap is not None and (keyboard is None or keyboard[0] == keymap):
                if keyboard is None:
                    seed.b.data["keyboard"], seed.b.sources["keyboard"] = keymap, seed.file
                    seed.b.where["keyboard"] = seed.at(("runcmd", i))
                    keyboard = keymap, ("runcmd", i)
                continue
            if commands[0][0] == "setupcon" and set(commands[0][1:]) <= {"-k", "--keyboard-only", "--force"}:
                continue  # applies the keyboard map to the console, as liveng does itself
        seed.ignore(("runcmd", i))


_NOPASSWD_ECHO = re.compile(r"echo '([a-z_][a-z0-9_-]*) ALL=\(ALL(:ALL)?\) NOPASSWD: ?ALL' ?> ?"
                            r"(/etc/sudoers\.d/[\w.-]+)")


def _sudoers_entry(argv: list[str], nopasswd: set[str], files: set[str]) -> bool:
    """Imager's ``sh -c "echo 'USER ALL=(ALL) NOPASSWD:ALL' >/etc/sudoers.d/FILE"`` for a user who has
    sudo_nopasswd, and ``chmod 0440`` of such a file."""
    if len(argv) == 3 and argv[:2] == ["sh", "-c"]:
        m = _NOPASSWD_ECHO.fullmatch(argv[2].strip())
        if m and m.group(1) in nopasswd:
            files.add(m.group(3))
            return True
    return len(argv) == 3 and argv[0] == "chmod" and argv[1] in ("0440", "440") and argv[2] in files


def _commands(entry: Any) -> list[list[str]] | None:
    """A runcmd entry as simple commands (split at ';' and '&&', '|| true' dropped); None if not that simple."""
    if isinstance(entry, list):
        return [[str(a) for a in entry]] if entry and all(isinstance(a, str | int) for a in entry) else None
    if not isinstance(entry, str):
        return None
    try:
        words = shlex.split(entry)
    except ValueError:
        return None
    commands: list[list[str]] = [[]]
    for word in words:
        if word in (";", "&&"):
            commands.append([])
        else:
            commands[-1].append(word)
    for command in commands:
        if command[-2:] == ["||", "true"]:
            del command[-2:]
    if any(not c or any(w in ("|", "||", "&", ">", "<", ">>") for w in c) for c in commands):
        return None
    return commands


def _starts_ssh(argv: list[str]) -> bool:
    if argv[:1] == ["service"]:
        return len(argv) == 3 and argv[1] in ("ssh", "sshd") and argv[2] in ("start", "restart")
    if argv[:1] not in (["systemctl"], ["/bin/systemctl"], ["/usr/bin/systemctl"]) or len(argv) < 3:
        return False
    if argv[1] not in ("enable", "start", "restart", "reenable"):
        return False
    units = [a for a in argv[2:] if not a.startswith("-")]
    flags = [a for a in argv[2:] if a.startswith("-")]
    return bool(units) and set(units) <= _SSH_UNITS and set(flags) <= {"--now", "--no-block", "-q", "--quiet"}


def _x11_keymap(argv: list[str]) -> str | None:
    """``localectl set-x11-keymap LAYOUT [pc105 [VARIANT]]`` as liveng's keyboard; None for anything else."""
    if argv[:2] != ["localectl", "set-x11-keymap"] or not 3 <= len(argv) <= 5:
        return None
    if len(argv) >= 4 and argv[3] not in ("pc105", ""):
        return None
    return f"{argv[2]}({argv[4]})" if len(argv) == 5 and argv[4] else argv[2]
