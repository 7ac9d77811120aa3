"""GRUB: i386-pc (MBR + core.img) for the PC's BIOS boot, arm64-efi for the Raspberry Pi and arm64 UEFI;
the menu (p1's grub.cfg) for every GRUB, Debian's signed one on the PC's UEFI path included (signed.py).

Every GRUB starts with the same small config: find p1 by its FAT serial (the image id, so a
second liveng disk cannot capture the boot), then read p1's grub.cfg. The menu reaches the other
partitions of the same disk by partition number. It uses only commands that Debian's signed GRUB
has built in (the build checks it), so one menu serves BIOS, UEFI and Secure Boot alike.
"""

from __future__ import annotations

import os
from pathlib import Path

from liveng import bootargs, layout
from liveng.host.errors import PreflightError
from liveng.host.runner import run

GRUB_LIB = Path("/usr/lib/grub")

_COMMON_MODULES = [
    "part_msdos", "fat", "iso9660", "search", "search_fs_uuid", "normal", "configfile", "linux",
    "echo", "test", "regexp", "loadenv", "serial", "terminal", "terminfo", "sleep", "halt", "reboot",
    "cat", "ls",
]
MODULES = {
    "i386-pc": [*_COMMON_MODULES, "biosdisk", "all_video"],
    # smbios names the board (U-Boot fills SMBIOS from the device tree); fdt has devicetree.
    "arm64-efi": [*_COMMON_MODULES, "efi_gop", "smbios", "fdt"],
}
# GRUB's boot.img reads core.img from sector 1 (its default), which is where we put it.
BOOT_CODE_SIZE = 440
CORE_OFFSET = layout.SECTOR


def early_config(image_id: str) -> str:
    return (
        f"search --no-floppy --fs-uuid --set=root {layout.fat_serial(image_id)}\n"
        f"set prefix=($root)/{layout.GRUB_DIR}\n"
        f"configfile ($root)/{layout.GRUB_CFG_PATH}\n"
    )


def default_modes(image_id: str) -> dict[str, str]:
    return {m: bootargs.mode_args(image_id, m, "50%") for m in layout.MODES}


FACTORY_RESET_TITLE = "Factory reset (asks for confirmation)"
FACTORY_RESET_NO = "No: boot the factory kernel without a reset"
FACTORY_RESET_YES = "Yes: discard every change made to this system (snapshots are kept)"

MODE_TITLES = {layout.MODE_PERSISTENT: "persistent mode", layout.MODE_RAM: "RAM mode",
               layout.MODE_RAM_PATHS: "RAM mode with persistent paths"}


