"""Scanning YAML lines for the cloud-config reader (miniyaml): the cursor, scalars of every style, and how
plain scalars resolve. Standard library only; see miniyaml for what is supported and why.
"""

from __future__ import annotations

import re
from typing import Any

from liveng.seeds.common import Path, SeedError

_NULL = {"", "~", "null", "Null", "NULL"}
_TRUE = {"yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"}
_FALSE = {"no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"}
_INT = re.compile(r"[-+]?(0b[01_]+|0x[0-9a-fA-F_]+|0[0-7_]+|0|[1-9][0-9_]*)")
_FLOAT = re.compile(r"([-+]?[0-9][0-9_]*\.[0-9_]*|\.[0-9_]+)([eE][-+][0-9]+)?")
_HEADER = re.compile(r"([|>])(?:([+-])([1-9])?|([1-9])([+-])?)?[ \t]*(#.*)?")
_ESCAPES = {"0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v", "f": "\f", "r": "\r",
            "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\", "N": "\x85", "_": "\xa0", "L": "\u2028",
            "P": "\u2029"}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


def resolve(text: str) -> Any:
    """A plain (unquoted) scalar's value, as YAML 1.1 resolves it."""
    if text in _NULL:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if _INT.fullmatch(text):
        digits = text.replace("_", "")
        sign = -1 if digits.startswith("-") else 1
        digits = digits.lstrip("+-")
        if digits.startswith("0b"):
            return sign * int(digits[2:], 2)
        if digits.startswith("0x"):
            return sign * int(digits[2:], 16)
        if len(digits) > 1 and digits.startswith("0"):
            return sign * int(digits, 8)
        return sign * int(digits)
    if text in (".nan", ".NaN", ".NAN"):
        return float("nan")
    if text in (".inf", ".Inf", ".INF") or (text[:1] in "+-" and text[1:] in (".inf", ".Inf", ".INF")):
        return -float("inf") if text.startswith("-") else float("inf")
    if _FLOAT.fullmatch(text) and any(ch.isdigit() for ch in text):
        return float(text.replace("_", ""))
    return text


def is_entry(text: str) -> bool:
    return text == "-" or text.startswith(("- ", "-\t"))


def is_marker(line: str) -> bool:
    return line[:3] in ("---", "...") and line[3:4] in ("", " ", "\t")


