"""Getting an update bundle onto the device and checking it before anything trusts it.

`liveng update` calls, in this order: channel_index (the signed index names the newest bundle),
download (resumable, into a directory on p7), open_bundle (footer, then gpgv on the metadata, only
then the metadata itself), check_system (the system's SHA-256 against the signed one) and
cut_to_system (the bundle becomes the plain ISO). Standard library only, gpgv through the runner:
the device has Python 3 but no pip packages.

URLs are http://, https://, file:// or plain paths. A local file is never copied: download returns
its own path, and the caller decides whether to copy it (cut_to_system would cut the user's file).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import shutil
import ssl
import stat
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from liveng import bundle, layout
from liveng.boundedread import ReadError, read_regular
from liveng.device import runner
from liveng.device.progress import Progress, Throttled
from liveng.device.runner import DeviceError
from liveng.durable import fsync_dir

TIMEOUT = 30.0  # seconds a connect or a read may stall before it counts as a dropped connection
RETRIES = 5  # consecutive attempts that bring no new byte before giving up
RETRY_DELAY = 2.0  # seconds before the first retry, doubled with each attempt that brings nothing
READ_SIZE = 1024 * 1024
HASH_CHUNK = 4 * layout.MiB
SYNC_EVERY = 64 * layout.MiB  # a power cut loses at most this much of a download
INDEX_CAP = 64 * 1024
NO_KEYRING = "this image accepts no update bundles: its recipe names no [update] keyring"


class _Dropped(Exception):
    """The transfer broke off in a way a retry may cure; what is on disk is kept."""


def local_path(url: str) -> Path | None:
    """The file a file:// URL or a plain path names; None for http(s)."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        return None
    if parts.scheme == "file" and parts.netloc in ("", "localhost"):
        return Path(unquote(parts.path))
    if parts.scheme == "":
        return Path(url)
    raise DeviceError(f"{url}: liveng reads http://, https:// and file:// URLs or paths: correct the URL")


def _retry_pause(failures: int, url: str, exc: _Dropped, kept: str = "") -> None:
    if failures > RETRIES:
        raise DeviceError(f"cannot download {url}: {exc} ({failures} tries); check the network and the URL, "
                          f"then try again{kept}") from None
    time.sleep(min(RETRY_DELAY * 2 ** (failures - 1), 30.0))


