"""UEFI boot of the PC image through Debian's signed shim and GRUB (Secure Boot on or off).

p1 holds them on the removable-media path, so no firmware boot entry is needed: EFI/BOOT/BOOTX64.EFI
is shim (signed by Microsoft's UEFI CA, carrying Debian's CA), grubx64.efi beside it is Debian's
signed GRUB (shim starts ``\\grubx64.efi`` from its own directory), mmx64.efi is MokManager (a
pending MOK enrolment needs it). No fbx64.efi: on a removable path shim would run it, and it writes
boot entries into the machine's NVRAM.

The signed GRUB is a fixed image: its modules are built in (insmod of any other is refused under
Secure Boot) and its prefix is /EFI/debian. Depending on the release it reads EFI/BOOT/grub.cfg (the
directory it was started from) or $prefix/grub.cfg: both get the same stub, which finds p1 by its
FAT serial (the image id) and reads the liveng menu, as the BIOS core.img does. The build checks
that every command of the stub and the menu is in a module built into that very binary.
"""

from __future__ import annotations

import shlex
import shutil
import struct
from pathlib import Path

from liveng import layout
from liveng.host.errors import BuildError

PACKAGES = ("shim-signed", "shim-helpers-amd64-signed", "grub-efi-amd64-signed")
SHIM = ("shim-signed", "usr/lib/shim/shimx64.efi.signed", "BOOTX64.EFI")
MOK_MANAGER = ("shim-helpers-amd64-signed", "usr/lib/shim/mmx64.efi.signed", "mmx64.efi")
GRUB = ("grub-efi-amd64-signed", "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed", "grubx64.efi")

# GRUB's own map of commands to the modules that provide them (the BIOS GRUB's, which the build
# uses anyway; the names are the same on every platform). Commands of GRUB's kernel are not in it.
COMMAND_LST = Path("/usr/lib/grub/i386-pc/command.lst")
KERNEL_COMMANDS = frozenset({"set", "unset", "ls", "insmod"})  # grub-core/kern/corecmd.c
# Script syntax, not commands: the word after one of these starts a command.
KEYWORDS = frozenset({"if", "then", "elif", "else", "fi", "for", "in", "do", "done", "while", "until", "!",
                      "{", "}", "function"})

# grub-core/kern/efi: the module area ("mods" section) starts with struct grub_module_info64.
MODULE_INFO_MAGIC = 0x676D696D  # "mimg"
OBJ_TYPE_ELF = 0
OBJ_TYPE_PREFIX = 3


def _sections(pe: bytes) -> dict[str, bytes]:
    if pe[:2] != b"MZ":
        raise ValueError("not a PE image (no MZ header)")
    (coff,) = struct.unpack_from("<I", pe, 0x3C)
    if pe[coff:coff + 4] != b"PE\0\0":
        raise ValueError("not a PE image (no PE signature)")
    count, opt_size = struct.unpack_from("<H", pe, coff + 6)[0], struct.unpack_from("<H", pe, coff + 20)[0]
    table = coff + 24 + opt_size
    out = {}
    for i in range(count):
        name, _vsize, _vaddr, raw_size, raw_ptr = struct.unpack_from("<8sIIII", pe, table + 40 * i)
        out[name.rstrip(b"\0").decode(errors="replace")] = pe[raw_ptr:raw_ptr + raw_size]
    return out


