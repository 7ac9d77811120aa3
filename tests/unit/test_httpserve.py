"""The tests' web server answers paths as a web server does: percent-encoded names (apt asks for
linux-image-6.12+deb13-amd64_... as %2B), byte ranges, and nothing outside its root."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.httpserve import serve


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
        return r.status, r.read()


def test_percent_encoded_names_and_ranges(tmp_path: Path) -> None:
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool/linux-image-6.12+deb13_arm64.deb").write_bytes(b"0123456789")
    (tmp_path / "secret").write_bytes(b"x")
    with serve(tmp_path / "pool") as server:
        base = f"http://127.0.0.1:{server.port}"
        assert _get(f"{base}/linux-image-6.12%2Bdeb13_arm64.deb") == (200, b"0123456789")
        assert _get(f"{base}/linux-image-6.12%2bdeb13_arm64.deb?x=1", {"Range": "bytes=4-6"}) == (206, b"456")
        for outside in ("/..%2Fsecret", "/%2E%2E/secret", "/missing"):
            with pytest.raises(urllib.error.HTTPError) as err:
                _get(base + outside)
            assert err.value.code == 404, outside
