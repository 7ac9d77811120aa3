"""UEFI Secure Boot on the running machine: is it on, and would shim and GRUB start a given kernel?

Under Secure Boot, GRUB asks shim to check every kernel; shim accepts one signed by a certificate
in the firmware's db, in its own list of Machine Owner Keys, or its built-in vendor certificate
(Debian's CA, which shim also puts into the MOK list it hands to the OS). The OS sees the firmware's
variables under /sys/firmware/efi: db as an EFI variable, shim's list as MokListRT (Linux exposes
it under mok-variables; older kernels only as EFI variables). The signature check itself is
sbverify's (sbsigntool), once per trusted certificate.
"""

from __future__ import annotations

import base64
import contextlib
import tempfile
import uuid
from pathlib import Path

from liveng.device.runner import DeviceError, run

EFIVARS = Path("/sys/firmware/efi/efivars")
MOK_VARIABLES = Path("/sys/firmware/efi/mok-variables")
GLOBAL_GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"  # EFI_GLOBAL_VARIABLE: SecureBoot
SECURITY_DB_GUID = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"  # EFI_IMAGE_SECURITY_DATABASE_GUID: db
SHIM_LOCK_GUID = "605dab50-e046-4300-abb6-3dd810dd8b23"  # shim's variables: MokListRT
CERT_X509 = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")  # EFI_CERT_X509_GUID
ATTRIBUTES = 4  # an efivarfs file starts with the variable's 32-bit attributes


def enabled(efivars: Path = EFIVARS) -> bool:
    """Whether the firmware enforces Secure Boot on this boot (False on a BIOS boot)."""
    try:
        data = (efivars / f"SecureBoot-{GLOBAL_GUID}").read_bytes()
    except OSError:
        return False
    return len(data) > ATTRIBUTES and data[ATTRIBUTES] == 1


def x509_certificates(signature_lists: bytes) -> list[bytes]:
    """The X.509 certificates (DER) in a sequence of EFI_SIGNATURE_LISTs (UEFI spec 32.4.1);
    hashes and other kinds of entry are skipped. A malformed list ends the walk."""
    certs, pos = [], 0
    while pos + 28 <= len(signature_lists):
        kind = uuid.UUID(bytes_le=signature_lists[pos:pos + 16])
        list_size = int.from_bytes(signature_lists[pos + 16:pos + 20], "little")
        header_size = int.from_bytes(signature_lists[pos + 20:pos + 24], "little")
        entry_size = int.from_bytes(signature_lists[pos + 24:pos + 28], "little")
        end = pos + list_size
        if list_size < 28 + header_size or end > len(signature_lists) or entry_size <= 16:
            break
        if kind == CERT_X509:
            entry = pos + 28 + header_size
            while entry + entry_size <= end:
                certs.append(signature_lists[entry + 16:entry + entry_size])  # after the owner's GUID
                entry += entry_size
        pos = end
    return certs


def _variable(efivars: Path, name: str) -> bytes:
    with contextlib.suppress(OSError):
        return (efivars / name).read_bytes()[ATTRIBUTES:]
    return b""


def trusted_certificates(efivars: Path = EFIVARS, mok_variables: Path = MOK_VARIABLES) -> list[bytes]:
    """The certificates shim accepts kernels by: the firmware's db and shim's MOK list."""
    lists = _variable(efivars, f"db-{SECURITY_DB_GUID}")
    try:
        lists += (mok_variables / "MokListRT").read_bytes()
    except OSError:
        # Without the config table in sysfs: the EFI variables, split into MokListRT, MokListRT1...
        lists += _variable(efivars, f"MokListRT-{SHIM_LOCK_GUID}")
        part = 1
        while more := _variable(efivars, f"MokListRT{part}-{SHIM_LOCK_GUID}"):
            lists += more
            part += 1
    return x509_certificates(lists)


def pem(der: bytes) -> str:
    body = base64.b64encode(der).decode()
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def signed_by(kernel: Path, certificates: list[bytes]) -> bool:
    """Whether sbverify finds ``kernel``'s signature valid for one of ``certificates``."""
    with tempfile.TemporaryDirectory(prefix="liveng-sb-") as tmp:
        for i, der in enumerate(certificates):
            cert = Path(tmp) / f"trusted-{i}.pem"
            cert.write_text(pem(der))
            try:
                run(["sbverify", "--cert", str(cert), str(kernel)])
            except DeviceError as exc:
                if "is not installed" in str(exc):
                    raise
                continue
            return True
    return False


NOT_TRUSTED = "Secure Boot is on and it is not signed by a key this machine trusts (the firmware's db or a MOK)"


def refusal(kernel: Path) -> str | None:
    """Why shim would refuse ``kernel`` on this machine now (NOT_TRUSTED when it certainly would),
    or None when it would start it, or Secure Boot is off."""
    if not enabled():
        return None
    certificates = trusted_certificates()
    if not certificates:
        return "Secure Boot is on but no trusted certificate could be read from the firmware's variables"
    try:
        if signed_by(kernel, certificates):
            return None
    except DeviceError:
        return "Secure Boot is on and sbverify (package sbsigntool) is missing, so the signature cannot be checked"
    return NOT_TRUSTED
