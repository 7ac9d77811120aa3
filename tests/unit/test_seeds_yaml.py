"""The seeds' YAML reader (liveng.seeds.miniyaml): values as PyYAML's safe_load (what cloud-init uses)
gives them, and errors that name the file and line."""

from __future__ import annotations

import math
from typing import Any

import pytest

from liveng.seeds import SeedError
from liveng.seeds.miniyaml import parse as read_yaml
from tests.unit.test_seeds import starts

SCALARS: list[tuple[str, Any]] = [
    ("1", 1), ("-2", -2), ("0755", 493), ("0x1F", 31), ("0b101", 5), ("1_000", 1000), ("08", "08"), ("0o10", "0o10"),
    ("1.5", 1.5), (".5", 0.5), ("-.5", "-.5"), ("1e5", "1e5"), ("1.0e+5", 100000.0), (".inf", math.inf),
    ("-.Inf", -math.inf), ("yes", True), ("No", False), ("on", True), ("OFF", False), ("tRue", "tRue"), ("y", "y"),
    ("~", None), ("null", None), ("", None), ("'it''s'", "it's"), ("'#x'", "#x"), ('"a # b"', "a # b"),
    ('"tab\\there \\x41\\u00e9\\U0001F600 \\\\ \\" \\/ \\N\\_"', "tab\there Aé\U0001f600 \\ \" / \x85\xa0"),
    ("plain with # comment", "plain with"), ("a#b", "a#b"), ("http://x:80/y", "http://x:80/y"), ("1.2.3", "1.2.3"),
    ('"0755"', "0755"), ("-x", "-x"), ("2024-01-01", "2024-01-01"), ("ALL=(ALL) NOPASSWD:ALL",
                                                                             "ALL=(ALL) NOPASSWD:ALL"),
]


@pytest.mark.parametrize(("text", "value"), SCALARS, ids=[s[0] or "empty" for s in SCALARS])
def test_yaml_scalars(text: str, value: Any) -> None:
    assert read_yaml(f"k: {text}\n", "t").value == {"k": value}


BLOCKS: list[tuple[str, Any]] = [
    ("a:\n  - 1\n  -\n    b: 2\n  - c\n", {"a": [1, {"b": 2}, "c"]}),
    ("a:\n- 1\n- 2\nb: 3\n", {"a": [1, 2], "b": 3}),  # '- ' items at their key's indentation (Imager)
    ("- a\n- b: c\n  d: e\n- - x\n  -   - y\n", ["a", {"b": "c", "d": "e"}, ["x", ["y"]]]),
    ("users:\n  - name: pi\n\n    shell: /bin/bash\n  # between\n  - name: bob\n", {"users": [
        {"name": "pi", "shell": "/bin/bash"}, {"name": "bob"}]}),
    ('a b: c\n"a:b": d\n\'k\' : e\nf:    spaced   \n', {"a b": "c", "a:b": "d", "k": "e", "f": "spaced"}),
    ("k: this is\n  a multi line\n   plain\n\n  scalar\n", {"k": "this is a multi line plain\nscalar"}),
    ('k: "double\n  quoted \\\n  joined\n\n  end"\n', {"k": "double quoted joined\nend"}),
    ("k: 'single\n   quoted'\n", {"k": "single quoted"}),
    ("a: |\n  x\n   y\n\nb: 1\n", {"a": "x\n y\n", "b": 1}),
    ("a: |-\n  strip\n", {"a": "strip"}), ("a: |+\n  keep\n\n\n", {"a": "keep\n\n\n"}),
    ("a: >\n  folded\n  text\n\n  para\n    more\n  back\n", {"a": "folded text\npara\n  more\nback\n"}),
    ("a: >-\n  a\n  b\n", {"a": "a b"}), ("a: |2\n    two\n  base\n", {"a": "  two\nbase\n"}),
    ("a: |\n  # not a comment\n  x\nb: |\n", {"a": "# not a comment\nx\n", "b": ""}),
    ("a: |\n  x", {"a": "x"}),  # no final line break: none to keep
    ("a: |+\n  \nb: >\n\n  c: |\n  d\n", {"a": "\n", "b": "\nc: | d\n"}),
    ("- |\n  in seq\n- k: |\n    nested\n  o: 1\n", ["in seq\n", {"k": "nested\n", "o": 1}]),
    ("a: {x: 1, y: [1, 2, {z: w}], \"q\": 'r'}\nb: [\n  1, # one\n  2,\n  three,\n]\nc: []\nd: {}\n",
     {"a": {"x": 1, "y": [1, 2, {"z": "w"}], "q": "r"}, "b": [1, 2, "three"], "c": [], "d": {}}),
    ("r: [ sh, -c, \"echo 'pi ALL=(ALL) NOPASSWD:ALL' >/f\" ]\n",
     {"r": ["sh", "-c", "echo 'pi ALL=(ALL) NOPASSWD:ALL' >/f"]}),
    ("---\na: 1\n...\n# trailing comment\n", {"a": 1}), ("\ufeffa: 1\r\nb: 2\r\n", {"a": 1, "b": 2}),
    ("# only a comment\n", None), ("", None),
]


