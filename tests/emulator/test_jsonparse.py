"""Unit's JSON dialect: what the parser accepts, the errors it gives, and the printer's bytes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unit_p2p.unit.emulator.jsonparse import (
    JSONParseError,
    UnitNumber,
    dumps_compact,
    dumps_pretty,
    parse,
)


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (b'{"a": 1,}', {"a": 1}),
        (b"[1, 2,]", [1, 2]),
        (b'{"a": [1,], "b": {"c": true,},}', {"a": [1], "b": {"c": True}}),
        (b'// lead\n{"a": 1} // tail\n', {"a": 1}),
        (b'/* a */ {/* b */"a"/* c */:/* d */"v"/* e */}/* f */', {"a": "v"}),
        (b'{"a": "/* not a comment */"}', {"a": "/* not a comment */"}),
        (b"/**/1", 1),
        (b'"\\u00e9\\ud83d\\ude00\\n\\/"', "\u00e9\U0001f600\n/"),
        (b"null", None),
        (b"-12", -12),
    ],
)
def test_accepts_unit_dialect(body: bytes, value: object) -> None:
    assert parse(body) == value


@pytest.mark.parametrize(
    ("body", "detail", "offset", "line", "column"),
    [
        (b"", "An empty JSON payload isn't allowed.", 0, 1, 1),
        (b"  // only a comment\n", "An empty JSON payload isn't allowed.", 0, 1, 1),
        (b'{"a": 1, "a": 2}', "Duplicate object member.", 9, 1, 10),
        (b'{\n  "x": 1,\n  "x": 2\n}', "Duplicate object member.", 14, 3, 3),
        (b'{"a": 1} // no newline', "Unexpected character after the end", 9, 1, 10),
        (b'{"a": 1 /* open', "Either a closing brace (}) or a comma (,)", 8, 1, 9),
        (b'{"a": 1', "Unexpected end of JSON payload.  There's an object without", 7, 1, 8),
        (b"[1 2]", "Either a closing bracket (]) or a comma (,)", 3, 1, 4),
        (b'{"a" 1}', "A colon (:) is expected here.", 5, 1, 6),
        (b"01", "The number is invalid.  Leading zeros", 0, 1, 1),
        (b"1.", "A fraction part in JSON numbers", 0, 1, 1),
        (b"1e", "An exponent part in JSON numbers", 0, 1, 1),
        (b"123456789012345", "The number is too long.", 0, 1, 1),
        (b'"a\\qb"', "Unexpected backslash.", 2, 1, 3),
        (b'"a\x01"', "Unexpected character.  All control characters", 2, 1, 3),
        (b'"\\u12g4"', "Invalid escape sequence.", 5, 1, 6),
        (b'"\\ud83d"', "This 6-byte sequence does not represent", 1, 1, 2),
        (b'"\\ud83d\\u0041"', "This 12-byte sequence composes an illegal", 1, 1, 2),
        (b'"open', "There's a string without a final double quote", 5, 1, 6),
        (b"tru", "A valid JSON value is expected here.", 0, 1, 1),
        (b"1/", "A valid JSON value is expected here.", 0, 1, 1),
        # offsets count bytes, columns count characters
        ('{"é": x}'.encode(), "A valid JSON value is expected here.", 7, 1, 7),
    ],
)
def test_errors_like_unit(body: bytes, detail: str, offset: int, line: int, column: int) -> None:
    with pytest.raises(JSONParseError) as info:
        parse(body)
    err = info.value
    assert detail in err.detail
    assert (err.offset, err.line, err.column) == (offset, line, column)


def test_numbers_print_as_sent() -> None:
    value = parse(b"[1.50, 1e3, -0, 0.25, 7]")
    assert isinstance(value[0], UnitNumber)
    assert value[4] == 7 and type(value[4]) is int
    assert dumps_compact(value) == b"[1.50,1e3,-0,0.25,7]"


def test_invalid_utf8_survives_a_round_trip() -> None:
    body = b'{"k\xff": "v\xfe"}'
    assert dumps_compact(parse(body)) == b'{"k\xff":"v\xfe"}'


def test_pretty_printer_matches_unit_layout() -> None:
    conf = {
        "listeners": {"*:80": {"pass": "routes"}},
        "routes": [{"match": {"uri": "/a"}, "action": {"return": 301, "location": "/b"}}],
        "applications": {},
        "settings": {"http": {"static": {"mime_types": {}}}, "x": 1},
    }
    assert dumps_pretty(conf) == (
        b'{\r\n\t"listeners": {\r\n\t\t"*:80": {\r\n\t\t\t"pass": "routes"\r\n\t\t}\r\n\t},'
        b'\r\n\r\n\t"routes": [\r\n\t\t{\r\n\t\t\t"match": {\r\n\t\t\t\t"uri": "/a"\r\n\t\t\t},'
        b'\r\n\r\n\t\t\t"action": {\r\n\t\t\t\t"return": 301,\r\n\t\t\t\t"location": "/b"'
        b'\r\n\t\t\t}\r\n\t\t}\r\n\t],\r\n\r\n\t"applications": {},\r\n\t"settings": {\r\n'
        b'\t\t"http": {\r\n\t\t\t"static": {\r\n\t\t\t\t"mime_types": {}\r\n\t\t\t}\r\n\t\t},'
        b'\r\n\r\n\t\t"x": 1\r\n\t}\r\n}\r\n'
    )
    assert dumps_pretty('a"b\\c\x01\t/é') == '"a\\"b\\\\c\\u0001\\t/é"\r\n'.encode()


# Unit keeps at most 14 characters of a number.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**13) + 1, 10**14 - 1) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_printers_round_trip(value: object) -> None:
    assert parse(dumps_compact(value)) == value
    assert parse(dumps_pretty(value)) == value
    # Unit's pretty form is valid standard JSON too.
    assert json.loads(dumps_pretty(value).decode("utf-8", "surrogateescape")) == value


_JSON_TEXT = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**15), 10**15)
    | st.floats(allow_nan=False, allow_infinity=False).map(repr)
    | st.sampled_from(["-0", "1.50", "1e3", "-0.0", "1E+2", "0.1e-5", "12345678901234"])
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.lists(st.tuples(st.sampled_from(["a", "b", "é", "\U0001f600"]), inner), max_size=4),
    max_leaves=12,
)


def _render(value) -> str:
    """JSON text for a generated value: floats as raw number text, pairs as objects (keys may
    repeat), strings escaped by the standard library."""
    if isinstance(value, str) and value[:1] in "-0123456789" and value.lstrip("-")[:1].isdigit():
        return value
    if isinstance(value, list) and value and all(isinstance(v, tuple) for v in value):
        return "{" + ", ".join(f"{json.dumps(k)}: {_render(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    return json.dumps(value)


def _typed(value):
    if isinstance(value, UnitNumber):
        return ("n", value.text)
    if isinstance(value, dict):
        return ("o", [(k, _typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("a", [_typed(v) for v in value])
    return (type(value).__name__, value)


@given(_JSON_TEXT)
def test_the_fast_path_parses_exactly_like_the_full_parser(value) -> None:
    from unit_p2p.unit.emulator import jsonparse

    body = _render(value).encode()
    try:
        full = _typed(jsonparse._parse_full(body))
    except JSONParseError as exc:
        full = exc
    try:
        plain = jsonparse._parse_plain(body)
    except jsonparse._NotPlain:
        return  # the full parser decides
    assert _typed(plain) == full, body


@pytest.mark.parametrize(
    "body",
    [b'{"a": 1, "a": 2}', b'{"a": 1,}', b"// c\n{}", b"NaN", b'"\\ud800"', b"123456789012345",
     b"\xff", b'"\x01"', b"[1e999]", b"-01"],
)
def test_the_fast_path_leaves_unit_dialect_and_errors_to_the_full_parser(body: bytes) -> None:
    from unit_p2p.unit.emulator import jsonparse

    with pytest.raises(jsonparse._NotPlain):
        jsonparse._parse_plain(body)
