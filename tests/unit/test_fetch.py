"""liveng/device/fetch.py against real gpg signatures, a real gpgv and a real HTTP server (in a thread)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.server
import random
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from liveng import bundle, layout
from liveng.device import fetch
from liveng.device.runner import DeviceError

SIGNER = "t@example.org"
OTHER = "o@example.org"
FUTURE = "f@example.org"  # a key made in 2099: as a device whose clock lags sees a new key


def gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--yes", "--passphrase", "", "--pinentry-mode",
                           "loopback", *args], input=data, capture_output=True, check=True).stdout


@dataclass(frozen=True)
class Keys:
    home: Path
    keyring: Path  # what the image accepts: SIGNER's key only
    fingerprint: str
    future_keyring: Path  # FUTURE's key only

    def sign(self, data: bytes, who: str = SIGNER, detached: bool = True, when: str | None = None) -> bytes:
        faked = ["--faked-system-time", when] if when else []
        return gpg(self.home, *faked, "--local-user", who, "--detach-sign" if detached else "--sign", data=data)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    for uid in (f"test <{SIGNER}>", f"other <{OTHER}>"):
        gpg(home, "--quick-gen-key", uid, "ed25519", "sign", "never")
    gpg(home, "--faked-system-time", "20990101T000000", "--quick-gen-key", f"future <{FUTURE}>", "ed25519", "sign",
        "never")
    keyring, future_keyring = home / "update-keyring.gpg", home / "future-keyring.gpg"
    keyring.write_bytes(gpg(home, "--export", SIGNER))
    future_keyring.write_bytes(gpg(home, "--export", FUTURE))
    listing = gpg(home, "--with-colons", "--list-keys", SIGNER).decode()
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    yield Keys(home, keyring, fingerprint, future_keyring)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)


def system_bytes(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def metadata_for(system: bytes) -> bundle.Metadata:
    return bundle.Metadata(version="2.0", target="pc", arch="amd64", layout=2, built="2025-01-01T00:00:00Z",
                           kernel="6.12.0-1-amd64", system_size=len(system),
                           system_sha256=hashlib.sha256(system).hexdigest(),
                           files={p: "0" * 64 for p in (layout.KERNEL_PATH, layout.INITRD_PATH, layout.SQUASHFS_PATH)})


def make_bundle(path: Path, keys: Keys, system: bytes, who: str = SIGNER,
                meta: bundle.Metadata | None = None) -> bundle.Metadata:
    meta = meta or metadata_for(system)
    raw = meta.to_json()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(system + bundle.trailer(len(system), raw, keys.sign(raw, who)))
    return meta


@dataclass
class Served:
    """What the test server does, and what it did."""

    root: Path
    ranges: bool = True  # honours Range (False: answers 200 with the whole file, as many servers do)
    length: bool = True  # sends Content-Length (False: the body ends when the connection closes)
    drop_after: int | None = None  # closes the connection after this many bytes of each answer
    sent: int = 0  # body bytes written, over all answers
    requests: list[str | None] = field(default_factory=list)  # each request's Range header


class Server(http.server.ThreadingHTTPServer):
    served: Served

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that stop reading or refuse the certificate are what some tests are about


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        served = self.server.served
        wanted = self.headers.get("Range")
        served.requests.append(wanted)
        path = served.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
        if match and served.ranges:
            start = int(match[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if served.length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if served.drop_after is not None:
            body = body[:served.drop_after]
        self.close_connection = True
        # Counted first: the client can have read the last byte and the test checked the count
        # before this thread runs again (seen once, with two QEMU guests loading the machine).
        served.sent += len(body)
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(root: Path, tls: ssl.SSLContext | None = None) -> Iterator[tuple[Served, str]]:
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.served = Served(root)
    root.mkdir()
    if tls:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.served, f"{'https' if tls else 'http'}://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Served, str]]:
    """The served configuration (its root is tmp_path/www) and the server's base URL."""
    monkeypatch.setattr(fetch, "RETRY_DELAY", 0.0)
    with serving(tmp_path / "www") as result:
        yield result


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_good_bundle_is_downloaded_checked_and_cut(keys: Keys, server: tuple[Served, str], tmp_path: Path) -> None:
    served, base = server
    system = system_bytes(3 * 4096 + 123)
    meta = make_bundle(served.root / "2.0.bundle", keys, system)
    size = (served.root / "2.0.bundle").stat().st_size
    calls: list[tuple[int, int | None]] = []
    dest = tmp_path / "incoming/2.0.bundle.part"
    dest.parent.mkdir()
    assert fetch.download(base + "2.0.bundle", dest, size, lambda d, t: calls.append((d, t))) == dest
    assert sha(dest) == sha(served.root / "2.0.bundle")
    assert calls[-1] == (size, size) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    signed = fetch.open_signed_bundle(dest, keys.keyring)
    assert signed.meta == meta and fetch.open_bundle(dest, keys.keyring) == meta
    assert signed.metadata == meta.to_json() and signed.fingerprint == keys.fingerprint
    fetch.check_system(dest, meta, lambda d, t: None)
    fetch.cut_to_system(dest, meta)
    assert dest.read_bytes() == system