@pytest.mark.parametrize(("text", "value"), BLOCKS)
def test_yaml_structure(text: str, value: Any) -> None:
    assert read_yaml(text, "t").value == value


def test_yaml_lines_of_keys_and_items() -> None:
    lines = read_yaml("#c\na:\n  - x\n  - y: 1\nb: [p, q]\n", "t").lines
    assert lines[("a",)] == 2 and lines[("a", 1)] == 4 and lines[("a", 1, "y")] == 4 and lines[("b", 1)] == 5


YAML_ERRORS = [
    ("a: &x 1\nb: *x\n", 1, "an anchor ('&') is not supported by liveng's cloud-config reader"),
    ("a: 1\nb: *x\n", 2, "an alias ('*') is not supported"), ("a: !!str 1\n", 1, "a tag ('!') is not supported"),
    ("<<: {a: 1}\n", 1, "a merge key ('<<') is not supported"), ("? a\n: b\n", 1, "a complex mapping key"),
    ("a: 1\n---\nb: 2\n", 2, "more than one document"), ("%YAML 1.1\n---\na: 1\n", 1, "a directive"),
    ("e: [a: b]\n", 1, "a 'key: value' pair inside [ ]"), ("[a]: b\n", 1, "a [ ] or { } value as a mapping key"),
    ("a: 1\na: 2\n", 2, "the key 'a' appears twice in this mapping (first on line 1)"),
    ("a: b: c\n", 1, "': ' inside a value"), ("a: - b\n", 1, "a '- ' list cannot start on the line of its key"),
    ("a:\n\tb: 1\n", 2, "a tab in the indentation"), ("a: 'x'\n  b: 2\n", 2, "unexpected indentation"),
    ("a: 1\n  b: 2\n", 2, "': ' inside a value"),
    ("  a: 1\n b: 2\n", 2, "does not fit the structure above"), ('a: "open\nb: 1\n', 1, "never closed"),
    ('"open key\nb: 1\n', 1, "the double quote opened here is never closed"),
    ("a: [1, 2\nb: 3\n", 2, "expected ',' or ']' here, not 'b'"), ("a: 1:20\n", 1, "base-60 number"),
    ('a: "\\q"\n', 1, "unknown escape"),
    ("a: 1\x01\n", 1, "a control character"), ("a: 1\n...\nb: 2\n", 3, "content after the end of the document"),
    ("a: |x\n", 1, "a block scalar starts with"), ("a: [1 2, 3]\nb: [4}\n", 2, "expected ',' or ']'"),
    ("a: @x\n", 1, "cannot start with '@'"), ('a: "x" y\n', 1, "unexpected text after the quoted value"),
    ("a:" + " [" * 70 + "\n", 1, "nested deeper than 64 levels"),
]


@pytest.mark.parametrize(("text", "line", "message"), YAML_ERRORS, ids=[e[2][:30] for e in YAML_ERRORS])
def test_yaml_errors_name_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(SeedError, match=starts(f"user-data:{line}: ")) as err:
        read_yaml(text, "user-data")
    assert message in str(err.value) and err.value.line == line


def test_yaml_size_is_bounded() -> None:
    with pytest.raises(SeedError, match="user-data: larger than 1048576 bytes"):
        read_yaml("a: " + "x" * (1 << 20) + "\n", "user-data")
