from __future__ import annotations

from pathlib import Path

import pytest

from liveng.host.errors import RecipeError
from liveng.host.mirrors import host_mirrors, resolve_mirrors


def _apt(tmp_path: Path) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://s.example/debian-security/\nSuites: bookworm-security\nComponents: main\n")
    (tmp_path / "sources.list.d/other.list").write_text("deb [arch=amd64] https://x.example/apt stable main\n")
    return tmp_path


def test_host_mirrors_deb822(tmp_path: Path) -> None:
    m = host_mirrors(_apt(tmp_path))
    assert m.archive == "http://m.example/debian"
    assert m.security == "http://s.example/debian-security"


def test_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text("# c\ndeb http://a.example/debian trixie main\n")
    assert host_mirrors(tmp_path).archive == "http://a.example/debian"


def test_resolve(tmp_path: Path) -> None:
    apt = _apt(tmp_path)
    assert resolve_mirrors("http://r/debian", "none", apt).security is None
    assert resolve_mirrors("http://r/debian", "", apt).security == "http://s.example/debian-security"
    assert resolve_mirrors("", "http://sec/", apt).archive == "http://m.example/debian"


def test_no_host_mirror_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="set mirror ="):
        resolve_mirrors("", "", tmp_path)
    assert resolve_mirrors("http://r/debian", "", tmp_path).security is None