def _open(url: str, start: int) -> http.client.HTTPResponse:
    """The server's answer; HTTPError only for a 416 to a range request (download reads it)."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=TIMEOUT)
        return response
    except urllib.error.HTTPError as exc:
        if exc.code >= 500:  # a busy or restarting server: worth another try
            raise _Dropped(f"the server answered {exc.code} {exc.reason}") from None
        if exc.code == 416 and start:
            raise
        raise DeviceError(f"cannot download {url}: the server answered {exc.code} {exc.reason}; "
                          "check that the URL is right and the server serves it") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLCertVerificationError):  # no retry cures it
            # A Raspberry Pi has no clock of its own: before NTP a valid certificate looks not yet valid.
            raise DeviceError(f"cannot download {url}: the server's certificate is refused "
                              f"({exc.reason.verify_message}); check the device's clock (timedatectl) "
                              "and the URL") from None
        raise _Dropped(str(exc.reason)) from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Dropped(str(exc) or type(exc).__name__) from None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def download(url: str, dest: Path, expected_size: int | None = None, progress: Progress | None = None) -> Path:
    """The file at ``url`` in ``dest`` (a .part file on p7), resuming what ``dest`` already holds;
    with ``expected_size`` (the channel index's) it must end at exactly that size.

    A local URL or path is not copied: its own path is returned. No progress: print_progress.
    DeviceError names the URL and what went wrong."""
    local = local_path(url)
    if local is not None:
        try:
            info = local.stat()
        except OSError as exc:
            raise DeviceError(f"{local}: cannot be read ({exc.strerror}): check the path") from None
        if not stat.S_ISREG(info.st_mode) or (expected_size is not None and info.st_size != expected_size):
            size = "" if expected_size is None else f" of {expected_size} bytes"
            raise DeviceError(f"{local}: not a regular file{size}, not the bundle meant")
        return local
    failures = 0
    with Throttled(progress, f"downloading {url.rstrip('/').rsplit('/', 1)[-1]}") as report:
        while True:
            before = _size(dest)
            try:
                if _download_once(url, dest, expected_size, report):
                    return dest
            except _Dropped as exc:
                # Only attempts that bring nothing count: a flaky link that always moves on finishes.
                failures = 1 if _size(dest) > before else failures + 1
                _retry_pause(failures, url, exc, f"; the {_size(dest)} bytes received are kept in {dest}")


def _download_once(url: str, dest: Path, expected: int | None, report: Throttled) -> bool:
    """One request; True when ``dest`` is complete, False to start again from byte 0 at once."""
    have = _size(dest)
    if expected is not None and have > expected:
        have = 0  # longer than the file meant: not a piece of it
    try:
        response = _open(url, have)
    except urllib.error.HTTPError as exc:  # 416: nothing after byte ``have``
        match = re.fullmatch(r"bytes \*/(\d+)", exc.headers.get("Content-Range") or "")
        if match and int(match[1]) == have and expected in (None, have):
            report(have, have, final=True)
            return True
        os.truncate(dest, 0)  # the server's file is shorter than ours: ours is of another file
        return False
    with response:
        if response.status == 206:
            match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range") or "")
            if not match or int(match[1]) != have:
                os.truncate(dest, 0)  # a range we did not ask for: trust nothing, start over
                return False
            total = None if match[2] == "*" else int(match[2])
        elif response.status == 200:  # the server ignores ranges (or we asked none): from the start
            have, length = 0, response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        else:
            raise DeviceError(f"cannot download {url}: the server answered {response.status} {response.reason}")
        if expected is not None and total is not None and total != expected:
            raise DeviceError(f"cannot download {url}: the server has {total} bytes, not the {expected} the channel "
                              "index names (the channel is changing or inconsistent); try again later")
        _receive(response, url, dest, have, expected if total is None else total, report)
    return True


def _receive(response: http.client.HTTPResponse, url: str, dest: Path, done: int, total: int | None,
             report: Throttled) -> None:
    created = not dest.exists()
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DeviceError(f"cannot write {dest}: {exc.strerror}") from None
    try:
        os.ftruncate(fd, done)  # anything past the resume point is of an earlier, different answer
        os.lseek(fd, done, os.SEEK_SET)
        if created:
            fsync_dir(dest.parent)
        synced = done
        report(done, total)
        while True:
            try:
                chunk = response.read(READ_SIZE)
            except (OSError, http.client.HTTPException) as exc:
                raise _Dropped(str(exc) or type(exc).__name__) from None
            if not chunk:
                break
            if total is not None and done + len(chunk) > total:
                raise DeviceError(f"cannot download {url}: the server sends more than the {total} bytes expected, "
                                  "so it is not the file meant; check the channel")
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
            done += len(chunk)
            if done - synced >= SYNC_EVERY:
                os.fsync(fd)
                synced = done
            report(done, total)
        if total is not None and done < total:
            raise _Dropped(f"the connection closed after {done} of {total} bytes")
        os.fsync(fd)
    except OSError as exc:
        raise DeviceError(f"cannot write {dest}: {exc.strerror}; free space on the persistence partition "
                          "(liveng status) and try again") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.fsync(fd)  # keep what arrived for the next attempt, even across a power cut
        raise
    finally:
        os.close(fd)
    report(done, done if total is None else total, final=True)


def fetch_small(url: str, cap: int) -> bytes:
    """A small file (an index, a signature) in memory, refused when larger than ``cap`` bytes."""
    local = local_path(url)
    if local is not None:
        try:
            return read_regular(local, cap)
        except ReadError as exc:
            raise DeviceError(f"{exc}; check the channel URL") from None
    failures = 0
    while True:
        try:
            with _open(url, 0) as response:
                data = response.read(cap + 1)
                if response.length and len(data) <= cap:  # read stops short, without an error, at a drop
                    raise _Dropped(f"the connection closed after {len(data)} bytes")
        except (OSError, http.client.HTTPException, _Dropped) as exc:
            failures += 1
            _retry_pause(failures, url, exc if isinstance(exc, _Dropped) else _Dropped(str(exc)))
            continue
        if len(data) > cap:
            raise DeviceError(f"{url}: larger than {cap} bytes, more than such a file can be; check the channel URL")
        return data


def verify_signature(data: bytes, signature: bytes, keyring: Path) -> str:
    """The fingerprint of the key (or subkey) that made ``signature`` over ``data``; DeviceError
    unless gpgv finds it good and made by a key of ``keyring`` (an absolute path)."""
    if not keyring.is_absolute():
        raise ValueError(f"{keyring}: gpgv takes a relative keyring name as one in its home directory")
    if not keyring.is_file():
        raise DeviceError(NO_KEYRING)
    if shutil.which("gpgv") is None:
        raise DeviceError("gpgv is not installed: this image cannot check update bundles (its recipe needs gpgv)")
    with tempfile.TemporaryDirectory(prefix="liveng-gpgv-") as tmp:
        sig_path, data_path = Path(tmp, "signature"), Path(tmp, "data")
        sig_path.write_bytes(signature)
        data_path.write_bytes(data)
        try:
            # --homedir: gpgv reads nothing of root's ~/.gnupg, the keyring alone decides.
            # --ignore-time-conflict: a Pi's clock may lag (no RTC, before NTP), so that a new key
            # looks made in the future, which gpgv would refuse; the time says nothing of who signed.
            status = runner.run(["gpgv", "--homedir", tmp, "--keyring", str(keyring), "--ignore-time-conflict",
                                 "--status-fd", "1", str(sig_path), str(data_path)])
        except DeviceError as exc:
            lines = str(exc).split("): ", 1)[-1].strip().splitlines()
            raise DeviceError(f"the signature is not made by a key this image accepts "
                              f"({lines[-1] if lines else exc})") from None
    words = [line.split() for line in status.splitlines() if line.startswith("[GNUPG:] ")]
    refused = {"BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "NO_PUBKEY"}
    bad = [w[1] for w in words if len(w) > 1 and w[1] in refused]
    valid = [w[2] for w in words if len(w) > 2 and w[1] == "VALIDSIG"]
    if bad or not valid:
        raise DeviceError("the signature is not made by a key this image accepts "
                          f"(gpgv: {' '.join(bad) or 'no VALIDSIG'})")
    return valid[0]


@dataclass(frozen=True)
class SignedBundle:
    meta: bundle.Metadata
    metadata: bytes  # the signed bytes, as the bundle holds them (layout.SYSTEM_META_NAME)
    signature: bytes  # (layout.SYSTEM_SIG_NAME)
    fingerprint: str  # of the key that signed


def open_signed_bundle(path: Path, keyring: Path) -> SignedBundle:
    """The checked metadata of the bundle ``path``, with its signed bytes and signature."""
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size < bundle.FOOTER_SIZE:
                raise bundle.BundleError("not a liveng update bundle (not a file, or too short)")
            f.seek(info.st_size - bundle.FOOTER_SIZE)
            footer = bundle.parse_footer(f.read(bundle.FOOTER_SIZE), info.st_size)
            f.seek(footer.metadata_offset)
            metadata = f.read(footer.metadata_size)
            signature = f.read(footer.signature_size)
    except OSError as exc:
        raise DeviceError(f"{path}: cannot be read ({exc.strerror})") from None
    except bundle.BundleError as exc:
        raise DeviceError(f"{path}: {exc}") from None
    fingerprint = verify_signature(metadata, signature, keyring)
    try:
        meta = bundle.parse_metadata(metadata)
        bundle.check_system_fits(meta, footer)
    except bundle.BundleError as exc:
        raise DeviceError(f"{path}: {exc}") from None
    return SignedBundle(meta, metadata, signature, fingerprint)


def open_bundle(path: Path, keyring: Path) -> bundle.Metadata:
    return open_signed_bundle(path, keyring).meta


def check_system(path: Path, meta: bundle.Metadata, progress: Progress | None = None) -> None:
    """The first meta.system_size bytes of ``path`` have the signed SHA-256, else DeviceError."""
    digest, done = hashlib.sha256(), 0
    with Throttled(progress, "checking the new system") as report:
        try:
            with open(path, "rb") as f:
                while done < meta.system_size and (chunk := f.read(min(HASH_CHUNK, meta.system_size - done))):
                    digest.update(chunk)
                    done += len(chunk)
                    report(done, meta.system_size)
        except OSError as exc:
            raise DeviceError(f"{path}: cannot be read ({exc.strerror})") from None
        if done != meta.system_size or digest.hexdigest() != meta.system_sha256:
            raise DeviceError("the bundle's system does not match its signed hash (damaged or altered): "
                              "nothing was written")
        report(done, done, final=True)


def cut_to_system(path: Path, meta: bundle.Metadata) -> None:
    """Drops padding, metadata, signature and footer: ``path`` becomes the system's ISO."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            # Truncating a shorter file would extend it with zeros: a system that was never checked.
            if os.fstat(fd).st_size < meta.system_size:
                raise DeviceError(f"{path}: shorter than the bundle's system; it was not checked")
            os.ftruncate(fd, meta.system_size)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise DeviceError(f"{path}: cannot be cut to the system ({exc.strerror})") from None


def channel_index(url: str, keyring: Path) -> tuple[bundle.Index, str]:
    """The channel's signed index and the URL of the bundle it names."""
    if keyring.is_absolute() and not keyring.is_file():
        raise DeviceError(NO_KEYRING)  # before any network: nothing fetched could be trusted
    base = url if url.endswith("/") else url + "/"
    index_url = urljoin(base, bundle.INDEX_NAME)
    raw = fetch_small(index_url, INDEX_CAP)
    signature = fetch_small(urljoin(base, bundle.INDEX_SIG_NAME), bundle.SIGNATURE_CAP)
    try:
        verify_signature(raw, signature, keyring)
        index = bundle.parse_index(raw)  # only once the signature is good
    except (DeviceError, bundle.BundleError) as exc:
        raise DeviceError(f"{index_url}: {exc}") from None
    return index, urljoin(base, index.bundle)
