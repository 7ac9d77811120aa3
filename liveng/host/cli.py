"""The liveng command on the host: build, run, flash, inspect, bundle."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

from liveng import __version__, layout
from liveng.host import recipe as recipes
from liveng.host.errors import LivengError
from liveng.host.targets import TARGETS

log = logging.getLogger("liveng")


class _Formatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self.start = time.monotonic()

    def format(self, record: logging.LogRecord) -> str:
        elapsed = time.monotonic() - self.start
        return f"[{elapsed:7.1f}s] {record.getMessage()}"


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")
        sys.stderr.flush()


def _setup_logging(verbose: bool) -> None:
    handler = _StderrHandler()
    handler.setFormatter(_Formatter())
    root = logging.getLogger("liveng")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def cmd_build(args: argparse.Namespace) -> int:
    from liveng.host.build import build

    recipe = recipes.load(args.recipe)
    overrides: dict[str, object] = {}
    if args.target:
        overrides["target"] = args.target
    if args.autologin:
        overrides["autologin"] = True
    if overrides:
        recipe = recipes.with_overrides(recipe, **overrides)
    output = args.output or Path(f"liveng-{recipe.target}-{recipe.suite}.img")
    if args.compress:
        from liveng.host import shipped

        shipped.check_tools("bmaptool", args.compress)  # before the build, not after its minutes
    ctx = build(recipe, output, cache_dir=args.cache_dir, refresh=args.refresh, cached_rootfs=args.cached_rootfs,
                keep_workdir=args.keep_workdir,
                rootfs_tarball=args.rootfs)
    packed = None
    if args.compress:
        start = time.monotonic()
        made = shipped.package(output, args.compress)
        packed = made[0]
        log.info("ready to ship in %.1f s: %s (%d MiB), %s, %s", time.monotonic() - start, made[0],
                 made[0].stat().st_size // (1 << 20), made[1].name, made[2].name)
    if not args.no_imager_manifest:
        _imager_manifest(ctx.output, packed, ctx.image_info())
    return 0


def _imager_manifest(image: Path, packed: Path | None, info: dict[str, object]) -> None:
    from liveng.host import imager

    start = time.monotonic()
    path = imager.write(image, packed, info)
    log.info("Raspberry Pi Imager manifest (open it in Imager for its OS customisation): %s (%.1f s)", path,
             time.monotonic() - start)


def cmd_imager_manifest(args: argparse.Namespace) -> int:
    from liveng.host.imagefile import open_image
    from liveng.host.shipped import COMPRESSIONS

    image = open_image(args.image)
    packed = args.packed
    if packed is None:
        packed = next((p for suffix, _, _ in COMPRESSIONS.values()
                       if (p := args.image.with_name(args.image.name + suffix)).is_file()), None)
    _imager_manifest(args.image, packed, image.info)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from liveng.host.qemu import VmConfig, run_vm

    cfg = VmConfig(image=args.image, bios=args.bios, snapshot=args.snapshot, memory=args.memory,
                   cpus=args.cpus, disks=tuple(args.disk), qmp=args.qmp,
                   forwards=tuple(args.forward) + ((f"{args.ssh_port}:22",) if args.ssh_port else ()),
                   machine=args.machine, incoming=args.incoming, secure_boot=args.secure_boot)
    return run_vm(cfg)


def cmd_inspect(args: argparse.Namespace) -> int:
    from liveng.host import inspect
    from liveng.host.imagefile import open_image

    image = open_image(args.image)
    status = inspect.status(image)
    if args.json:
        print(json.dumps({"info": image.info, "partitions": [
            {"number": e.number, "start": e.start, "size": e.size, "type": f"0x{e.mbr_type:02x}",
             "bootable": e.bootable} for e in image.table.entries], "status": status}, indent=1))
        return 0
    info = image.info
    print(f"image:   {image.path}")
    print(f"id:      {info.get('id')}   layout {info.get('layout')}   version {info.get('version', 'none')}   "
          f"built {info.get('built')} by liveng {info.get('liveng')}")
    print(f"system:  Debian {info.get('suite')} {info.get('arch')} ({info.get('target')}), kernel "
          f"{info.get('kernel')}, hostname {info.get('hostname')}")
    roles = {p.number: p.role.value for p in layout.PARTITIONS}
    for e in image.table.entries:
        flag = " boot" if e.bootable else ""
        print(f"  p{e.number}  {roles.get(e.number, '?'):<12} {e.start // layout.MiB:>7} MiB "
              f"+{e.size // layout.MiB:>7} MiB  type 0x{e.mbr_type:02x}{flag}")
    print("\n".join(inspect.lines(status)))
    return 0


def cmd_flash(args: argparse.Namespace) -> int:
    from liveng.host.flash import flash

    print(f"liveng: {flash(args.image, args.device, force=args.force, yes=args.yes)}")
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from liveng.host import bundler

    made = bundler.make(args.image, args.output, args.sign_key, args.passphrase_file, args.channel)
    print(bundler.summary(made))
    return 0


def cmd_settings_check(args: argparse.Namespace) -> int:
    from liveng import boundedread, settings
    from liveng.host.errors import UsageError

    try:
        raw = boundedread.read_regular(args.file, boundedread.SETTINGS_CAP)
        parsed = settings.loads(raw.decode("utf-8"), str(args.file))
    except boundedread.ReadError as exc:
        raise UsageError(f"{args.file}: cannot read it: {exc.reason}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{args.file}: not UTF-8 text: save it as UTF-8") from None
    except settings.SettingsError as exc:
        raise UsageError(str(exc)) from None
    print(f"liveng: {args.file}: valid" + (" (sets nothing)" if parsed.empty else "") +
          "; the device also checks what only it can tell (time zone, locale, Wi-Fi support) before applying")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="liveng", description="Indestructible Debian installations "
                                     "for the Raspberry Pi and the PC.")
    parser.add_argument("--version", action="version", version=f"liveng {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command run")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="build an image from a TOML recipe (the embedded default without one)")
    p.add_argument("recipe", nargs="?", type=Path, help="recipe file (default: the embedded default recipe)")
    p.add_argument("--target", choices=sorted(TARGETS), help="override the recipe's target")
    p.add_argument("--autologin", action="store_true",
                   help="root autologin on the serial console (development images only)")
    p.add_argument("-o", "--output", type=Path, help="image file to write (default: liveng-TARGET-SUITE.img)")
    p.add_argument("--cache-dir", type=Path, help="where rootfs tarballs are cached")
    p.add_argument("--refresh", action="store_true", help="make the rootfs again even if it is cached")
    p.add_argument("--cached-rootfs", action="store_true",
                   help="use a cached rootfs even if the mirror has published updates since (test builds)")
    p.add_argument("--rootfs", type=Path, metavar="TARBALL",
                   help="use this rootfs tarball instead of running mmdebstrap (offline builds, tests)")
    p.add_argument("--keep-workdir", action="store_true", help="keep the work directory (for debugging)")
    p.add_argument("--compress", choices=["zstd", "xz"],
                   help="also write IMAGE.zst or IMAGE.xz, IMAGE.bmap and their SHA-256 sums, ready to ship")
    p.add_argument("--no-imager-manifest", action="store_true",
                   help="do not write IMAGE.rpi-imager-manifest (it reads the whole image for its SHA-256)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("run", help="boot an image in QEMU with the console on this terminal")
    p.add_argument("image", type=Path)
    p.add_argument("--machine", choices=["q35", "virt", "raspi3b"],
                   help="QEMU machine (default: q35 for PC images, virt for arm64 ones; raspi3b boots an "
                   "arm64 image the Raspberry Pi 3 way, through U-Boot from the SD card)")
    p.add_argument("--bios", action="store_true", help="boot through the BIOS instead of UEFI (PC images)")
    p.add_argument("--secure-boot", action="store_true",
                   help="UEFI with Secure Boot enforced and Microsoft's keys enrolled, as most PCs ship (PC images)")
    p.add_argument("--snapshot", action="store_true", help="leave the image file untouched")
    p.add_argument("--memory", type=int, default=1024, metavar="MiB", help="guest memory (default 1024)")
    p.add_argument("--cpus", type=int, default=1,
                   help="guest CPUs (default 1: under TCG a second vCPU makes boots slower, not faster)")
    p.add_argument("--disk", type=Path, action="append", default=[], help="attach another disk image")
    p.add_argument("--qmp", type=Path, help="QMP socket path, for scripts")
    p.add_argument("--forward", action="append", default=[], metavar="HOSTPORT:GUESTPORT",
                   help="forward a TCP port of 127.0.0.1 to the guest")
    p.add_argument("--incoming", type=Path, metavar="STATE",
                   help="resume a VM state saved over QMP (same image state and options) instead of booting")
    p.add_argument("--ssh-port", type=int, metavar="PORT",
                   help="forward 127.0.0.1:PORT to the guest's SSH (same as --forward PORT:22)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("flash", help="write an image to a card or disk (or a file) and verify it by reading it back")
    p.add_argument("image", type=Path)
    p.add_argument("device", type=Path, help="the whole disk, e.g. /dev/sdb or /dev/mmcblk0 (see lsblk), or a file")
    p.add_argument("--force", action="store_true",
                   help="write even a disk that is in use or holds the running system")
    p.add_argument("--yes", action="store_true",
                   help="write a fixed (non-removable) disk without asking")
    p.set_defaults(func=cmd_flash)

    st = sub.add_parser("settings", help="first-boot settings files (liveng-settings.toml on p1)")
    stsub = st.add_subparsers(dest="settings_command", required=True)
    p = stsub.add_parser("check", help="check a settings file before copying it to a card's boot partition")
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_settings_check)

    p = sub.add_parser("bundle", help="make a signed update bundle of an image's system (devices: liveng update)")
    p.add_argument("image", type=Path, help="an image liveng build made (its recipe's version goes in the bundle)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE",
                   help="bundle file to write, NAME.bundle (default: liveng-TARGET-VERSION.bundle here)")
    p.add_argument("--sign-key", type=Path, required=True, metavar="KEYFILE",
                   help="the OpenPGP secret key that signs it (gpg --export-secret-keys KEYID), one key")
    p.add_argument("--passphrase-file", type=Path, metavar="FILE", help="the key's passphrase, one line")
    p.add_argument("--channel", action="store_true",
                   help="also write index.json and index.json.sig beside the bundle, offering it to the channel")
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("imager-manifest", help="write IMAGE.rpi-imager-manifest again (liveng build writes it), "
                       "e.g. after moving the image: Raspberry Pi Imager opens it and offers its OS customisation")
    p.add_argument("image", type=Path, help="the uncompressed image liveng build made")
    p.add_argument("--packed", type=Path, metavar="FILE",
                   help="the compressed image Imager should read (default: IMAGE.zst or IMAGE.xz if there)")
    p.set_defaults(func=cmd_imager_manifest)

    p = sub.add_parser("inspect", help="show an image's (or a card's) layout, build information and device status")
    p.add_argument("image", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)
    return parser


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwind as Ctrl-C does, so temporary files go and children are killed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    # Python's default for these is to die on the spot, leaving a build's half-written outputs and
    # `liveng run`'s firmware copy behind.
    before = {signum: signal.signal(signum, _terminate) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        result: int = args.func(args)
        return result
    except LivengError as exc:
        log.error("error: %s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Terminated as exc:
        log.error("terminated by %s", signal.Signals(exc.signum).name)
        return 128 + exc.signum
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