class Scanner:
    """A cursor over the lines of one file. ``i`` is the current line, ``col`` where its content starts (after
    a ``- `` the rest of the line is read as a node of its own)."""

    def __init__(self, lines: list[str], name: str, final_break: bool) -> None:
        self.lines = lines
        self.final_break = final_break
        self.name = name
        self.i = 0
        self.col = 0
        self.depth = 0
        self.where: dict[Path, int] = {}

    def error(self, message: str, index: int | None = None) -> SeedError:
        return SeedError(self.name, (self.i if index is None else index) + 1, message)

    def unsupported(self, feature: str, index: int | None = None) -> SeedError:
        return self.error(f"{feature} is not supported by liveng's cloud-config reader: write the file without it, "
                          "or use an image with real cloud-init", index)

    # Moving between lines.

    def advance(self) -> bool:
        """Stand on the next line with content (not blank, not only a comment); False at the end or a marker."""
        while self.i < len(self.lines):
            line = self.lines[self.i]
            stripped = line.strip(" \t")
            if stripped == "" or stripped.startswith("#"):
                self.i += 1
                continue
            body = line.lstrip(" ")
            if body.startswith("\t"):
                raise self.error("a tab in the indentation: YAML indents with spaces only")
            self.col = len(line) - len(body)
            return not (self.col == 0 and is_marker(line))
        return False

    def at_content(self) -> bool:
        return self.i < len(self.lines) and not (self.col == 0 and is_marker(self.lines[self.i]))

    def scalar_indicator(self, ch: str) -> None:
        feature = {"&": "an anchor ('&')", "*": "an alias ('*')", "!": "a tag ('!')"}.get(ch)
        if feature:
            raise self.unsupported(feature)
        raise self.error(f"a value cannot start with {ch!r}: put the value in quotes")

    def plain_part(self, line: str, start: int) -> tuple[str, bool]:
        """The plain scalar text on ``line`` from ``start``, and whether a comment ended it."""
        end, comment = len(line), False
        for j in range(start, len(line)):
            if line[j] == "#" and j > start and line[j - 1] in " \t":
                end, comment = j, True
                break
        text = line[start:end].rstrip(" \t")
        for j, ch in enumerate(text):
            if ch == ":" and (j + 1 == len(text) or text[j + 1] in " \t"):
                raise self.error("': ' inside a value: put the value in quotes (YAML would read a mapping here)")
        return text, comment

    def quoted(self) -> str:
        """A single- or double-quoted scalar at (i, col), folded over lines; leaves col after the closing quote."""
        quote = self.lines[self.i][self.col]
        opened = self.i
        self.col += 1
        out: list[str] = []
        keep = 0  # out[:keep] is never trimmed: escaped blanks stay at a line's end
        while True:
            line = self.lines[self.i]
            if self.col >= len(line):
                while len(out) > keep and out[-1] in " \t":
                    out.pop()
                breaks = self.next_quoted_line(opened, quote)
                out += ["\n"] * breaks if breaks else [" "]
                keep = len(out)
                continue
            ch = line[self.col]
            if ch == quote:
                if quote == "'" and line[self.col + 1:self.col + 2] == "'":
                    out.append("'")
                    self.col += 2
                    continue
                self.col += 1
                return "".join(out)
            if ch == "\\" and quote == '"':
                if self.col + 1 == len(line):  # an escaped line break: the lines join without a space
                    breaks = self.next_quoted_line(opened, quote)
                    out += ["\n"] * breaks
                else:
                    out.append(self.escape(line))
                keep = len(out)
                continue
            out.append(ch)
            self.col += 1

    def next_quoted_line(self, opened: int, quote: str) -> int:
        """Move to the next line of a quoted scalar, past empty ones (their count is returned)."""
        breaks = 0
        while True:
            self.i += 1
            if self.i >= len(self.lines) or is_marker(self.lines[self.i]):
                kind = "double" if quote == '"' else "single"
                raise self.error(f"the {kind} quote opened here is never closed", opened)
            line = self.lines[self.i]
            if line.strip(" \t"):
                self.col = len(line) - len(line.lstrip(" \t"))
                return breaks
            breaks += 1

    def escape(self, line: str) -> str:
        code = line[self.col + 1]
        if code in _ESCAPES:
            self.col += 2
            return _ESCAPES[code]
        width = _HEX_ESCAPES.get(code)
        digits = line[self.col + 2:self.col + 2 + width] if width else ""
        if not width or len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
            raise self.error(f"an unknown escape '\\{code}' in a double-quoted value (write '\\\\' for a backslash)")
        number = int(digits, 16)
        if number > 0x10FFFF or 0xD800 <= number <= 0xDFFF:
            raise self.error(f"the escape '\\{code}{digits}' is not a character")
        self.col += 2 + width
        return chr(number)

    def block_scalar(self, parent: int) -> str:
        header = self.lines[self.i][self.col:]
        m = _HEADER.fullmatch(header)
        if not m:
            raise self.error("a block scalar starts with '|' or '>', then at most '+' or '-', an indentation digit "
                             "and a comment")
        style, chomp, digit = m.group(1), m.group(2) or m.group(5) or "", m.group(3) or m.group(4)
        self.i += 1
        base = max(parent + 1, 1)
        indent = base + int(digit) - 1 if digit else None
        if indent is None:  # the first line with content sets the indentation
            k = self.i
            while k < len(self.lines) and self.lines[k].strip(" ") == "":
                k += 1
            found = len(self.lines[k]) - len(self.lines[k].lstrip(" ")) if k < len(self.lines) else 0
            # Without content lines the scalar is only the blank lines that follow: indent past them all.
            indent = found if found >= base else max(base, len(max(self.lines[self.i:k], key=len, default="")) + 1)
        body: list[str] = []
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.strip(" ") == "":
                body.append(line[indent:])  # an empty line; spaces beyond the indentation are content
            elif len(line) - len(line.lstrip(" ")) >= indent:
                body.append(line[indent:])
            else:
                break
            self.i += 1
        trailing = 0
        while body and body[-1] == "":  # a line with spaces beyond the indentation is content, not a break
            body.pop()
            trailing += 1
        # The last line of a file without a final line break has no break to keep.
        unbroken = self.i == len(self.lines) and not self.final_break
        text = "\n".join(body) if style == "|" else _fold(body)
        self.advance()
        if not body:
            return "\n" * (trailing - unbroken) if chomp == "+" else ""
        if chomp == "-" or (unbroken and trailing == 0):
            return text
        return text + "\n" + ("\n" * (trailing - unbroken) if chomp == "+" else "")


def _fold(body: list[str]) -> str:
    """Folded (``>``) block scalar lines: single breaks between text lines become spaces; empty lines and
    more-indented lines keep their breaks."""
    out = ""
    previous: str | None = None
    empties = 0
    for line in body:
        if line == "":
            empties += 1
            continue
        if previous is None:
            out = "\n" * empties + line
        elif line[0] in " \t" or previous[0] in " \t":
            out += "\n" * (empties + 1) + line
        else:
            out += (" " if empties == 0 else "\n" * empties) + line
        previous, empties = line, 0
    return out