def test_bundle_signed_by_another_key_is_refused(keys: Keys, tmp_path: Path) -> None:
    make_bundle(tmp_path / "b", keys, system_bytes(5000), who=OTHER)
    with pytest.raises(DeviceError, match="not made by a key this image accepts"):
        fetch.open_bundle(tmp_path / "b", keys.keyring)


@pytest.mark.parametrize("cut", [1, 200, 4096])
def test_truncated_bundle_is_refused(keys: Keys, tmp_path: Path, cut: int) -> None:
    path = tmp_path / "b"
    make_bundle(path, keys, system_bytes(5000))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - cut)
    with pytest.raises(DeviceError, match="no bundle footer"):
        fetch.open_bundle(path, keys.keyring)


def test_system_altered_after_signing_is_refused(keys: Keys, tmp_path: Path) -> None:
    path = tmp_path / "b"
    meta = make_bundle(path, keys, system_bytes(3 * 4096))
    data = bytearray(path.read_bytes())
    data[4097] ^= 0x01
    path.write_bytes(bytes(data))
    assert fetch.open_bundle(path, keys.keyring) == meta  # the signature covers the metadata only
    with pytest.raises(DeviceError, match="does not match its signed hash"):
        fetch.check_system(path, meta, lambda d, t: None)
    assert path.read_bytes() == bytes(data)


@pytest.mark.parametrize("change", ["version", "garbage"])
def test_metadata_altered_after_signing_is_refused_before_it_is_read(keys: Keys, tmp_path: Path, change: str) -> None:
    path = tmp_path / "b"
    meta = make_bundle(path, keys, system_bytes(5000))
    data = path.read_bytes()
    raw = meta.to_json()
    start = data.index(raw)
    # Same length, so the footer still fits: only the signature can tell.
    altered = raw.replace(b'"2.0"', b'"9.0"') if change == "version" else b"x" * len(raw)
    path.write_bytes(data[:start] + altered + data[start + len(raw):])
    with pytest.raises(DeviceError, match="not made by a key this image accepts"):
        fetch.open_bundle(path, keys.keyring)


def test_signed_metadata_that_does_not_fit_the_footer_is_refused(keys: Keys, tmp_path: Path) -> None:
    system = system_bytes(5000)
    meta = dataclasses.replace(metadata_for(system), system_size=5000 + 4096)
    raw = meta.to_json()
    (tmp_path / "b").write_bytes(system + bundle.trailer(len(system), raw, keys.sign(raw)))
    with pytest.raises(DeviceError, match="does not match its signed metadata"):
        fetch.open_bundle(tmp_path / "b", keys.keyring)


def test_opaque_signature_is_not_taken_for_a_detached_one(keys: Keys, tmp_path: Path) -> None:
    # A signed message carries its own data; gpgv must not accept it as a signature over ours.
    with pytest.raises(DeviceError, match="not made by a key this image accepts"):
        fetch.verify_signature(b"ours", keys.sign(b"theirs", detached=False), keys.keyring)
    assert fetch.verify_signature(b"ours", keys.sign(b"ours"), keys.keyring) == keys.fingerprint


def test_key_and_signature_from_the_future_are_good(keys: Keys) -> None:
    # As on a Raspberry Pi whose clock lags (no RTC, no NTP yet): key and signature look made later.
    signature = keys.sign(b"ours", FUTURE, when="20990102T000000")
    assert re.fullmatch("[0-9A-F]{40}", fetch.verify_signature(b"ours", signature, keys.future_keyring))
    with pytest.raises(DeviceError, match="not made by a key this image accepts"):
        fetch.verify_signature(b"ours", signature, keys.keyring)


