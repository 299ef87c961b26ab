"""Unit's lenient JSON dialect: parsing with Unit's error texts and positions, and printing.

NGINX Unit (1.35) parses control API bodies with its own parser (``src/nxt_conf.c``), which
differs from RFC 8259 in ways a client can observe:

* ``//`` line comments and ``/* */`` block comments count as white space; an unterminated comment
  is not skipped at all, so the parser then trips over its ``/``;
* trailing commas in objects and arrays are accepted;
* duplicate object member names are rejected;
* numbers are kept as the text that was sent (at most 14 characters) and printed back verbatim;
* errors carry a fixed English sentence and the byte offset of the offending character, which the
  controller turns into ``{"offset", "line", "column"}`` (column counts UTF-8 characters).

Strings are decoded from UTF-8 with ``surrogateescape`` so that bytes which are not valid UTF-8
survive a parse/print round trip unchanged, as they do in Unit.

The printer reproduces Unit's pretty format byte for byte: TAB indentation, CRLF line ends, an
empty line after a member whose value is a non-empty object or array (unless it is the last
member), ``{}``/``[]`` for empty containers, and no escaping of ``/`` or non-ASCII characters.
"""

from __future__ import annotations

import json
import math
import re

__all__ = [
    "JSONParseError",
    "UnitNumber",
    "dumps_compact",
    "dumps_pretty",
    "parse",
    "type_name",
]

# Unit stores a number's text in a fixed 14-byte buffer.
MAX_NUMBER_LEN = 14
INT64_MAX = 2**63 - 1


_MSG_VALUE = (
    "A valid JSON value is expected here.  It must be either a literal (null, true, or false), "
    'a number, a string (in double quotes ""), an array (with brackets []), or an object '
    "(with braces {})."
)
_MSG_EMPTY = (
    "An empty JSON payload isn't allowed.  It must be either a literal (null, true, or false), "
    'a number, a string (in double quotes ""), an array (with brackets []), or an object '
    "(with braces {})."
)
_MSG_TRAILING = "Unexpected character after the end of a valid JSON value."
_MSG_OBJ_EOF = "Unexpected end of JSON payload.  There's an object without a closing brace (})."
_MSG_OBJ_QUOTE = (
    'A double quote (") is expected here.  There must be a valid JSON object member starts '
    "with a name, which is a string enclosed in double quotes."
)
_MSG_DUPLICATE = "Duplicate object member.  All JSON object members must have unique names."
_MSG_MEMBER_EOF = "Unexpected end of JSON payload.  There's an object member without a value."
_MSG_COLON = "A colon (:) is expected here.  There must be a colon after a JSON member name."
_MSG_OBJ_SEP = (
    "Either a closing brace (}) or a comma (,) is expected here.  Each JSON object must be "
    "enclosed in braces and its members must be separated by commas."
)
_MSG_ARR_EOF = "Unexpected end of JSON payload.  There's an array without a closing bracket (])."
_MSG_ARR_SEP = (
    "Either a closing bracket (]) or a comma (,) is expected here.  Each array must be "
    "enclosed in brackets and its members must be separated by commas."
)
_MSG_CTRL = "Unexpected character.  All control characters in a JSON string must be escaped."
_MSG_BACKSLASH = (
    "Unexpected backslash.  A literal backslash in a JSON string must be escaped with a "
    "second backslash (\\\\)."
)
_MSG_ESCAPE = (
    "Invalid escape sequence.  An escape sequence in a JSON string must start with a "
    "backslash, followed by the lowercase letter u, followed by four hexadecimal digits "
    "(\\uXXXX)."
)
_MSG_STR_EOF = (
    "Unexpected end of JSON payload.  There's a string without a final double quote (\")."
)
_MSG_SURROGATE_PAIR = (
    "Invalid JSON encoding sequence.  This 12-byte sequence composes an illegal UTF-16 "
    "surrogate pair."
)
_MSG_SURROGATE = (
    "Invalid JSON encoding sequence.  This 6-byte sequence does not represent a valid UTF "
    "character."
)
_MSG_FRACTION = (
    "The number is invalid.  A fraction part in JSON numbers must contain at least one digit."
)
_MSG_LEADING_ZERO = "The number is invalid.  Leading zeros are not allowed in JSON numbers."
_MSG_EXPONENT = (
    "The number is invalid.  An exponent part in JSON numbers must contain at least one digit."
)
_MSG_NUM_LONG = "The number is too long.  Such a long JSON number value is not supported."
_MSG_NUM_RANGE = (
    "The number is out of representable range.  Such JSON number value is not supported."
)

