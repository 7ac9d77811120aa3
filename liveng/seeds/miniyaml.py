"""A strict reader for the part of YAML that cloud-config, meta-data and network-config files use.

Standard library only: it runs inside the image, where there is no PyYAML. Values come out as cloud-init
(PyYAML's safe_load, YAML 1.1) would read them, within the subset: block mappings and sequences, plain,
single- and double-quoted scalars (multi-line too), ``|`` and ``>`` block scalars, flow ``[...]`` and
``{...}``, comments, one document (``---`` and ``...`` markers allowed). Plain scalars resolve as YAML 1.1
does: ``yes/no/on/off/true/false`` (in their three spellings), ``null``/``~``/empty, integers (``0755`` is
octal, as cloud-init reads file modes), floats. Two differences, both on the safe side: mapping keys are
always strings, and dates stay strings. Everything else (anchors, aliases, tags, merge keys, complex keys,
several documents, directives) is an error naming the line, never a guess; so are duplicate keys, which
PyYAML would silently take the last of.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from liveng.seeds.common import MAX_BYTES, Path, SeedError
from liveng.seeds.yamlscan import Scanner, is_entry, is_marker, resolve

MAX_DEPTH = 64  # nesting of block and flow collections: deeper is no seed file, only a way to blow the stack
_SEXAGESIMAL = re.compile(r"[-+]?[1-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass
class Document:
    """A parsed file: its value and, for every mapping key and sequence item, the line it is on (1-based)."""

    value: Any
    lines: dict[Path, int]


def parse(text: str, name: str) -> Document:
    """Read ``text`` (the file ``name``, for messages); raises SeedError naming the file and the line."""
    if len(text) > MAX_BYTES:
        raise SeedError(name, None, f"larger than {MAX_BYTES} bytes, more than such a file can be")
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        bad = _CONTROL.search(line)
        if bad:
            raise SeedError(name, number, f"a control character (code {ord(bad.group()):#04x}): YAML does not allow "
                            "it; remove it, or write it as an escape in a double-quoted value")
    final_break = bool(lines) and lines[-1] == ""
    if final_break:
        lines.pop()  # the final line break ends the last line; it is not an empty line of its own
    reader = _Reader(lines, name, final_break)
    return Document(reader.document(), reader.where)


class _Reader(Scanner):
    """Recursive descent over the block structure; after each node, the reader stands on the next line holding
    content, at a document marker, or at the end."""

    def rest_blank(self, what: str) -> None:
        """After a quoted or flow value only a comment may follow on its line; then go to the next content."""
        rest = self.lines[self.i][self.col:]
        if rest.strip(" \t") and not rest.lstrip(" \t").startswith("#"):
            if rest.lstrip(" \t").startswith(":"):
                raise self.unsupported(f"a {what} as a mapping key")
            # Not the text itself: it may be part of a password.
            column = len(self.lines[self.i]) - len(rest.lstrip()) + 1
            raise self.error(f"unexpected text after the {what} (column {column}): quote the whole value, or put "
                             "a comment after ' #'")
        self.i += 1
        self.advance()

    # The document and block structure.

    def document(self) -> Any:
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.startswith("%"):
                raise self.unsupported("a directive (%YAML, %TAG)")
            if line.strip(" \t") and not line.lstrip(" \t").startswith("#"):
                break
            self.i += 1
        if self.i < len(self.lines) and self.lines[self.i][:3] == "---" and is_marker(self.lines[self.i]):
            rest = self.lines[self.i][3:].strip(" \t")
            if rest and not rest.startswith("#"):
                raise self.unsupported("a value on the '---' line")
            self.i += 1
        value = self.node(-1, ()) if self.advance() else None
        if self.at_content():
            raise self.error("this line does not fit the structure above it: check its indentation")
        if self.i < len(self.lines):
            if self.lines[self.i].startswith("---"):
                raise self.unsupported("more than one document ('---')")
            self.i += 1  # '...': the end of the document; only comments may follow
            if self.advance() or self.i < len(self.lines):
                if self.lines[self.i].startswith("---"):
                    raise self.unsupported("more than one document ('---')")
                raise self.error("content after the end of the document ('...')")
        return value

    def node(self, parent: int, path: Path) -> Any:
        """The node starting at (i, col), which is indented more than ``parent``."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"nested deeper than {MAX_DEPTH} levels")
        try:
            text = self.lines[self.i][self.col:]
            if is_entry(text):
                return self.sequence(self.col, path)
            if self.key(text) is not None:
                return self.mapping(self.col, path)
            return self.scalar(parent, path)
        finally:
            self.depth -= 1

    def key(self, text: str) -> tuple[str, int] | None:
        """A ``key:`` at the start of ``text``: the key and the offset after its colon; None if not a key."""
        if text == "?" or text.startswith(("? ", "?\t")):
            raise self.unsupported("a complex mapping key ('? ')")
        if text[:1] in ("'", '"'):
            saved = self.i, self.col
            try:
                value = self.quoted()
                closed_on_line, end = self.i == saved[0], self.col - saved[1]
            except SeedError:
                return None  # read again as a value, which reports it
            finally:
                self.i, self.col = saved
            if not closed_on_line:
                return None
            rest = text[end:].lstrip(" \t")
            if rest.startswith(":") and rest[1:2] in ("", " ", "\t"):
                return value, len(text) - len(rest) + 1
            return None
        if text[:1] in "[{" or is_entry(text):
            return None
        for j, ch in enumerate(text):
            if ch == "#" and j > 0 and text[j - 1] in " \t":
                return None
            if ch == ":" and text[j + 1:j + 2] in ("", " ", "\t"):
                name = text[:j].rstrip(" \t")
                if name == "":
                    raise self.error("a ':' without a key before it")
                if name[0] in "&*!%@`":
                    self.scalar_indicator(name[0])
                return name, j + 1
        return None

    def mapping(self, indent: int, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while True:
            found = self.key(self.lines[self.i][self.col:])
            if found is None:
                raise self.error("expected 'key: value' here, like the lines above at this indentation")
            name, end = found
            if name == "<<":
                raise self.unsupported("a merge key ('<<')")
            here = (*path, name)
            if name in out:
                raise self.error(f"the key {name!r} appears twice in this mapping (first on line {self.where[here]})")
            self.where[here] = self.i + 1
            out[name] = self.value(indent, here, self.col + end, entry=False)
            if not self.at_content() or self.col < indent:
                return out
            if self.col > indent:
                raise self.error("unexpected indentation: this line is indented more than the key above it")

    def sequence(self, indent: int, path: Path) -> list[Any]:
        out: list[Any] = []
        while True:
            here = (*path, len(out))
            self.where[here] = self.i + 1
            out.append(self.value(indent, here, self.col + 1, entry=True))
            if not self.at_content() or self.col < indent:
                return out
            if self.col > indent:
                raise self.error("unexpected indentation: this line is indented more than the '- ' above it")
            if not is_entry(self.lines[self.i][self.col:]):
                return out  # a 'key:' whose '- ' items stood at its own indentation: the mapping goes on

    def value(self, indent: int, path: Path, start: int, entry: bool) -> Any:
        """What follows ``key:`` or ``- `` (at ``start`` on the current line, or on the lines below)."""
        line = self.lines[self.i]
        j = start
        while j < len(line) and line[j] in " \t":
            j += 1
        rest = line[j:]
        if rest == "" or rest.startswith("#"):
            self.i += 1
            if not self.advance():
                return None
            if self.col > indent:
                return self.node(indent, path)
            if self.col == indent and not entry and is_entry(self.lines[self.i][self.col:]):
                return self.sequence(indent, path)
            return None
        self.col = j
        if is_entry(rest):
            if not entry:
                raise self.error("a '- ' list cannot start on the line of its key: put the items on the lines below")
            return self.sequence(j, path)
        if entry and self.key(rest) is not None:
            return self.mapping(j, path)
        return self.scalar(indent, path)

    # Scalars.

    def scalar(self, parent: int, path: Path) -> Any:
        first = self.lines[self.i][self.col]
        if first in "&*!%@`,]}":
            self.scalar_indicator(first)
        if first in "|>":
            return self.block_scalar(parent)
        if first in "'\"":
            text = self.quoted()
            self.rest_blank("quoted value")
            return text
        if first in "[{":
            value = self.flow(path)
            self.rest_blank("[ ] or { } value")
            return value
        return self.plain(parent)

    def plain(self, parent: int) -> Any:
        first = self.i
        text, comment = self.plain_part(self.lines[self.i], self.col)
        parts = [text]
        self.i += 1
        breaks = 0
        while not comment and self.i < len(self.lines):
            line = self.lines[self.i]
            stripped = line.strip(" \t")
            if stripped == "":
                breaks += 1
                self.i += 1
                continue
            indent = len(line) - len(line.lstrip(" "))
            if indent <= parent or stripped.startswith("#") or (indent == 0 and is_marker(line)):
                break
            if line[indent] == "\t":
                raise self.error("a tab in the indentation: YAML indents with spaces only")
            piece, comment = self.plain_part(line, indent)
            parts += ["\n" * breaks if breaks else " ", piece]
            breaks = 0
            self.i += 1
        self.advance()
        whole = "".join(parts)
        if _SEXAGESIMAL.fullmatch(whole):
            raise self.error(f"{whole} is a base-60 number to YAML 1.1 (cloud-init would read "
                             f"{'a number' if '.' in whole else 'an integer'}): put it in quotes if it is text", first)
        return resolve(whole) if len(parts) == 1 else whole

    def flow_space(self, opened: int, closer: str) -> str:
        """Skip blanks, line breaks and comments inside [ ] or { }; return the next character."""
        while True:
            line = self.lines[self.i]
            if self.col >= len(line) or line[self.col] == "#":
                self.i += 1
                self.col = 0
                if self.i >= len(self.lines) or is_marker(self.lines[self.i]):
                    raise self.error(f"the '{'[' if closer == ']' else '{'}' opened here is never closed "
                                     f"(no '{closer}')", opened)
                continue
            if line[self.col] in " \t":
                self.col += 1
                continue
            return line[self.col]

    def flow(self, path: Path) -> Any:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"nested deeper than {MAX_DEPTH} levels")
        opener = self.lines[self.i][self.col]
        closer = "]" if opener == "[" else "}"
        opened = self.i
        self.col += 1
        items: list[Any] = []
        table: dict[str, Any] = {}
        while True:
            ch = self.flow_space(opened, closer)
            if ch == closer:
                self.col += 1
                self.depth -= 1
                return items if opener == "[" else table
            if opener == "{":
                if ch in "[{":
                    raise self.unsupported("a [ ] or { } as a mapping key")
                name = str(self.flow_scalar(opened, closer, key=True))
                if self.flow_space(opened, closer) != ":":
                    raise self.error(f"expected ':' after {name!r} inside {{ }}")
                self.col += 1
                here = (*path, name)
                if name in table:
                    raise self.error(f"the key {name!r} appears twice in this mapping")
                self.where[here] = self.i + 1
                ch = self.flow_space(opened, closer)
                table[name] = None if ch in ",}" else self.flow_node(opened, closer, here)
            else:
                here = (*path, len(items))
                self.where[here] = self.i + 1
                items.append(self.flow_node(opened, closer, here))
                if self.flow_space(opened, closer) == ":":
                    raise self.unsupported("a 'key: value' pair inside [ ]")
            ch = self.flow_space(opened, closer)
            if ch == ",":
                self.col += 1
            elif ch != closer:
                raise self.error(f"expected ',' or '{closer}' here, not {ch!r}")

    def flow_node(self, opened: int, closer: str, path: Path) -> Any:
        ch = self.lines[self.i][self.col]
        if ch in "[{":
            return self.flow(path)
        return self.flow_scalar(opened, closer, key=False)

    def flow_scalar(self, opened: int, closer: str, key: bool) -> Any:
        line = self.lines[self.i]
        ch = line[self.col]
        if ch in "'\"":
            return self.quoted()
        if ch in "|>":
            raise self.error("a block scalar ('|' or '>') cannot stand inside [ ] or { }")
        if ch in "&*!%@`":
            self.scalar_indicator(ch)
        if ch == "?":
            raise self.unsupported("a complex mapping key ('?')")
        if ch in ",]}" or (ch == "-" and line[self.col + 1:self.col + 2] in ("", " ", "\t")):
            raise self.error(f"expected a value inside {'[ ]' if closer == ']' else '{ }'} here")
        start = self.col
        j = start
        while j < len(line):
            c = line[j]
            if c in ",[]{}" or (c == "#" and line[j - 1] in " \t"):
                break
            if c == ":" and (j + 1 == len(line) or line[j + 1] in " \t,[]{}"):
                break
            j += 1
        self.col = j
        text = line[start:j].rstrip(" \t")
        return text if key else resolve(text)
