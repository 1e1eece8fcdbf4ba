"""HuJSON ("human JSON"), the format of Tailscale policy files: JSON plus comments and trailing commas.

What HuJSON adds to RFC 8259 JSON, and all this module accepts beyond it:

* `// line comments`, up to the end of the line;
* `/* block comments */`, which do not nest;
* one trailing comma after the last member of an object or element of an
  array (`[1, 2,]`, `{"a": 1,}`); an empty `[,]` is still an error.

Everything else is strict JSON: no single quotes, no unquoted keys, no
`NaN`/`Infinity`, no control characters inside strings, one value per
document. Strings and numbers are decoded by the stdlib `json` module, so a
HuJSON document means exactly what `json.loads` makes of its standardised
form.

Two entry points, one recursive-descent pass:

    doc = parse(text)        # doc.value, doc.position(path) -> (line, column)
    standardize(text)        # the same text with comments and trailing commas
                             # blanked out: plain JSON, same length, same lines

`parse` records where every value (and every object key) starts, keyed by its
path (`("acls", 2, "dst", 0)`), so the policy checker can point at the exact
line and column of a mistake. Errors are `HujsonError` with a 1-based line and
column (counted in characters) and a hint; nothing else escapes (the property
test in tests/props/test_hujson_props.py holds the module to that).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Union

Path = tuple[Union[str, int], ...]

MAX_DEPTH = 64
"""Nesting limit: a policy is a few levels deep, and recursion must not reach Python's own limit."""

_WS = " \t\n\r"
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