def _elf_modname(elf: bytes) -> str:
    """The module name GRUB stores in the ``.modname`` section of each module (ELF64, little endian)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise ValueError("a built-in module is not a 64-bit ELF object")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        return name, offset, size

    strtab = header(shstrndx)[1]
    for i in range(shnum):
        name, offset, size = header(i)
        if elf[strtab + name:elf.index(b"\0", strtab + name)] == b".modname":
            return elf[offset:offset + size].rstrip(b"\0").decode()
    raise ValueError("a built-in module has no .modname section")


def image_contents(pe: bytes) -> tuple[frozenset[str], str | None]:
    """The modules built into a GRUB EFI image, and its prefix (None if it has none)."""
    mods = _sections(pe).get("mods")
    if mods is None:
        raise ValueError("no 'mods' section: not a GRUB image")
    magic, _pad, offset, size = struct.unpack_from("<IIQQ", mods, 0)
    if magic != MODULE_INFO_MAGIC:
        raise ValueError(f"the 'mods' section does not start with GRUB's module info (magic {magic:#x})")
    names, prefix, pos = set(), None, offset
    while pos < size:
        kind, length = struct.unpack_from("<II", mods, pos)
        if length < 8:
            raise ValueError(f"a module header at {pos} has the length {length}")
        data = mods[pos + 8:pos + length]
        if kind == OBJ_TYPE_ELF:
            names.add(_elf_modname(data))
        elif kind == OBJ_TYPE_PREFIX:
            prefix = data.rstrip(b"\0").decode()
        pos += length
    return frozenset(names), prefix


def script_commands(script: str) -> set[str]:
    """Every command a GRUB script runs (its first words, after the syntax's keywords)."""
    found = set()
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";")
        lexer.whitespace_split = True
        words = list(lexer)
        start = True
        for word in words:
            if word == ";" or word in KEYWORDS:
                start = True
                continue
            if start and "=" not in word:
                found.add(word)
            start = False
    return found


def command_modules(command_lst: Path = COMMAND_LST) -> dict[str, str]:
    out = {}
    for line in command_lst.read_text().splitlines():
        name, sep, module = line.partition(":")
        if sep:
            out[name.strip().lstrip("*")] = module.strip()
    return out


def missing_commands(scripts: list[str], modules: frozenset[str] | set[str], commands: dict[str, str]) -> list[str]:
    """Commands of ``scripts`` that no module in ``modules`` provides, each with what is wrong."""
    problems = []
    for name in sorted(set().union(*(script_commands(s) for s in scripts))):
        if name in KERNEL_COMMANDS:
            continue
        module = commands.get(name)
        if module is None:
            problems.append(f"{name} (not a GRUB command)")
        elif module not in modules:
            problems.append(f"{name} (module {module} is not built in)")
    return problems


def stub_config(image_id: str) -> str:
    return (
        "# liveng: Debian's signed GRUB reads this; the menu is on the liveng disk's p1.\n"
        f"search --no-floppy --fs-uuid --set=root {layout.fat_serial(image_id)}\n"
        f"set prefix=($root)/{layout.GRUB_DIR}\n"
        f"configfile ($root)/{layout.GRUB_CFG_PATH}\n"
    )


def _asset(assets: dict[str, Path], package: str, rel: str) -> Path:
    path = assets[package] / rel
    if not path.is_file():
        raise BuildError(f"{package} has no {rel}: the package layout changed; liveng needs an update")
    return path


def populate(staging: Path, assets: dict[str, Path], image_id: str, menu: str) -> None:
    """shim, MokManager and the signed GRUB into p1's tree at ``staging``, with the config stubs.

    Refuses (BuildError) when the menu or the stub runs a command the signed GRUB does not have.
    """
    efi_boot = staging / layout.EFI_BOOT_DIR
    efi_boot.mkdir(parents=True, exist_ok=True)
    for package, rel, name in (SHIM, MOK_MANAGER, GRUB):
        shutil.copyfile(_asset(assets, package, rel), efi_boot / name)
    grub_efi = efi_boot / GRUB[2]
    try:
        modules, prefix = image_contents(grub_efi.read_bytes())
    except (ValueError, struct.error) as exc:
        raise BuildError(f"{GRUB[0]}: {GRUB[1]} cannot be read as a GRUB image ({exc}); liveng needs an update") \
            from None
    if not prefix or not prefix.startswith("/"):
        raise BuildError(f"{GRUB[0]}: {GRUB[1]} has no absolute prefix ({prefix!r}); liveng needs an update")
    stub = stub_config(image_id)
    missing = missing_commands([stub, menu], modules, command_modules())
    if missing:
        raise BuildError(f"the boot menu uses GRUB commands that {GRUB[0]} does not have built in: "
                         f"{', '.join(missing)}; liveng needs an update")
    for where in {efi_boot, staging / prefix.strip("/")}:
        where.mkdir(parents=True, exist_ok=True)
        (where / "grub.cfg").write_text(stub)
