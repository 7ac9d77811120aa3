"""Customisation of the extracted rootfs: everything that is per-image rather than per-package-set.

Works on the tree from the host (no chroot), so it costs the same for arm64 as for amd64.
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from liveng import configfiles, layout, settings
from liveng.host import treecopy
from liveng.host.errors import BuildError
from liveng.host.mirrors import Mirrors
from liveng.host.recipe import Ram, Recipe, Services, User
from liveng.host.runner import run

DEVICE_PYTHON_DIR = "usr/lib/python3/dist-packages/liveng"
DEVICE_ENTRY = "usr/sbin/liveng"
UNIT_DIR = "usr/lib/systemd/system"
SSH_GENERATOR = "usr/lib/systemd/system-generators/systemd-ssh-generator"
# What the device side shares with the host: the layout contract, the boot-state format, the settings schema.
SHARED_MODULES = ("__init__.py", "layout.py", "bootargs.py", "grubenv.py", "settings.py", "configfiles.py",
                  "requests.py", "boundedread.py", "durable.py", "bundle.py", "sfdisk.py", "manifest.py")
# Shared packages: Raspberry Pi Imager's and cloud-init's set-up files in liveng's terms (the settings service).
SHARED_PACKAGES = ("seeds",)

_ENTRY_SCRIPT = """#!/usr/bin/python3
# liveng device tool (installed by liveng build).
import sys

from liveng.device.cli import main

sys.exit(main())
"""

_AUTOLOGIN = """# Development image: root logs in on the serial console without a password (recipe: autologin).
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --local-line --keep-baud 115200,57600,38400,9600 - $TERM
"""

_NETWORK = """# liveng: DHCP on every wired interface.
[Match]
Type=ether