_HEX = frozenset(b"0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = {
    0x22: 0x22,
    0x5C: 0x5C,
    0x2F: 0x2F,
    0x6E: 0x0A,
    0x72: 0x0D,
    0x74: 0x09,
    0x62: 0x08,
    0x66: 0x0C,
}
# What may follow a number directly (nxt_conf_json_parse_value).
_AFTER_NUMBER = frozenset(b' \t\r\n,}]{["')


class JSONParseError(ValueError):
    """A body Unit would answer with 400 "Invalid JSON."."""

    def __init__(self, detail: str, offset: int, line: int, column: int):
        self.detail = detail
        self.offset = offset
        self.line = line
        self.column = column
        super().__init__(f"{detail} (offset {offset}, line {line}, column {column})")


class UnitNumber(float):
    """A JSON number that is not a plain integer literal (``1.5``, ``1e3``, ``-0``).

    Behaves as a float, and remembers the text Unit would print back.
    """

    text: str

    def __new__(cls, text: str) -> UnitNumber:
        obj = super().__new__(cls, float(text))
        obj.text = text
        return obj

    def __repr__(self) -> str:
        return f"UnitNumber({self.text!r})"


def is_integer_value(value: object) -> bool:
    """Unit's notion of "an integer number": any number whose value has no fraction."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value) and value == math.trunc(value)


def type_name(value: object) -> str:
    """The article + type name Unit uses in validation messages."""
    if value is None:
        return "a null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "an integer number" if is_integer_value(value) else "a fractional number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


class _Fail(Exception):
    def __init__(self, pos: int, detail: str):
        self.pos = pos
        self.detail = detail


_WS_RUN = re.compile(rb"[ \t\r\n]*")
_PLAIN_RUN = re.compile(rb'[^"\\\x00-\x1f]*')


def _skip_space(buf: bytes, pos: int, end: int) -> int:
    """White space and comments, or, if a comment is left open, the position of its ``/``."""
    p = pos
    while True:
        p = _WS_RUN.match(buf, p, end).end()
        if p >= end - 1 or buf[p] != 0x2F:  # '/' needs a second character to open a comment
            return p
        kind = buf[p + 1]
        if kind == 0x2F:  # line comment: up to and including the newline
            nl = buf.find(b"\n", p + 2, end)
            if nl < 0:
                return p
            p = nl + 1
        elif kind == 0x2A:  # block comment
            close = buf.find(b"*/", p + 2, end)
            if close < 0:
                return p
            p = close + 2
        else:
            return p


class _Parser:
    def __init__(self, buf: bytes):
        self.buf = buf
        self.end = len(buf)

    def value(self, pos: int) -> tuple[object, int]:
        buf = self.buf
        ch = buf[pos]
        if ch == 0x7B:  # '{'
            return self.obj(pos)
        if ch == 0x5B:  # '['
            return self.arr(pos)
        if ch == 0x22:  # '"'
            return self.string(pos)
        if ch == 0x74:  # 't'
            if buf.startswith(b"true", pos):
                return True, pos + 4
            raise _Fail(pos, _MSG_VALUE)
        if ch == 0x66:  # 'f'
            if buf.startswith(b"false", pos):
                return False, pos + 5
            raise _Fail(pos, _MSG_VALUE)
        if ch == 0x6E:  # 'n'
            if buf.startswith(b"null", pos):
                return None, pos + 4
            raise _Fail(pos, _MSG_VALUE)
        if ch == 0x2D:  # '-'
            if self.end - pos > 1:
                ch = buf[pos + 1]
            else:
                raise _Fail(pos, _MSG_VALUE)
        if 0x30 <= ch <= 0x39:
            number, p = self.number(pos)
            if p == self.end or buf[p] in _AFTER_NUMBER:
                return number, p
        raise _Fail(pos, _MSG_VALUE)

    def obj(self, start: int) -> tuple[dict, int]:
        buf, end = self.buf, self.end
        result: dict[str, object] = {}
        p = start
        while True:
            p = _skip_space(buf, p + 1, end)
            if p == end:
                raise _Fail(p, _MSG_OBJ_EOF)
            if buf[p] != 0x22:
                if buf[p] == 0x7D:
                    break
                raise _Fail(p, _MSG_OBJ_QUOTE)
            name_pos = p
            name, p = self.string(p)
            if name in result:
                raise _Fail(name_pos, _MSG_DUPLICATE)
            p = _skip_space(buf, p, end)
            if p == end:
                raise _Fail(p, _MSG_MEMBER_EOF)
            if buf[p] != 0x3A:  # ':'
                raise _Fail(p, _MSG_COLON)
            p = _skip_space(buf, p + 1, end)
            if p == end:
                raise _Fail(p, _MSG_MEMBER_EOF)
            result[name], p = self.value(p)
            p = _skip_space(buf, p, end)
            if p == end:
                raise _Fail(p, _MSG_OBJ_EOF)
            if buf[p] != 0x2C:  # ','
                if buf[p] == 0x7D:
                    break
                raise _Fail(p, _MSG_OBJ_SEP)
        return result, p + 1

    def arr(self, start: int) -> tuple[list, int]:
        buf, end = self.buf, self.end
        result: list[object] = []
        p = start
        while True:
            p = _skip_space(buf, p + 1, end)
            if p == end:
                raise _Fail(p, _MSG_ARR_EOF)
            if buf[p] == 0x5D:  # ']'
                break
            item, p = self.value(p)
            result.append(item)
            p = _skip_space(buf, p, end)
            if p == end:
                raise _Fail(p, _MSG_ARR_EOF)
            if buf[p] != 0x2C:
                if buf[p] == 0x5D:
                    break
                raise _Fail(p, _MSG_ARR_SEP)
        return result, p + 1

    def string(self, start: int) -> tuple[str, int]:
        buf, end = self.buf, self.end
        p = start + 1
        escaped = False
        while True:
            p = _PLAIN_RUN.match(buf, p, end).end()
            if p >= end:
                raise _Fail(end, _MSG_STR_EOF)
            ch = buf[p]
            if ch == 0x22:
                break
            if ch < 0x20:
                raise _Fail(p, _MSG_CTRL)
            escaped = True
            if p + 1 >= end:
                raise _Fail(end, _MSG_STR_EOF)
            esc = buf[p + 1]
            if esc in _SIMPLE_ESCAPES:
                p += 2
                continue
            if esc != 0x75:  # 'u'
                raise _Fail(p, _MSG_BACKSLASH)
            for q in range(p + 2, p + 6):
                if q >= end:
                    raise _Fail(end, _MSG_STR_EOF)
                if buf[q] not in _HEX:
                    raise _Fail(q, _MSG_ESCAPE)
            p += 6
        raw = buf[start + 1 : p]
        if not escaped:
            return raw.decode("utf-8", "surrogateescape"), p + 1
        return self._unescape(raw, start + 1), p + 1

    def _unescape(self, raw: bytes, base: int) -> str:
        out = bytearray()
        i = 0
        n = len(raw)
        while i < n:
            ch = raw[i]
            if ch != 0x5C:
                out.append(ch)
                i += 1
                continue
            esc = raw[i + 1]
            if esc in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[esc])
                i += 2
                continue
            code = int(raw[i + 2 : i + 6], 16)
            i += 6
            if 0xD800 <= code <= 0xDFFF:
                if code > 0xDBFF or raw[i : i + 2] != b"\\u":
                    raise _Fail(base + i - 6, _MSG_SURROGATE)
                low_text = raw[i + 2 : i + 6]
                low = int(low_text, 16) if len(low_text) == 4 else -1
                if not 0xDC00 <= low <= 0xDFFF:
                    raise _Fail(base + i - 6, _MSG_SURROGATE_PAIR)
                code = ((code - 0xD800) << 10) + (low - 0xDC00) + 0x10000
                i += 6
            out += chr(code).encode("utf-8", "surrogatepass")
        return bytes(out).decode("utf-8", "surrogateescape")

    def number(self, start: int) -> tuple[int | UnitNumber, int]:
        buf, end = self.buf, self.end
        s = start + 1 if buf[start] == 0x2D else start
        dot = None
        p = s
        while p < end:
            ch = buf[p]
            if 0x30 <= ch <= 0x39:
                p += 1
            elif ch == 0x2E and dot is None:
                dot = p
                p += 1
            else:
                break
        if dot is not None:
            if p - dot <= 1:
                raise _Fail(s, _MSG_FRACTION)
        else:
            dot = p
        if dot - s > 1 and buf[s] == 0x30:
            raise _Fail(s, _MSG_LEADING_ZERO)
        if p < end and buf[p] in b"eE":
            p += 1
            s2 = p
            if s2 < end and buf[s2] in b"+-":
                s2 += 1
            p = s2
            while p < end and 0x30 <= buf[p] <= 0x39:
                p += 1
            if p == s2:
                raise _Fail(start, _MSG_EXPONENT)
        text = buf[start:p].decode("ascii")
        if len(text) > MAX_NUMBER_LEN:
            raise _Fail(start, _MSG_NUM_LONG)
        num = float(text)
        if math.isinf(num) or abs(num) > float(INT64_MAX):
            raise _Fail(start, _MSG_NUM_RANGE)
        if text.lstrip("-").isdigit() and str(int(text)) == text:
            return int(text), p
        return UnitNumber(text), p


def _position(buf: bytes, pos: int) -> tuple[int, int]:
    line = 1 + buf.count(b"\n", 0, pos)
    line_start = buf.rfind(b"\n", 0, pos) + 1
    segment = buf[line_start:pos]
    try:
        column = 1 + len(segment.decode("utf-8"))
    except UnicodeDecodeError:
        # nxt_utf8_length fails on invalid UTF-8; Unit then reports no line/column (we keep
        # a byte count rather than inventing a missing-field format).
        column = 1 + len(segment)
    return line, column


class _NotPlain(Exception):
    """The body is not plain strict JSON with Unit's number limits: use the full parser."""


