"""Stand-ins for Debian's signed EFI binaries in offline tests: a PE image with GRUB's module area
("mods" section: struct grub_module_info64, then one header + ELF object per module, and the prefix)."""

from __future__ import annotations

import struct

OBJ_TYPE_ELF = 0
OBJ_TYPE_PREFIX = 3


def elf_module(name: str) -> bytes:
    """A relocatable ELF64 with just the two sections GRUB's module name lives in."""
    shstrtab = b"\0.shstrtab\0.modname\0"
    modname = name.encode() + b"\0"
    data_start = 64
    strtab_off, modname_off = data_start, data_start + len(shstrtab)
    shoff = modname_off + len(modname)
    shoff += -shoff % 8
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 1)
    sections = [struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
                struct.pack("<IIQQQQIIQQ", 1, 3, 0, 0, strtab_off, len(shstrtab), 0, 0, 1, 0),
                struct.pack("<IIQQQQIIQQ", 11, 1, 0, 0, modname_off, len(modname), 0, 0, 1, 0)]
    body = header + shstrtab + modname
    return body + bytes(shoff - len(body)) + b"".join(sections)


def grub_efi(modules: list[str], prefix: str = "/EFI/debian") -> bytes:
    objects = b""
    for name in modules:
        elf = elf_module(name)
        objects += struct.pack("<II", OBJ_TYPE_ELF, 8 + len(elf)) + elf
    pre = prefix.encode() + b"\0"
    pre += bytes(-len(pre) % 8)
    objects += struct.pack("<II", OBJ_TYPE_PREFIX, 8 + len(pre)) + pre
    mods = struct.pack("<IIQQ", 0x676D696D, 0, 24, 24 + len(objects)) + objects
    pe_off, table = 0x40, 0x40 + 24
    raw_ptr = table + 40
    dos = b"MZ" + bytes(0x3A) + struct.pack("<I", pe_off)
    coff = b"PE\0\0" + struct.pack("<HHIIIHH", 0x8664, 1, 0, 0, 0, 0, 0)
    section = struct.pack("<8sIIIIIIHHI", b"mods", len(mods), 0x1000, len(mods), raw_ptr, 0, 0, 0, 0, 0)
    return dos + coff + section + mods


# The modules of Debian's signed grubx64.efi in trixie (2.12-9+deb13u4), as read from the binary
# with liveng.host.bootloader.signed.image_contents: the stand-in the offline layout test builds with.
_TRIXIE_SIGNED = (
    "acpi afsplitter all_video archelp bitmap bitmap_scale boot btrfs bufio cat chain configfile cpuid crypto "
    "cryptodisk datetime disk diskfilter echo efi_gop efi_uga efifwsetup efinet ext2 extcmd f2fs fat font fshelp "
    "gcry_arcfour gcry_blowfish gcry_camellia gcry_cast5 gcry_crc gcry_des gcry_dsa gcry_idea gcry_md4 gcry_md5 "
    "gcry_rfc2268 gcry_rijndael gcry_rmd160 gcry_rsa gcry_seed gcry_serpent gcry_sha1 gcry_sha256 gcry_sha512 "
    "gcry_tiger gcry_twofish gcry_whirlpool gettext gfxmenu gfxterm gfxterm_background gzio halt help hfsplus "
    "iso9660 jfs jpeg json keystatus linux loadenv loopback ls lsefi lsefimmap lsefisystab lssal luks luks2 lvm "
    "lzopio mdraid09 mdraid1x memdisk minicmd mmap mpi net normal ntfs part_apple part_gpt part_msdos "
    "password_pbkdf2 pbkdf2 peimage pgp play png priority_queue probe procfs raid5rec raid6rec reboot regexp "
    "relocator search search_fs_file search_fs_uuid search_label serial setjmp sleep smbios squash4 terminal "
    "terminfo test tpm trig true video video_bochs video_cirrus video_colors video_fb xfs xzio zfs zfscrypt "
    "zfsinfo zstd"
)
TRIXIE_SIGNED_MODULES = _TRIXIE_SIGNED.split()