def test_keyring_missing_or_relative(keys: Keys, server: tuple[Served, str], tmp_path: Path) -> None:
    served, base = server
    with pytest.raises(DeviceError, match=r"accepts no update bundles: its recipe names no \[update\] keyring"):
        fetch.verify_signature(b"x", keys.sign(b"x"), tmp_path / "none.gpg")
    with pytest.raises(DeviceError, match="accepts no update bundles"):
        fetch.channel_index(base, tmp_path / "none.gpg")
    assert served.requests == []  # nothing is fetched that nothing could check
    with pytest.raises(ValueError, match="relative"):
        fetch.verify_signature(b"x", keys.sign(b"x"), Path("update-keyring.gpg"))


def test_resume_after_dropped_connections(keys: Keys, server: tuple[Served, str], tmp_path: Path) -> None:
    served, base = server
    make_bundle(served.root / "b", keys, system_bytes(1024 * 1024 + 5))
    size = (served.root / "b").stat().st_size
    served.drop_after = 100_000
    assert fetch.download(base + "b", tmp_path / "b.part", size, lambda d, t: None) == tmp_path / "b.part"
    assert sha(tmp_path / "b.part") == sha(served.root / "b")
    assert served.sent == size  # every byte sent once: each attempt resumed where the last one broke
    assert served.requests == [None] + [f"bytes={n}-" for n in range(100_000, size, 100_000)]


def test_connection_that_brings_nothing_gives_up(server: tuple[Served, str], tmp_path: Path) -> None:
    served, base = server
    (served.root / "b").write_bytes(b"x" * 1000)
    served.drop_after = 0
    with pytest.raises(DeviceError, match=rf"cannot download {re.escape(base)}b: .*tries"):
        fetch.download(base + "b", tmp_path / "b.part", 1000, lambda d, t: None)
    assert len(served.requests) == fetch.RETRIES + 1


def test_partial_file_is_resumed(server: tuple[Served, str], tmp_path: Path) -> None:
    served, base = server
    data = system_bytes(20_000)
    (served.root / "b").write_bytes(data)
    (tmp_path / "b.part").write_bytes(data[:5000])
    fetch.download(base + "b", tmp_path / "b.part", len(data), lambda d, t: None)
    assert (tmp_path / "b.part").read_bytes() == data
    assert served.requests == ["bytes=5000-"] and served.sent == 15_000


def test_server_ignoring_ranges_starts_over(server: tuple[Served, str], tmp_path: Path) -> None:
    served, base = server
    data = system_bytes(20_000)
    (served.root / "b").write_bytes(data)
    (tmp_path / "b.part").write_bytes(b"?" * 5000)  # what the 200 replaces, not continues
    served.ranges = False
    fetch.download(base + "b", tmp_path / "b.part", len(data), lambda d, t: None)
    assert (tmp_path / "b.part").read_bytes() == data and served.sent == len(data)


def test_complete_file_is_not_fetched_again(server: tuple[Served, str], tmp_path: Path) -> None:
    served, base = server
    data = system_bytes(20_000)
    (served.root / "b").write_bytes(data)
    (tmp_path / "b.part").write_bytes(data)
    calls: list[tuple[int, int | None]] = []
    fetch.download(base + "b", tmp_path / "b.part", len(data), lambda d, t: calls.append((d, t)))
    assert served.requests == ["bytes=20000-"] and served.sent == 0 and calls == [(20_000, 20_000)]


@pytest.mark.parametrize("length", [True, False])
def test_server_sending_more_than_expected_is_refused(server: tuple[Served, str], tmp_path: Path,
                                                       length: bool) -> None:
    served, base = server
    (served.root / "b").write_bytes(system_bytes(3 * 1024 * 1024))
    served.length = length  # without a length the excess shows only while it arrives
    expected = 1024 * 1024 + 1
    with pytest.raises(DeviceError, match="not the 1048577 the channel index names" if length else "sends more"):
        fetch.download(base + "b", tmp_path / "b.part", expected, lambda d, t: None)
    assert not (tmp_path / "b.part").exists() or (tmp_path / "b.part").stat().st_size <= expected