def _plain_int(text: str) -> int | UnitNumber:
    if len(text) > MAX_NUMBER_LEN or abs(int(text)) > INT64_MAX:
        raise _NotPlain
    return UnitNumber(text) if text == "-0" else int(text)


def _plain_float(text: str) -> UnitNumber:
    if len(text) > MAX_NUMBER_LEN:
        raise _NotPlain
    num = UnitNumber(text)
    if math.isinf(num) or abs(num) > float(INT64_MAX):
        raise _NotPlain
    return num


def _plain_constant(text: str) -> object:
    raise _NotPlain  # NaN, Infinity: not JSON, Unit's parser reports them


def _plain_object(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _NotPlain  # a duplicate member: Unit's parser reports where
    return obj


_PLAIN = json.JSONDecoder(
    object_pairs_hook=_plain_object,
    parse_int=_plain_int,
    parse_float=_plain_float,
    parse_constant=_plain_constant,
)
# Escaped surrogates: Unit checks their pairing with its own messages.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _parse_plain(body: bytes) -> object:
    """The common case, at C speed: strict JSON (no comments, no trailing commas, no duplicate
    members) that is valid UTF-8 and whose numbers Unit accepts. Produces exactly what the full
    parser produces for such a body; anything else raises _NotPlain."""
    if _SURROGATE_ESCAPE.search(body):
        raise _NotPlain
    try:
        return _PLAIN.decode(body.decode("utf-8"))
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, int()
        raise _NotPlain from None


def parse(body: bytes) -> object:
    """Parse a request body (BOM already removed) the way Unit does.

    Plain JSON goes through the standard library's parser; bodies with Unit's extensions
    (comments, trailing commas) or errors go through the full parser, which also produces Unit's
    error messages and positions. Raises :class:`JSONParseError` carrying Unit's detail text and
    error position.
    """
    try:
        return _parse_plain(body)
    except _NotPlain:
        return _parse_full(body)


def _parse_full(body: bytes) -> object:
    end = len(body)
    try:
        p = _skip_space(body, 0, end)
        if p == end:
            raise _Fail(0, _MSG_EMPTY)
        parser = _Parser(body)
        value, p = parser.value(p)
        p = _skip_space(body, p, end)
        if p != end:
            raise _Fail(p, _MSG_TRAILING)
    except _Fail as fail:
        line, column = _position(body, fail.pos)
        raise JSONParseError(fail.detail, fail.pos, line, column) from None
    except RecursionError:
        # Unit recurses too, without a limit; a bounded error beats a crashed handler.
        raise JSONParseError("The JSON value is nested too deeply.", 0, 1, 1) from None
    return value


# --------------------------------------------------------------------------- printing


def _escape(text: str) -> str:
    raw = text.encode("utf-8", "surrogateescape")
    if not any(b < 0x20 or b in (0x22, 0x5C) for b in raw):
        return text
    out = []
    for ch in text:
        o = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif o < 0x20:
            named = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}.get(ch)
            out.append(named if named else f"\\u00{o >> 4:X}{o & 0xF:X}")
        else:
            out.append(ch)
    return "".join(out)


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, UnitNumber):
        return value.text
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return f'"{_escape(value)}"'  # type: ignore[arg-type]


