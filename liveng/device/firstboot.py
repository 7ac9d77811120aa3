"""liveng settings apply: the settings on p1 (and a seed disk), applied at boot by liveng-settings.service.

The owner edits liveng-settings.toml on the FAT boot partition from any computer, or Raspberry Pi Imager
writes its OS customisation there (rpi-preseed.toml, or cloud-init's user-data, network-config and
meta-data), or a VM gets a cloud-init NoCloud seed disk (seedfiles, liveng.seeds). At every boot the service
reads them all; when they differ from what was last applied:

1. all of it is translated into one Settings and checked (the schema in liveng/settings.py, then what
   only this system can tell: the time zone exists, sudo is installed, a user name is not a system
   account...). Any error: nothing is applied, the reason goes to the console, the journal and
   liveng-settings-error.txt on p1, and the boot goes on;
2. everything is applied, each file replaced whole (temporary name, fsync, rename);
3. the applied state reaches p7 (sync), and only then are the files on p1 replaced by copies without
   their secrets (password hashes, Wi-Fi passphrase or key; a seed disk is never written);
4. the digest of those copies is recorded in the delta (STATE_PATH), so the next boot leaves it alone.

A power cut between the steps repeats the work at the next boot: every step can run twice. The
record lives in the delta, so after a factory reset the file (now without its secrets) is applied
again.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from liveng import boundedread, configfiles, layout, settings
from liveng.device import bootstate, seedfiles, settingsfiles, settingsusers
from liveng.device.settingsusers import System as System  # the type callers and tests name
from liveng.durable import fsync_dir
from liveng.settings import Settings, SettingsError

STATE_PATH = "var/lib/liveng/settings.json"
DEVICE_WAIT = 15.0  # seconds for udev to show p1 early in the boot
_write = settingsusers.write


def check(s: Settings, system: System, source: str, sources: dict[str, str] | None = None) -> None:
    """What only this system can tell; raises SettingsError naming the file (``sources``: the file each
    top-level key came from, "users[N]" for each user) and the key."""
    def fail(key: str, message: str) -> SettingsError:
        top = re.match(r"^(users\[\d+\]|[a-z_]+)", key)
        return SettingsError(f"{(sources or {}).get(top.group(1) if top else key, source)}: {key}: {message}")

    if s.timezone is not None and not system.path(f"{configfiles.ZONEINFO_DIR}/{s.timezone}").is_file():
        raise fail("timezone", f"{s.timezone!r} is not a time zone this system knows (timedatectl list-timezones)")
    if s.locale is not None and s.locale not in settings.BUILTIN_LOCALES:
        if not system.exists("usr/sbin/locale-gen"):
            raise fail("locale", f"{s.locale!r} needs the locales package, which this image lacks: use \"C.UTF-8\", "
                       "or build the image with the locale in its recipe")
        if _supported_line(system, s.locale) is None:
            raise fail("locale", f"{s.locale!r} is not a locale glibc supports (/{configfiles.SUPPORTED_LOCALES_PATH})")
    if s.wifi is not None:
        if not _wifi_support(system):
            raise fail("wifi", "this image has no Wi-Fi support (wpasupplicant): Raspberry Pi images have it; for a "
                       "PC add wpasupplicant and the Wi-Fi chip's firmware to the recipe's packages")
        if s.wifi.ssid is not None and not s.wifi.key_given and _kept_psk(system, s.wifi.ssid) is None:
            raise fail("wifi.passphrase", f"is missing for the network {s.wifi.ssid!r} (\"\" for an open network)")
    if settings.ssh_wanted(s) and not system.exists("usr/sbin/sshd"):
        raise fail("ssh", "this image has no SSH server (openssh-server)")
    settingsusers.check(s.users, system, fail)


def _supported_line(system: System, locale: str) -> str | None:
    supported = system.path(configfiles.SUPPORTED_LOCALES_PATH)
    if not supported.exists():
        return None
    return next((x for x in supported.read_text().splitlines() if x.split()[:1] == [locale]), None)


def _kept_psk(system: System, ssid: str) -> str | None:
    conf = system.path(configfiles.WIFI_CONF_PATH)
    psk = configfiles.existing_psk(conf.read_text(), ssid) if conf.exists() else None
    return psk or settingsfiles.kept_psk(system.kept, ssid)  # after a reset: from p7, outside the delta


def apply(s: Settings, system: System) -> list[str]:
    """Apply checked settings; return what changed (paths, accounts, services)."""
    if s.hostname is not None:
        _hostname(s.hostname, system)
    if s.timezone is not None:
        _timezone(s.timezone, system)
    if s.locale is not None:
        _write(system, configfiles.LOCALE_PATH, configfiles.locale_text(s.locale))
        if s.locale not in settings.BUILTIN_LOCALES:
            line = _supported_line(system, s.locale)
            assert line is not None  # check() made sure
            gen = system.path(configfiles.LOCALE_GEN_PATH)
            if _write(system, configfiles.LOCALE_GEN_PATH,
                      configfiles.locale_gen_text(gen.read_text() if gen.exists() else "", line)):
                system.run(["locale-gen"], None)
    if s.keyboard is not None:
        _write(system, configfiles.KEYBOARD_PATH, configfiles.keyboard_text(s.keyboard))
    for user in s.users:
        settingsusers.apply(user, system)
    if s.wifi is not None:
        _wifi(s, system)
    _ssh(s, system)
    return system.changes


def _hostname(name: str, system: System) -> None:
    _write(system, configfiles.HOSTNAME_PATH, name + "\n")
    hosts = system.path(configfiles.HOSTS_PATH)
    _write(system, configfiles.HOSTS_PATH, configfiles.hosts_text(hosts.read_text() if hosts.exists() else None, name))
    if system.live and socket.gethostname() != name:
        socket.sethostname(name)
        system.changes.append(f"host name {name}")


def _timezone(zone: str, system: System) -> None:
    link = system.path(configfiles.LOCALTIME_PATH)
    target = f"/{configfiles.ZONEINFO_DIR}/{zone}"
    if not (link.is_symlink() and os.readlink(link) == target):
        tmp = link.with_name(f".{link.name}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, link)
        fsync_dir(link.parent)
        system.changes.append(f"/{configfiles.LOCALTIME_PATH} -> {target}")
    _write(system, configfiles.TIMEZONE_PATH, zone + "\n")


def _wifi(s: Settings, system: System) -> None:
    wifi = s.wifi
    assert wifi is not None
    _write(system, configfiles.REGDOM_PATH, configfiles.regdom_text(wifi.country))
    conf = system.path(configfiles.WIFI_CONF_PATH)
    if wifi.ssid is None:
        # The country only: a network set up before stays.
        text = configfiles.with_country(conf.read_text(), wifi.country) if conf.is_file() else \
            configfiles.wifi_text(wifi, None)
    elif not wifi.key_given:
        text = configfiles.wifi_text(wifi, _kept_psk(system, wifi.ssid))
    else:
        psk = configfiles.wifi_key(wifi)
        if psk is not None:
            settingsfiles.keep_psk(system.kept, wifi.ssid, psk)
        text = configfiles.wifi_text(wifi, psk)
    if _write(system, configfiles.WIFI_CONF_PATH, text, 0o600) and system.live:
        # Interfaces already up take the new network; at boot none is up yet (they wait for this service).
        for iface in sorted(p.parent.name for p in Path("/sys/class/net").glob("*/wireless")):
            system.run(["systemctl", "try-restart", "--no-block", f"wpa_supplicant@{iface}.service"], None)


def _ssh(s: Settings, system: System) -> None:
    changed = False
    if s.ssh is not None and s.ssh.password_authentication is not None:
        changed = _write(system, configfiles.SSHD_DROPIN_PATH, configfiles.sshd_text(s.ssh.password_authentication))
    wanted = settings.ssh_wanted(s)
    if wanted is True:
        if not all(system.path(link).is_symlink() for link in configfiles.SSH_ENABLED_LINKS):
            # Until systemd reloads, it keeps the alias sshd.service (which Debian's sshd-keygen.service
            # names) as a unit of its own, not found. A reload after ssh.service has started folds that
            # unit's dead state into ssh.service, and its server is left running outside systemd's view,
            # holding port 22 (trixie, systemd 257). Reloads come from any apt install, and from
            # `systemctl enable` itself: ssh has an init script, and update-rc.d reloads before the links
            # exist. So: enable only when a link is missing, with systemctl's own reload after the links,
            # before the start, which merges two stopped units.
            system.run(["systemctl", "enable", *([] if system.live else ["--no-reload"]), configfiles.SSH_UNIT],
                       None)
        if system.live:
            # Queued behind this service (ssh.service is ordered after it); no wait here.
            system.run(["systemctl", "start", "--no-block", configfiles.SSH_UNIT], None)
            if changed:
                system.run(["systemctl", "try-reload-or-restart", "--no-block", configfiles.SSH_UNIT], None)
        system.changes.append("ssh on")
    elif wanted is False:
        system.run(["systemctl", "disable", "--no-reload", configfiles.SSH_UNIT], None)
        if system.live:
            system.run(["systemctl", "stop", "--no-block", configfiles.SSH_UNIT], None)
        system.changes.append("ssh off")
    elif changed and system.live:
        system.run(["systemctl", "try-reload-or-restart", "--no-block", configfiles.SSH_UNIT], None)


def ensure_locale(system: System) -> None:
    """Generate the configured locale if it is missing (a recipe's locale, at the first boot)."""
    conf = system.path(configfiles.LOCALE_PATH)
    if not conf.exists() or not system.exists("usr/sbin/locale-gen"):
        return
    values = dict(line.split("=", 1) for line in conf.read_text().splitlines() if "=" in line)
    lang = values.get("LANG", "").strip().strip('"')
    if not lang or lang in settings.BUILTIN_LOCALES:
        return
    if configfiles.locale_available_name(lang) not in system.run(["locale", "-a"], None).split():
        system.run(["locale-gen"], None)


# The state in the delta and the file on p1.

def read_state(system: System) -> dict[str, str]:
    path = system.path(STATE_PATH)
    try:
        value = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_state(system: System, state: dict[str, object]) -> None:
    path = system.path(STATE_PATH)
    path.parent.mkdir(parents=True, exist_ok=True)
    bootstate.write_atomic(path, (json.dumps(state, indent=1) + "\n").encode(), mode=0o600)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def decode_file(raw: bytes, source: str) -> tuple[str, Settings]:
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise SettingsError(f"{source}: not UTF-8 text: save it as UTF-8") from None
    return text, settings.parse(settings.decode(text, source), source)


@dataclass(frozen=True)
class Outcome:
    applied: bool
    message: str


def _wait_for_boot_partition() -> None:
    dev = bootstate.device_path(layout.Role.BOOT)
    deadline = time.monotonic() + DEVICE_WAIT
    while not dev.exists() and time.monotonic() < deadline:
        time.sleep(0.2)


def apply_boot_partition(force: bool = False, system: System | None = None) -> Outcome:
    """The whole flow (see the module's description); raises SettingsError when nothing was applied."""
    system = system or System()
    try:
        ensure_locale(system)
    except bootstate.DeviceError as exc:  # the settings still get their turn
        print(f"liveng: warning: the configured locale could not be generated: {exc}", file=sys.stderr)
    if not boot_partition_allowed(system):
        return Outcome(False, f"this image was built with [settings] from_boot_partition = false: "
                       f"{layout.SETTINGS_PATH} on the boot partition is ignored (change settings on the system)")
    _wait_for_boot_partition()
    with settingsfiles.kept_dir(system.live and system.kept is None) as kept:
        system.kept = system.kept or kept
        return _apply_from(system, force)


def boot_partition_allowed(system: System) -> bool:
    try:
        return system.path(layout.SETTINGS_POLICY_PATH).read_text().strip() != "no"
    except FileNotFoundError:  # an image built before the switch existed
        return True


def _apply_from(system: System, force: bool) -> Outcome:
    try:
        p1, error_note = settingsfiles.read_boot_files(seedfiles.P1_FILES)
        found = seedfiles.Found(p1, seedfiles.read_seed_disk(), error_note)
    except boundedread.ReadError as exc:
        settingsfiles.note_error(now(), str(exc))
        raise SettingsError(str(exc)) from None
    except SettingsError as exc:
        settingsfiles.note_error(now(), str(exc))
        raise
    if found.empty:
        return Outcome(False, f"no {layout.SETTINGS_PATH}, rpi-preseed.toml or cloud-init seed (user-data...) on the "
                       "boot partition and no seed disk: nothing to apply")
    digest = found.digest()
    state = read_state(system)
    if state.get("digest") == digest and not force and not error_note:
        return Outcome(False, f"the settings are unchanged since {state.get('applied', '?')}")
    try:
        t = seedfiles.translate(found)
        if t.settings.wifi is not None and not _wifi_support(system) and \
                t.translation.sources.get("wifi") != layout.SETTINGS_PATH:
            # Imager offers Wi-Fi for every image (and fills in the computer's own network): not a reason to
            # refuse the user and the key of a PC image.
            t = seedfiles.without_wifi(t, "this image has no Wi-Fi support (wpasupplicant)")
        check(t.settings, system, "the settings", t.translation.sources)
    except SettingsError as exc:
        settingsfiles.note_error(now(), str(exc))
        raise
    changes = apply(t.settings, system)
    os.sync()  # the applied settings are on p7 before the secrets leave p1
    fresh = seedfiles.redacted(found, t, f"applied {now()} and removed from this file")
    if fresh or error_note:  # p1 is mounted writable only when there is something to write
        with bootstate.mounted(layout.Role.BOOT, "vfat", writable=True) as boot:
            for name, data in fresh.items():
                settingsfiles.replace_wiping(boot, data, name)
            (boot / layout.SETTINGS_ERROR_PATH).unlink(missing_ok=True)
        found.p1.update(fresh)
    write_state(system, {"digest": found.digest(), "applied": now(), "changes": changes})
    os.sync()
    what = ", ".join(changes) if changes else "nothing needed changing"
    files = sorted({f for f in t.translation.sources.values() if f})
    report = "".join(f"\nliveng: note: {line}" for line in [*system.notes, *seedfiles.report(t)])
    return Outcome(True, f"applied {', '.join(files) or 'the settings'}: {what}{report}")


def _wifi_support(system: System) -> bool:
    return system.exists("usr/sbin/wpa_supplicant", "sbin/wpa_supplicant")


def check_file(path: Path | None, system: System | None = None) -> Settings:
    """Check a settings file (or p1's) against the schema and this system; apply nothing."""
    system = system or System(live=False)
    if path is None:  # all of p1's sources and a seed disk, as the boot reads them
        try:
            p1, _ = settingsfiles.read_boot_files(seedfiles.P1_FILES)
        except boundedread.ReadError as exc:
            raise SettingsError(str(exc)) from None
        t = seedfiles.translate(seedfiles.Found(p1, seedfiles.read_seed_disk()))
        check(t.settings, system, "the settings", t.translation.sources)
        for line in seedfiles.report(t):
            print(f"liveng: note: {line}")
        return t.settings
    else:
        try:
            raw = boundedread.read_regular(path, boundedread.SETTINGS_CAP)
        except boundedread.ReadError as exc:
            raise SettingsError(str(exc)) from None
        source = str(path)
    _, s = decode_file(raw, source)
    check(s, system, source)
    return s