def grub_cfg(image_id: str, cmdline: str, timeout: int, console: str,
             board_dtbs: tuple[tuple[str, str], ...] = (), default_mode: str = layout.MODE_PERSISTENT,
             modes: dict[str, str] | None = None) -> str:
    """The menu on p1. ``console`` is the kernel's console arguments.

    Boot counting: the order and the tries left for its first entry live in grubenv. Every run
    of this menu counts one try down before booting; when none is left, the first entry is
    dropped (a kernel that never came up, or never marked itself good), so the next slot, and at
    last the factory kernel on p2, boots without anyone at the console. An entry whose files
    cannot even be loaded falls through to the rest of the order at once (GRUB's fallback).

    ``board_dtbs`` (arm64): pairs of a regular expression on the SMBIOS product name and a device
    tree path; on a board that matches, every entry loads that device tree from its own partition,
    so a kernel in a slot boots with the device trees of its own version.

    Boot modes: ``modes`` maps each of layout.MODES to its kernel arguments; the mode is grubenv's
    ENV_MODE (``default_mode`` when unset). In the RAM modes, no try is counted while the boot
    order is the one the last good boot confirmed (ENV_CONFIRMED): such a boot writes nothing to
    the card. Entries after the numbered ones boot the order's first entry once in another mode.
    """
    modes = modes or default_modes(image_id)
    titles = {layout.ENTRY_SLOT["a"]: ("liveng", layout.Role.SLOT_A),
              layout.ENTRY_SLOT["b"]: ("liveng (kernel slot B)", layout.Role.SLOT_B),
              layout.ENTRY_FACTORY: ("liveng factory kernel (system partition)", layout.Role.SYSTEM)}
    # Menu order is layout.ENTRIES: the numbers in grubenv's order are positions in it.
    entries = [(titles[e][0], e, layout.partition(titles[e][1]).number) for e in layout.ENTRIES]
    order, tries = layout.ENV_ORDER, layout.ENV_TRIES
    mode, confirmed = layout.ENV_MODE, layout.ENV_CONFIRMED
    countdown = [f"{'if' if n == layout.TRIES else 'elif'} [ \"${tries}\" = {n} ]; then set {tries}={n - 1}"
                 for n in range(layout.TRIES, 0, -1)]
    # Anything else but 0 (a damaged value) counts as a fresh start, so it cannot loop for ever.
    countdown += [f"elif [ \"${tries}\" != 0 ]; then set {tries}={layout.TRIES - 1}", "fi"]
    # The PC's serial port is GRUB's own; on arm64 the firmware's console already is the serial one.
    terminal = ["serial --unit=0 --speed=115200", "terminal_input console serial",
                "terminal_output console serial"] if "ttyS0" in console else []
    lines = [
        "# liveng boot menu. Written by liveng build; kernel updates change only the slots and grubenv.",
        f"set liveng_id={image_id}",
        f"set timeout={timeout}",
        *terminal,
        # $root is p1 of the disk GRUB was started from, e.g. hd0,msdos1: keep the disk part.
        "regexp --set=1:liveng_disk '^([^,]+),' \"$root\"",
        f"set liveng_env=($liveng_disk,msdos1)/{layout.GRUBENV_PATH}",
        f"set liveng_env_bak=($liveng_disk,msdos1)/{layout.GRUBENV_BACKUP_PATH}",
        f"set {order}=\"{layout.INITIAL_ORDER}\"",
        f"set {tries}={layout.TRIES}",
        f"set {mode}={default_mode}",
        f"set {confirmed}=",
        # Two copies (layout.GRUBENV_BACKUP_PATH): the backup first, then the primary, so a valid
        # primary wins; load_env of a damaged or missing file fails and leaves the values as they are.
        f"load_env --file $liveng_env_bak {order} {tries} {mode} {confirmed}",
        f"load_env --file $liveng_env {order} {tries} {mode} {confirmed}",
        *_mode_selection(modes),
        "set liveng_count=yes",
        f"if [ \"${mode}\" != {layout.MODE_PERSISTENT} ]; then",
        f"    if [ \"${confirmed}\" = \"${order}\" ]; then set liveng_count=no; fi",
        "fi",
        "if [ \"$liveng_count\" = yes ]; then",
        *(f"    {line}" for line in [
            f"if [ \"${tries}\" = 0 ]; then",
            f"    if regexp --set=1:{order} '^[^ ]+ (.+)$' \"${order}\"; then set {tries}={layout.TRIES}; fi",
            "fi",
            *countdown,
            *_save_env(),
        ]),
        "fi",
        f"regexp --set=1:default --set=2:fallback '^([^ ]+) ?(.*)$' \"${order}\"",
        f"set liveng_cmdline=\"{' '.join(a for a in (cmdline, console) if a)}\"",
        *_board_detection(board_dtbs),
        *_head_partition(),
        f"export liveng_id liveng_disk liveng_cmdline liveng_dtb liveng_env liveng_env_bak liveng_margs {mode} "
        "liveng_head liveng_head_part",
        "",
    ]
    for title, entry_id, number in entries:
        lines += [
            f"menuentry '{title}' --id {entry_id} {{",
            f"    set root=($liveng_disk,msdos{number})",
            *(_load_dtb() if board_dtbs else []),
            f"    linux /{layout.KERNEL_PATH} $liveng_cmdline $liveng_margs {layout.KERNEL_ARG_BOOT}={entry_id}"
            + (" $liveng_dtb_arg" if board_dtbs else ""),
            f"    initrd /{layout.INITRD_PATH}",
            "}",
        ]
    lines += factory_reset_entry(bool(board_dtbs))
    for name in layout.MODES:
        lines += [
            f"menuentry 'liveng, {MODE_TITLES[name]} (this boot only)' --id mode-{name} {{",
            f"    set liveng_margs=\"{modes[name]}\"",
            "    set root=($liveng_disk,$liveng_head_part)",
            *(_load_dtb() if board_dtbs else []),
            f"    linux /{layout.KERNEL_PATH} $liveng_cmdline $liveng_margs {layout.KERNEL_ARG_BOOT}=$liveng_head"
            + (" $liveng_dtb_arg" if board_dtbs else ""),
            f"    initrd /{layout.INITRD_PATH}",
            "}",
        ]
    return "\n".join(lines) + "\n"


