"""The kernel arguments of liveng's boot entries: what every entry carries, what a boot mode adds,
and which arguments are liveng's own (a recipe may not set them). Standard library only: shared by
the host (the build's GRUB configuration and boot.txt) and the device (`liveng mode`, kernel slots).
"""

from __future__ import annotations

from liveng.layout import (
    KERNEL_ARG_ID,
    KERNEL_ARG_MODE,
    KERNEL_ARG_PATHS,
    MODE_PERSISTENT,
    MODE_RAM_PATHS,
    MODES,
    PATH_RE,
    RAM_SQUASHFS,
    LayoutError,
    Role,
    check_image_id,
    partuuid_path,
    persistence_label,
)


def kernel_cmdline(image_id: str, extra: tuple[str, ...] = ()) -> str:
    """The kernel command line every boot entry shares (the console options are added by GRUB)."""
    args = [
        "boot=live",
        f"live-media={partuuid_path(image_id, Role.SYSTEM)}",
        "persistence",
        f"persistence-label={persistence_label(image_id)}",
        "persistence-storage=filesystem",
        # The persistence is on the disk we boot from: live-boot's wait for late USB disks
        # (udevadm trigger, settle, up to 5 s of sleep) only costs time.
        "quickusbmodules",
        # A kernel or initramfs that fails reboots after 10 s instead of waiting at a prompt, so
        # that GRUB's try counter moves on to the next slot with nobody at the console.
        "panic=10",
        # systemd-networkd configures the network; live-boot's ifupdown preconfiguration would
        # only re-run udevadm trigger and settle.
        "nonetworking",
        f"{KERNEL_ARG_ID}={image_id}",
    ]
    args.extend(extra)
    return " ".join(args)


def reserved_arg(arg: str) -> bool:
    """A kernel argument that liveng sets itself (kernel_cmdline, mode_args) or reads (liveng.*): a recipe
    that adds one would change the boot (liveng.reset=yes: a reset at every boot)."""
    name = arg.split("=", 1)[0]
    sample = kernel_cmdline("00000001") + " " + mode_args("00000001", MODE_RAM_PATHS, "50%", ("/srv",))
    own = {a.split("=", 1)[0] for a in sample.split()}
    return name in own or name.startswith(("liveng.", "persistence", "live-media")) or name in ("toram", "boot")


def check_persistent_path(path: str) -> str:
    """An absolute directory path that can be a persistent path (no /, no .., nothing a shell or the
    kernel command line would split)."""
    parts = path.split("/")[1:]
    if not PATH_RE.fullmatch(path) or any(p in (".", "..") for p in parts):
        raise LayoutError(f"{path!r} is not an absolute directory path made of letters, digits and . _ @ + -")
    if parts[0] in ("proc", "sys", "dev", "run", "tmp", "boot"):
        raise LayoutError(f"{path!r}: /{parts[0]} is not part of the delta and cannot be a persistent path")
    return path


def mode_args(image_id: str, mode: str, delta_cap: str, paths: tuple[str, ...] = ()) -> str:
    """What a boot mode adds to kernel_cmdline(). ``delta_cap`` is live-boot's overlay-size= (RAM modes)."""
    if mode == MODE_PERSISTENT:
        return f"{KERNEL_ARG_MODE}={mode}"
    if mode not in MODES:
        raise LayoutError(f"unknown boot mode {mode!r} (modes: {', '.join(MODES)})")
    # nopersistence: live-boot's upper directory is its tmpfs; overlay-size= caps it, so that a
    # full RAM delta is ENOSPC ("No space left on device") instead of the OOM killer.
    args = ["nopersistence", f"toram={RAM_SQUASHFS}", f"overlay-size={delta_cap}", f"{KERNEL_ARG_MODE}={mode}"]
    if mode == MODE_RAM_PATHS and paths:
        args.append(f"{KERNEL_ARG_PATHS}={','.join(check_persistent_path(p) for p in paths)}")
    check_image_id(image_id)
    return " ".join(args)
