"""The signage example's URL reader (examples/signage/rootfs/usr/local/sbin/signage-url): which line of
signage-url.txt it takes, and what it refuses; and the recipe's RAM mode."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType

from liveng import layout
from liveng.host import recipe

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/signage"


def reader() -> ModuleType:
    path = EXAMPLE / "rootfs/usr/local/sbin/signage-url"
    loader = importlib.machinery.SourceFileLoader("signage_url", str(path))
    spec = importlib.util.spec_from_loader("signage_url", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_first_url_line_counts() -> None:
    url_from = reader().url_from
    assert url_from("# the page\n\n  https://example.org/board.html  \nhttp://other/\n") == "https://example.org/board.html"
    assert url_from("\ufeffhttp://10.0.2.2:8000/x.html\r\n") == "http://10.0.2.2:8000/x.html"
    assert url_from("file:///srv/page/index.html") == "file:///srv/page/index.html"


def test_what_is_not_a_url_gives_the_help_page() -> None:
    url_from = reader().url_from
    assert url_from("") is None and url_from("# nothing yet\n") is None
    assert url_from("example.org\n") is None  # no scheme
    assert url_from("javascript:alert(1)\n") is None
    assert url_from("http://a b/\n") is None and url_from("http://a/\x07\n") is None


def test_the_example_runs_from_ram() -> None:
    r = recipe.load(EXAMPLE / "signage.toml")
    assert r.ram.mode == layout.MODE_RAM
    assert "firefox-esr" in r.packages and "cage" in r.packages