[Network]
DHCP=yes
"""


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def hostname(tree: Path, name: str) -> None:
    _write(tree / configfiles.HOSTNAME_PATH, name + "\n")
    _write(tree / configfiles.HOSTS_PATH, configfiles.hosts_text(None, name))


def apt_sources(tree: Path, recipe: Recipe, components: tuple[str, ...], mirrors: Mirrors) -> None:
    comps = " ".join(components)
    suites = recipe.suite if recipe.suite == "sid" else f"{recipe.suite} {recipe.suite}-updates"
    text = (f"Types: deb\nURIs: {mirrors.archive}\nSuites: {suites}\nComponents: {comps}\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    if mirrors.security and recipe.suite != "sid":
        text += (f"\nTypes: deb\nURIs: {mirrors.security}\nSuites: {recipe.suite}-security\nComponents: {comps}\n"
                 "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    (tree / "etc/apt/sources.list").unlink(missing_ok=True)
    sources_d = tree / "etc/apt/sources.list.d"
    for made in sources_d.glob("[0-9][0-9][0-9][0-9]*"):  # mmdebstrap's (NNNN + the file's name)
        made.unlink()
    _write(sources_d / "debian.sources", text)
    for repo in recipe.repositories:
        if repo.keep:
            _write(sources_d / repo.file_name, repo.deb822())


def networking(tree: Path) -> None:
    _write(tree / "etc/systemd/network/80-liveng-dhcp.network", _NETWORK)
    enable_units(tree, ["systemd-networkd.service", "systemd-resolved.service"])


def enable_units(tree: Path, units: list[str]) -> None:
    run(["systemctl", f"--root={tree}", "enable", *units])


def _copy_traversable(src: Traversable, dest: Path) -> None:
    if src.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        for child in src.iterdir():
            if child.name == "__pycache__":
                continue
            _copy_traversable(child, dest / child.name)
    else:
        dest.write_bytes(src.read_bytes())
        dest.chmod(0o755 if os.access(str(src), os.X_OK) else 0o644)


def device_tool(tree: Path) -> None:
    """The device side of liveng: the layout contract and liveng.device, standard library only."""
    target = tree / DEVICE_PYTHON_DIR
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    pkg = resources.files("liveng")
    for name in SHARED_MODULES:
        (target / name).write_bytes(pkg.joinpath(name).read_bytes())
    for name in ("device", *SHARED_PACKAGES):
        _copy_traversable(pkg.joinpath(name), target / name)
    _write(tree / DEVICE_ENTRY, _ENTRY_SCRIPT, 0o755)


def compile_device_tool(tree: Path) -> None:
    """Byte-compile the device tool with the image's own Python, so that no boot compiles it (the
    first boot would, in every RAM-mode boot again, and on a slow board that takes seconds)."""
    if not (tree / "usr/bin/python3").exists():
        return  # a rootfs given with --rootfs may lack it; the tool then compiles itself when run
    run(["chroot", tree, "python3", "-m", "compileall", "-q", f"/{DEVICE_PYTHON_DIR}"])


def autologin(tree: Path) -> None:
    _write(tree / "etc/systemd/system/serial-getty@.service.d/liveng-autologin.conf", _AUTOLOGIN)


def lock_root(tree: Path) -> None:
    """Root gets no password: ``*`` in /etc/shadow (a recipe user named root may set one later)."""
    shadow = tree / "etc/shadow"
    lines = shadow.read_text().splitlines()
    out = []
    for line in lines:
        fields = line.split(":")
        if fields[0] == "root":
            fields[1] = "*"
        out.append(":".join(fields))
    shadow.write_text("\n".join(out) + "\n")


def users(tree: Path, recipe_users: tuple[User, ...]) -> None:
    for user in recipe_users:
        missing = [g for g in user.groups if not _has_group(tree, g)]
        if missing:
            raise BuildError(f"recipe users: {user.name}: the image has no group {', '.join(missing)} (groups come "
                             "with their packages: add the package, or leave the group out)")
        if user.name == "root":
            if user.password_hash:
                run(["usermod", "--prefix", tree, "-p", user.password_hash, "root"])
            home = tree / "root"
        else:
            args: list[str | Path] = ["useradd", "--prefix", tree, "-m", "-s", "/bin/bash", "-U"]
            if user.password_hash:
                args += ["-p", user.password_hash]
            groups = (["sudo"] if user.sudo else []) + list(user.groups)
            if groups:
                args += ["-G", ",".join(groups)]
            run([*args, user.name])
            home = tree / "home" / user.name
        if user.sudo_nopasswd:
            _write(tree / configfiles.nopasswd_path(user.name), configfiles.nopasswd_text(user.name), 0o440)
        if user.ssh_keys:
            uid, gid = _ids(tree, user.name)
            ssh = home / ".ssh"
            ssh.mkdir(mode=0o700, exist_ok=True)
            keys = ssh / "authorized_keys"
            keys.write_text("\n".join(user.ssh_keys) + "\n")
            keys.chmod(0o600)
            for p in (ssh, keys):
                os.chown(p, uid, gid)


def _has_group(tree: Path, name: str) -> bool:
    return any(line.split(":")[0] == name for line in (tree / "etc/group").read_text().splitlines())


def _ids(tree: Path, name: str) -> tuple[int, int]:
    for line in (tree / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3])
    raise BuildError(f"user {name} is not in the image's /etc/passwd")


_JOURNALD = """# liveng (recipe: ram.journal = "{storage}"). volatile: the log lives in RAM (/run/log/journal) and
# is lost at a reboot, the card is not written; persistent: /var/log/journal on the card, synced
# every 15 minutes (and at once for messages of priority crit and above) instead of every 5.
[Journal]
Storage={storage}
SyncIntervalSec=15m
RuntimeMaxUse=32M
"""


# systemd gives a device 90 s to show up before it fails what needs it, e.g. the serial console's
# getty (dev-ttyS0.device, dev-ttyAMA0.device): on a slow board or an emulated one, coldplug can
# take longer, and a console without a login is a device nobody can reach.
_SYSTEM_CONF = """# liveng: devices may take longer than systemd's 90 s to appear on a slow board (systemd >= 254).
[Manager]
DefaultDeviceTimeoutSec=600s
"""


def slow_devices(tree: Path) -> None:
    _write(tree / "etc/systemd/system.conf.d/liveng.conf", _SYSTEM_CONF)


def memory(tree: Path, ram: Ram) -> None:
    """zram swap (zram-tools) and where the system log goes; the boot modes are GRUB's."""
    # zram-tools is in every liveng rootfs (a rootfs given with --rootfs may lack it: then no zram).
    if any((tree / d / "zramswap.service").exists() for d in (UNIT_DIR, "lib/systemd/system")):
        if ram.zram_percent:
            _write(tree / "etc/default/zramswap", "# liveng (recipe: ram.zram_percent). zramswap.service reads "
                   f"this.\nALGO=zstd\nPERCENT={ram.zram_percent}\nPRIORITY=100\n")
            enable_units(tree, ["zramswap.service"])
        else:
            run(["systemctl", f"--root={tree}", "disable", "zramswap.service"])
    _write(tree / "etc/systemd/journald.conf.d/liveng.conf", _JOURNALD.format(storage=ram.journal))