class HujsonError(ValueError):
    """A syntax error at a 1-based `line` and `column`; `hint` says how to fix it."""

    def __init__(self, message: str, line: int, column: int, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.hint = hint

    def __str__(self) -> str:
        text = "line %d, column %d: %s" % (self.line, self.column, self.message)
        return text + ("; " + self.hint if self.hint else "")


def line_column(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of a character offset."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


@dataclass
class Document:
    """A parsed document: the value, and where each part of it starts."""

    text: str
    value: Any
    values: dict[Path, int] = field(default_factory=dict)
    """Path -> offset of the value's first character."""
    keys: dict[Path, int] = field(default_factory=dict)
    """Path of an object member -> offset of its key's opening quote."""

    def position(self, path: Path, key: bool = False) -> tuple[int, int]:
        """(line, column) of the value at `path` (or of its key), else of the nearest enclosing value."""
        while True:
            table = self.keys if key else self.values
            if path in table:
                return line_column(self.text, table[path])
            if not path:
                return 1, 1
            path = path[:-1]
            key = False


def parse(text: str) -> Document:
    """Parses HuJSON text. Raises HujsonError."""
    p = _Parser(text)
    p.skip()
    if p.i >= p.n:
        raise p.error(p.i, "the document is empty", 'write a JSON object, e.g. {"acls": []}')
    value = p.value((), 0)
    p.skip()
    if p.i < p.n:
        raise p.error(
            p.i, "unexpected text after the end of the document", "remove it, or wrap both in one object"
        )
    return Document(text, value, p.values, p.keys)


def standardize(text: str) -> str:
    """Plain JSON with the same length and line breaks: comments and trailing commas become spaces.

    Raises HujsonError if `text` is not valid HuJSON.
    """
    p = _Parser(text)
    p.skip()
    if p.i >= p.n:
        raise p.error(p.i, "the document is empty", "write a JSON value")
    p.value((), 0)
    p.skip()
    if p.i < p.n:
        raise p.error(p.i, "unexpected text after the end of the document", "remove it")
    out = list(text)
    for start, end in p.blank:
        for k in range(start, end):
            if out[k] != "\n":
                out[k] = " "
    return "".join(out)


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.n = len(text)
        self.i = 0
        self.blank: list[tuple[int, int]] = []
        self.values: dict[Path, int] = {}
        self.keys: dict[Path, int] = {}

    def error(self, offset: int, message: str, hint: str = "") -> HujsonError:
        line, col = line_column(self.s, min(offset, self.n))
        return HujsonError(message, line, col, hint)

    def skip(self) -> None:
        """Skips whitespace and comments, noting the comments for standardize()."""
        s, n, i = self.s, self.n, self.i
        while i < n:
            c = s[i]
            if c in _WS:
                i += 1
            elif c == "/" and s.startswith("//", i):
                j = s.find("\n", i + 2)
                j = n if j < 0 else j
                self.blank.append((i, j))
                i = j
            elif c == "/" and s.startswith("/*", i):
                j = s.find("*/", i + 2)
                if j < 0:
                    self.i = i
                    raise self.error(i, "a /* comment is never closed", "end it with */")
                self.blank.append((i, j + 2))
                i = j + 2
            else:
                break
        self.i = i

    def value(self, path: Path, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self.error(self.i, "nested more than %d levels deep" % MAX_DEPTH, "flatten the document")
        self.skip()
        i = self.i
        if i >= self.n:
            raise self.error(
                i, "the document ends where a value should be", "complete or remove the last entry"
            )
        self.values[path] = i
        c = self.s[i]
        if c == "{":
            return self.object(path, depth)
        if c == "[":
            return self.array(path, depth)
        if c == '"':
            return self.string()
        if c == "-" or "0" <= c <= "9":
            return self.number()
        for word, val in (("true", True), ("false", False), ("null", None)):
            if self.s.startswith(word, i):
                self.i = i + len(word)
                return val
        raise self.error(i, "unexpected character %r where a value should be" % c, _value_hint(c))

    def object(self, path: Path, depth: int) -> dict[str, Any]:
        self.i += 1
        obj: dict[str, Any] = {}
        self.skip()
        if self.i < self.n and self.s[self.i] == "}":
            self.i += 1
            return obj
        while True:
            self.skip()
            if self.i >= self.n or self.s[self.i] != '"':
                raise self.error(
                    self.i, "expected a quoted key", 'write keys in double quotes: {"key": value}'
                )
            key_at = self.i
            key = self.string()
            self.skip()
            if self.i >= self.n or self.s[self.i] != ":":
                raise self.error(
                    self.i, "expected ':' after the key %s" % json.dumps(key), 'write "key": value'
                )
            self.i += 1
            member = path + (key,)
            self.keys[member] = key_at
            obj[key] = self.value(member, depth + 1)
            if self.end_or_comma("}", "object"):
                return obj

    def array(self, path: Path, depth: int) -> list[Any]:
        self.i += 1
        arr: list[Any] = []
        self.skip()
        if self.i < self.n and self.s[self.i] == "]":
            self.i += 1
            return arr
        while True:
            arr.append(self.value(path + (len(arr),), depth + 1))
            if self.end_or_comma("]", "array"):
                return arr

    def end_or_comma(self, close: str, what: str) -> bool:
        """After a member: True at the closing bracket (a trailing comma allowed), False after a comma."""
        self.skip()
        if self.i >= self.n:
            raise self.error(self.i, "the %s is never closed" % what, "add %r" % close)
        c = self.s[self.i]
        if c == close:
            self.i += 1
            return True
        if c != ",":
            raise self.error(
                self.i,
                "expected ',' or %r in the %s, got %r" % (close, what, c),
                "separate entries with commas",
            )
        comma = self.i
        self.i += 1
        self.skip()
        if self.i < self.n and self.s[self.i] == close:
            self.blank.append((comma, comma + 1))
            self.i += 1
            return True
        return False

    def string(self) -> str:
        s, n, start = self.s, self.n, self.i
        j = start + 1
        while True:
            if j >= n:
                raise self.error(start, "a string is never closed", 'end it with "')
            c = s[j]
            if c == '"':
                break
            if c == "\\":
                j += 2
                continue
            if c < " ":
                raise self.error(
                    j, "a control character inside a string", "write it escaped, e.g. \\n or \\t"
                )
            j += 1
        try:
            text = json.loads(s[start : j + 1])
        except ValueError as e:
            pos = getattr(e, "pos", 0)
            raise self.error(
                start + pos, "bad escape in a string", 'use \\", \\\\, \\n, \\t or \\uXXXX'
            ) from None
        self.i = j + 1
        assert isinstance(text, str)
        return text

    def number(self) -> int | float:
        m = _NUMBER.match(self.s, self.i)
        if m is None:
            raise self.error(self.i, "a malformed number", "write numbers as JSON does, e.g. 42, -1.5 or 1e3")
        self.i = m.end()
        value = json.loads(m.group())
        assert isinstance(value, (int, float))
        return value


def _value_hint(c: str) -> str:
    if c == "'":
        return "strings take double quotes"
    if c in ",]}":
        return "a comma or bracket is out of place; remove it or add the missing value"
    if c.isalpha():
        return "quote the text as a string (true, false and null are the only bare words)"
    return "write a string, number, object, array, true, false or null"