def _save_env() -> list[str]:
    """The primary first, then the backup (the device writes in the same order). save_env refuses
    a damaged or missing file, so the count goes on in the other copy until the device repairs it."""
    names = f"{layout.ENV_ORDER} {layout.ENV_TRIES}"
    return [f"save_env --file $liveng_env {names}", f"save_env --file $liveng_env_bak {names}"]


def _mode_selection(modes: dict[str, str]) -> list[str]:
    # Anything but a known mode (a damaged or hand-edited grubenv) boots persistent.
    lines = []
    for i, name in enumerate(m for m in layout.MODES if m != layout.MODE_PERSISTENT):
        lines.append(f"{'if' if i == 0 else 'elif'} [ \"${layout.ENV_MODE}\" = {name} ]; then "
                     f"set liveng_margs=\"{modes[name]}\"")
    lines += [f"else set {layout.ENV_MODE}={layout.MODE_PERSISTENT}; "
              f"set liveng_margs=\"{modes[layout.MODE_PERSISTENT]}\"", "fi"]
    return lines


def _head_partition() -> list[str]:
    """The partition and name of the boot order's first entry ($default), for the one-boot mode entries."""
    lines = []
    for i, entry in enumerate(layout.ENTRIES):
        role = {layout.ENTRY_SLOT["a"]: layout.Role.SLOT_A, layout.ENTRY_SLOT["b"]: layout.Role.SLOT_B,
                layout.ENTRY_FACTORY: layout.Role.SYSTEM}[entry]
        number = layout.partition(role).number
        lines.append(f"{'if' if i == 0 else 'elif'} [ \"$default\" = {i} ]; then "
                     f"set liveng_head={entry}; set liveng_head_part=msdos{number}")
    lines += [f"else set liveng_head={layout.ENTRY_FACTORY}; "
              f"set liveng_head_part=msdos{layout.partition(layout.Role.SYSTEM).number}", "fi"]
    return lines


def factory_reset_entry(load_dtb: bool = False) -> list[str]:
    """A submenu after the numbered entries (so it never shifts them, nor is in the boot order).

    The confirmation is a choice between two entries, on the screen and the serial console alike
    (Debian's signed GRUB has no ``read``); the submenu has no timeout, so only a person picks. "Yes"
    resets: it boots the factory kernel, whose modules are the only ones left in a pristine system,
    and the boot order then points at it until the next kernel update; "No" boots the factory
    kernel as it is.
    """
    order, tries = layout.ENV_ORDER, layout.ENV_TRIES
    factory = layout.ENTRIES.index(layout.ENTRY_FACTORY)
    system = layout.partition(layout.Role.SYSTEM).number

    def boot(reset: str) -> list[str]:
        return [f"        set root=($liveng_disk,msdos{system})",
                *(f"    {line}" for line in (_load_dtb() if load_dtb else [])),
                f"        linux /{layout.KERNEL_PATH} $liveng_cmdline $liveng_margs "
                f"{layout.KERNEL_ARG_BOOT}={layout.ENTRY_FACTORY} {layout.KERNEL_ARG_RESET}={reset}"
                + (" $liveng_dtb_arg" if load_dtb else ""),
                f"        initrd /{layout.INITRD_PATH}"]

    return [
        f"submenu '{FACTORY_RESET_TITLE}' --id {layout.ENTRY_FACTORY_RESET} {{",
        f"    menuentry '{FACTORY_RESET_NO}' --id {layout.ENTRY_FACTORY_RESET}-no {{",
        *boot("no"),
        "    }",
        f"    menuentry '{FACTORY_RESET_YES}' --id {layout.ENTRY_FACTORY_RESET}-yes {{",
        f"        set {order}={factory}",
        f"        set {tries}={layout.TRIES}",
        *(f"        {line}" for line in _save_env()),
        *boot("yes"),
        "    }",
        "}",
    ]