class _Pretty:
    def __init__(self) -> None:
        self.level = 0
        self.more_space = False
        self.parts: list[str] = []

    def value(self, value: object) -> None:
        if isinstance(value, dict):
            self.obj(value)
        elif isinstance(value, list):
            self.arr(value)
        else:
            self.parts.append(_scalar(value))

    def obj(self, value: dict) -> None:
        out = self.parts
        out.append("{")
        if value:
            out.append("\r\n")
            self.level += 1
            items = list(value.items())
            for n, (name, member) in enumerate(items):
                out.append("\t" * self.level)
                out.append(f'"{_escape(name)}": ')
                self.value(member)
                if n == len(items) - 1:
                    break
                out.append(",\r\n")
                if self.more_space:
                    self.more_space = False
                    out.append("\r\n")
            out.append("\r\n")
            self.level -= 1
            out.append("\t" * self.level)
            self.more_space = True
        out.append("}")

    def arr(self, value: list) -> None:
        out = self.parts
        out.append("[")
        if value:
            out.append("\r\n")
            self.level += 1
            out.append("\t" * self.level)
            self.value(value[0])
            for item in value[1:]:
                out.append(",\r\n")
                out.append("\t" * self.level)
                self.more_space = False
                self.value(item)
            out.append("\r\n")
            self.level -= 1
            out.append("\t" * self.level)
            self.more_space = True
        out.append("]")


def dumps_pretty(value: object) -> bytes:
    """Unit's pretty-printed form, including the final CRLF the controller appends."""
    printer = _Pretty()
    printer.value(value)
    printer.parts.append("\r\n")
    return "".join(printer.parts).encode("utf-8", "surrogateescape")


def dumps_compact(value: object) -> bytes:
    """Compact form in Unit's dialect (numbers as sent), used for the state file."""
    parts: list[str] = []

    def emit(v: object) -> None:
        if isinstance(v, dict):
            parts.append("{")
            for n, (k, item) in enumerate(v.items()):
                if n:
                    parts.append(",")
                parts.append(f'"{_escape(k)}":')
                emit(item)
            parts.append("}")
        elif isinstance(v, list):
            parts.append("[")
            for n, item in enumerate(v):
                if n:
                    parts.append(",")
                emit(item)
            parts.append("]")
        else:
            parts.append(_scalar(v))

    emit(value)
    return "".join(parts).encode("utf-8", "surrogateescape")