def test_http_error_names_the_url_and_status(server: tuple[Served, str], tmp_path: Path) -> None:
    _, base = server
    with pytest.raises(DeviceError, match=rf"cannot download {re.escape(base)}missing: .*404"):
        fetch.download(base + "missing", tmp_path / "m.part", None, lambda d, t: None)
    with pytest.raises(DeviceError, match="404"):
        fetch.fetch_small(base + "missing", 100)


def test_local_files_are_not_copied(tmp_path: Path) -> None:
    (tmp_path / "b").write_bytes(b"x" * 100)
    for url in (str(tmp_path / "b"), (tmp_path / "b").as_uri()):
        assert fetch.download(url, tmp_path / "b.part", 100, lambda d, t: None) == tmp_path / "b"
        assert fetch.fetch_small(url, 100) == b"x" * 100
    assert not (tmp_path / "b.part").exists()
    with pytest.raises(DeviceError, match="not a regular file of 99 bytes"):
        fetch.download(str(tmp_path / "b"), tmp_path / "b.part", 99, lambda d, t: None)
    with pytest.raises(DeviceError, match="larger than 99 bytes"):
        fetch.fetch_small(str(tmp_path / "b"), 99)
    with pytest.raises(DeviceError, match="liveng reads http"):
        fetch.download("ftp://example.org/b", tmp_path / "b.part", None, lambda d, t: None)


def write_channel(root: Path, keys: Keys, who: str = SIGNER, alter: bool = False) -> bundle.Index:
    index = bundle.Index(version="2.0", target="pc", arch="amd64", bundle="liveng-2.0.bundle", size=123456,
                         sha256="a" * 64)
    raw = index.to_json()
    root.mkdir(parents=True, exist_ok=True)
    (root / bundle.INDEX_SIG_NAME).write_bytes(keys.sign(raw, who))
    (root / bundle.INDEX_NAME).write_bytes(raw.replace(b"2.0", b"2.1") if alter else raw)
    return index


def test_channel_index_round_trip(keys: Keys, server: tuple[Served, str]) -> None:
    served, base = server
    index = write_channel(served.root / "stable", keys)
    for url in (base + "stable", base + "stable/"):
        assert fetch.channel_index(url, keys.keyring) == (index, base + "stable/liveng-2.0.bundle")
    local = str(served.root / "stable")
    assert fetch.channel_index(local, keys.keyring) == (index, local + "/liveng-2.0.bundle")


@pytest.mark.parametrize(("who", "alter"), [(OTHER, False), (SIGNER, True)])
def test_bad_index_signature_is_refused(keys: Keys, server: tuple[Served, str], who: str, alter: bool) -> None:
    served, base = server
    write_channel(served.root / "stable", keys, who, alter)
    with pytest.raises(DeviceError, match=rf"{re.escape(base)}stable/index.json: the signature is not made by"):
        fetch.channel_index(base + "stable", keys.keyring)


def test_index_larger_than_its_cap_is_refused(keys: Keys, server: tuple[Served, str]) -> None:
    served, base = server
    (served.root / "stable").mkdir()
    (served.root / "stable" / bundle.INDEX_NAME).write_bytes(b" " * (fetch.INDEX_CAP + 1))
    with pytest.raises(DeviceError, match="larger than"):
        fetch.channel_index(base + "stable", keys.keyring)


def test_small_file_cut_short_is_retried_then_refused(server: tuple[Served, str]) -> None:
    served, base = server
    (served.root / bundle.INDEX_NAME).write_bytes(b"{}" * 50)
    served.drop_after = 10
    with pytest.raises(DeviceError, match="closed after 10 bytes"):
        fetch.fetch_small(base + bundle.INDEX_NAME, 1000)
    assert len(served.requests) == fetch.RETRIES + 1
    served.drop_after = None
    assert fetch.fetch_small(base + bundle.INDEX_NAME, 1000) == b"{}" * 50


def test_refused_certificate_is_reported_at_once(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"],
                   capture_output=True, check=True)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with serving(tmp_path / "www", tls) as (served, base):
        (served.root / "b").write_bytes(b"x")
        started = time.monotonic()
        with pytest.raises(DeviceError, match=r"certificate is refused \(self.signed certificate\); check .* clock"):
            fetch.download(base + "b", tmp_path / "b.part", None, lambda d, t: None)
    assert time.monotonic() - started < fetch.RETRY_DELAY and served.requests == []  # no retry could cure it