def copy_files(tree: Path, recipe: Recipe) -> None:
    """The extra tree first, then [[files]]: a single file named in the recipe wins."""
    if recipe.extra_tree is not None:
        treecopy.copy_over(tree, recipe.extra_tree)
    for f in recipe.files:
        treecopy.copy_into(tree, f.source, f.destination, f.mode)


def first_boot_identity(tree: Path) -> None:
    """Nothing that must differ between two devices is baked into the image."""
    _write(tree / "etc/machine-id", "", 0o444)
    (tree / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    if (tree / "usr/sbin/sshd").exists():
        enable_units(tree, ["liveng-ssh-keygen.service"])


def mark_updated(tree: Path) -> None:
    """Tell systemd that /etc and /var match /usr, so the first boot skips ldconfig and update-done.

    ConditionNeedsUpdate= compares these stamps' mtimes with /usr's; the image is made whole.
    """
    usr_mtime = (tree / "usr").stat().st_mtime
    for stamp in (tree / "etc/.updated", tree / "var/.updated"):
        stamp.write_text("# liveng build\n")
        os.utime(stamp, (usr_mtime, usr_mtime))


# Where Debian's kernel and initramfs-tools look for hooks -> liveng's hook file.
KERNEL_HOOKS = {
    "etc/initramfs/post-update.d/liveng": "initramfs-post-update",
    "etc/kernel/postinst.d/zz-liveng": "kernel-postinst",
}


def device_units(tree: Path) -> None:
    src = resources.files("liveng.device").joinpath("data/systemd")
    for unit in src.iterdir():
        if unit.name.endswith((".service", ".timer", ".target")):
            _write(tree / UNIT_DIR / unit.name, unit.read_text())
    enable_units(tree, ["liveng-apt-recover.service", "liveng-boot-ok.service", "liveng-resize.service",
                        "liveng-settings.service", "liveng-shutdown.service"])


def kernel_hooks(tree: Path) -> None:
    """Installed after mmdebstrap, so they stay out of the way while the image is made."""
    src = resources.files("liveng.device").joinpath("data/hooks")
    for dest, name in KERNEL_HOOKS.items():
        _write(tree / dest, src.joinpath(name).read_text(), 0o755)


def clean(tree: Path) -> None:
    lists = tree / "var/lib/apt/lists"
    for entry in lists.glob("*"):
        if entry.is_file() and entry.name != "lock":
            entry.unlink()
    for cache in (tree / "var/cache/apt").glob("*.bin"):
        cache.unlink()


# Wi-Fi: Debian's wpa_supplicant@.service, one instance per Wi-Fi interface (udev starts it), all on
# the one configuration the settings write; systemd-networkd then does DHCP on the link.
_WIFI_DROPIN = f"""# liveng: every Wi-Fi interface uses the configuration written from the settings (recipe or p1).
[Unit]
ConditionPathExists=/{configfiles.WIFI_CONF_PATH}
After=liveng-settings.service

[Service]
ExecStart=
ExecStart=/usr/sbin/wpa_supplicant -c/{configfiles.WIFI_CONF_PATH} -Dnl80211,wext -i%I
"""
_WIFI_UDEV = ("# liveng: wpa_supplicant for every Wi-Fi interface, whatever its name.\n"
              'ACTION=="add", SUBSYSTEM=="net", ENV{DEVTYPE}=="wlan", TAG+="systemd", '
              'ENV{SYSTEMD_WANTS}+="wpa_supplicant@$name.service"\n')
_WIFI_NETWORK = """# liveng: DHCP on every Wi-Fi interface (wpa_supplicant associates it).
[Match]
Type=wlan

[Network]
DHCP=yes
"""


def recipe_services(tree: Path, services: Services) -> None:
    """[services]: after [[files]], so that a unit the recipe brings can be enabled."""
    for action, units in (("enable", services.enable), ("disable", services.disable)):
        for unit in units:
            if not _unit_exists(tree, unit, ("etc/systemd/system", *_UNIT_DIRS)):  # [[files]] may bring it
                raise BuildError(f"recipe services.{action}: {unit} is not in the image: install the package "
                                 "that has it (packages = [...]) or bring the unit file with [[files]]")
        if units:
            run(["systemctl", f"--root={tree}", action, *units])


_UNIT_DIRS = ("usr/lib/systemd/system", "lib/systemd/system")


def _unit_exists(tree: Path, unit: str, dirs: tuple[str, ...] = _UNIT_DIRS) -> bool:
    """Whether the image has ``unit``, or for an instance (getty@tty2.service) its template."""
    template = unit.split("@", 1)[0] + "@." + unit.rsplit(".", 1)[1] if "@" in unit else unit
    return any((tree / d / name).exists() for d in dirs for name in (unit, template))


def wifi_support(tree: Path) -> None:
    """Where wpasupplicant is in the image: the plumbing that makes a written configuration work."""
    if not _unit_exists(tree, "wpa_supplicant@.service"):
        return
    _write(tree / "etc/systemd/system/wpa_supplicant@.service.d/liveng.conf", _WIFI_DROPIN)
    _write(tree / "etc/udev/rules.d/90-liveng-wifi.rules", _WIFI_UDEV)
    _write(tree / "etc/systemd/network/81-liveng-wifi.network", _WIFI_NETWORK)
    if _unit_exists(tree, "wpa_supplicant.service"):
        # The D-Bus service is NetworkManager's way; liveng's is one instance per interface.
        run(["systemctl", f"--root={tree}", "disable", "wpa_supplicant.service"])


def ssh(tree: Path, s: settings.Settings) -> None:
    """openssh-server is in every image; it runs only when the settings ask for it (or give a key)."""
    password = bool(s.ssh and s.ssh.password_authentication)
    _write(tree / configfiles.SSHD_DROPIN_PATH, configfiles.sshd_text(password))
    if not _unit_exists(tree, configfiles.SSH_UNIT):
        if settings.ssh_wanted(s):
            raise BuildError("the recipe enables SSH but the image has no openssh-server")
        return
    action = "enable" if settings.ssh_wanted(s) else "disable"
    run(["systemctl", f"--root={tree}", action, configfiles.SSH_UNIT])
    if (tree / SSH_GENERATOR).exists():
        # systemd's ssh generator (trixie on) binds sshd to AF_VSOCK and local AF_UNIX sockets, which
        # liveng does not use; where the kernel has vsock but no transport it fails at every boot and
        # daemon-reload. Masked the documented way: a link to /dev/null in /etc.
        masked = tree / "etc/systemd/system-generators" / Path(SSH_GENERATOR).name
        masked.parent.mkdir(parents=True, exist_ok=True)
        masked.unlink(missing_ok=True)
        masked.symlink_to("/dev/null")


def device_settings(tree: Path, recipe: Recipe) -> None:
    """The recipe's time zone, locale, keyboard and Wi-Fi, written the way the device writes p1's."""
    if recipe.timezone is not None:
        zone = tree / configfiles.ZONEINFO_DIR / recipe.timezone
        if not zone.is_file():
            raise BuildError(f"{recipe.path}: timezone: {recipe.timezone!r} is not in the image's "
                             f"/{configfiles.ZONEINFO_DIR} (see timedatectl list-timezones)")
        link = tree / configfiles.LOCALTIME_PATH
        link.unlink(missing_ok=True)
        link.symlink_to(f"/{configfiles.ZONEINFO_DIR}/{recipe.timezone}")
        _write(tree / configfiles.TIMEZONE_PATH, recipe.timezone + "\n")
    if recipe.locale is not None:
        _write(tree / configfiles.LOCALE_PATH, configfiles.locale_text(recipe.locale))
        if recipe.locale not in settings.BUILTIN_LOCALES:
            # Generated at the first boot by liveng-settings.service (locale-gen runs in the image).
            _enable_locale(tree, recipe.locale)
    if recipe.keyboard is not None:
        _write(tree / configfiles.KEYBOARD_PATH, configfiles.keyboard_text(recipe.keyboard))
    if recipe.wifi is not None:
        wifi = recipe.wifi
        _write(tree / configfiles.WIFI_CONF_PATH, configfiles.wifi_text(wifi, configfiles.wifi_key(wifi)), 0o600)
        _write(tree / configfiles.REGDOM_PATH, configfiles.regdom_text(wifi.country))
    policy = tree / layout.SETTINGS_POLICY_PATH
    policy.parent.mkdir(parents=True, exist_ok=True)
    _write(policy, "yes\n" if recipe.settings_from_boot_partition else "no\n")


def _enable_locale(tree: Path, locale: str) -> None:
    supported = tree / configfiles.SUPPORTED_LOCALES_PATH
    line = next((x for x in supported.read_text().splitlines() if x.split()[:1] == [locale]), None) \
        if supported.exists() else None
    if line is None:
        raise BuildError(f"locale {locale!r} is not one the image's locales package supports "
                         f"(/{configfiles.SUPPORTED_LOCALES_PATH})")
    gen = tree / configfiles.LOCALE_GEN_PATH
    text = gen.read_text() if gen.exists() else ""
    _write(gen, configfiles.locale_gen_text(text, line))