def _load_dtb() -> list[str]:
    # The kernel is told which device tree GRUB loaded (none: the firmware's), for liveng status and tests.
    return ["    set liveng_dtb_arg=",
            "    if [ -n \"$liveng_dtb\" ]; then",
            f"        if devicetree /$liveng_dtb; then set liveng_dtb_arg={layout.KERNEL_ARG_DTB}=$liveng_dtb; fi",
            "    fi"]


def _board_detection(board_dtbs: tuple[tuple[str, str], ...]) -> list[str]:
    if not board_dtbs:
        return ["set liveng_dtb="]
    lines = ["set liveng_dtb=", "set liveng_board=",
             "smbios --type 1 --get-string 5 --set liveng_board"]
    for i, (pattern, dtb) in enumerate(board_dtbs):
        lines.append(f"{'if' if i == 0 else 'elif'} regexp '{pattern}' \"$liveng_board\"; then "
                     f"set liveng_dtb={dtb}")
    # Any other board keeps the device tree its firmware passed (or ACPI on a UEFI server).
    lines.append("fi")
    return lines


def check_host() -> list[str]:
    """What is missing on the host to make PC GRUB images (the BIOS one; the UEFI one is Debian's signed GRUB)."""
    if not (GRUB_LIB / "i386-pc" / "linux.mod").exists():
        return [f"{GRUB_LIB / 'i386-pc'} (install grub-pc-bin)"]
    return []


def mkimage(platform: str, out: Path, early_cfg: Path, moddir: Path | None = None) -> None:
    moddir = moddir or GRUB_LIB / platform
    if not moddir.is_dir():
        raise PreflightError(f"{moddir} is missing: install the GRUB package for {platform}")
    run(["grub-mkimage", "-d", moddir, "-O", platform, "-o", out, "-c", early_cfg, "-p", f"/{layout.GRUB_DIR}",
         *MODULES[platform]])


def make_bios(workdir: Path, image_id: str) -> Path:
    """core.img for the MBR gap (the UEFI boot files come from Debian's signed packages: signed.py)."""
    early = workdir / "grub-early.cfg"
    early.write_text(early_config(image_id))
    core = workdir / "core.img"
    mkimage("i386-pc", core, early)
    return core


def make_arm64(workdir: Path, image_id: str, efi_dir: Path, moddir: Path) -> None:
    """BOOTAA64.EFI into ``efi_dir``, from the arm64-efi modules in ``moddir`` (grub-mkimage runs natively)."""
    early = workdir / "grub-early.cfg"
    early.write_text(early_config(image_id))
    efi_dir.mkdir(parents=True, exist_ok=True)
    mkimage("arm64-efi", efi_dir / "BOOTAA64.EFI", early, moddir)


def install_bios(image_fd: int, core: Path, first_partition_start: int) -> None:
    """Put GRUB's boot code in the MBR (keeping the partition table) and core.img behind it."""
    core_bytes = core.read_bytes()
    if CORE_OFFSET + len(core_bytes) > first_partition_start:
        raise PreflightError(f"GRUB core.img is {len(core_bytes)} bytes and does not fit before the first partition")
    boot = (GRUB_LIB / "i386-pc" / "boot.img").read_bytes()
    os.pwrite(image_fd, boot[:BOOT_CODE_SIZE], 0)
    os.pwrite(image_fd, core_bytes, CORE_OFFSET)
