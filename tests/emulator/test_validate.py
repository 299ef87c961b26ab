"""Whole-configuration validation: the first problem, in Unit's words."""

from __future__ import annotations

import pytest

from unit_p2p.unit.emulator.jsonparse import parse
from unit_p2p.unit.emulator.listeners import ListenerAddress, parse_listener
from unit_p2p.unit.emulator.validate import ConfigInvalid, validate

ROUTES = '"routes": [{"action": {"return": 200}}]'


@pytest.mark.parametrize(
    ("conf", "detail"),
    [
        ('"x"', "The configuration must be an object, but not a string."),
        ("1.5", "The configuration must be an object, but not a fractional number."),
        ('{"listeners": []}', 'The "listeners" value must be an object, but not an array.'),
        (
            '{"routes": "x"}',
            'The "routes" value must be either an array or an object, but not a string.',
        ),
        (
            '{"access_log": 1}',
            'The "access_log" value must be either a string or an object, but not an integer '
            "number.",
        ),
        (
            '{"listeners": {"*:80": 1}}',
            'The "*:80" value must be an object, but not an integer number.',
        ),
        ('{"listeners": {"*:80": {"foo": 1}}}', 'Unknown parameter "foo".'),
        ('{"listeners": {"host:80": {}}}', 'The listener address "host:80" is invalid.'),
        ('{"routes": [1]}', 'The "routes" array must contain only object values.'),
        ('{"routes": {"main": {}}}', 'The "main" value must be an array, but not an object.'),
        (
            '{"routes": [{"action": {}}]}',
            'The "action" object must have either "pass", "return", '
            '"share", or "proxy" option set.',
        ),
        (
            '{"routes": [{"action": {"return": 200, "share": "/x"}}]}',
            'The "action" object must have just one of "pass", "return", "share", or "proxy" '
            "options set.",
        ),
        (
            '{"routes": [{"action": {"return": "x"}}]}',
            'The "return" value must be an integer number, but not a string.',
        ),
        (
            '{"routes": [{"action": {"return": 1.5}}]}',
            'The "return" value must be an integer number, but not a fractional number.',
        ),
        ('{"routes": [{"action": {"return": 200, "index": "x"}}]}', 'Unknown parameter "index".'),
        (
            '{"routes": [{"action": {"proxy": "ftp://x"}}]}',
            'The "proxy" address is invalid "ftp://x"',
        ),
        ('{"routes": [{"step": 1}]}', 'Unknown parameter "step".'),
        (
            '{"listeners": {"*:80": {"pass": "routes/"}}}',
            'Request "pass" value "routes/" is invalid.',
        ),
        (
            '{"listeners": {"*:80": {"pass": "routes/a/b"}}, "routes": {"a": []}}',
            'Request "pass" points to invalid location "routes/a/b".',
        ),
        (
            '{"listeners": {"*:80": {"pass": "upstreams/u"}}}',
            'Request "pass" points to invalid location "upstreams/u".',
        ),
        (
            '{"listeners": {"*:80": {"pass": "applications/a/t"}}, "applications": {"a": '
            '{"type": "python", "module": "m"}}}',
            'Request "pass" points to invalid location "applications/a/t".',
        ),
        (
            '{"listeners": {"*:80": {"pass": "nowhere"}}}',
            'Request "pass" points to invalid location "nowhere".',
        ),
        (
            '{"applications": {"a": {"module": "m"}}}',
            'Application must have the "type" property set.',
        ),
        (
            '{"applications": {"a": {"type": "python 3.12"}}}',
            'The module to run "python 3.12" is not found among the available application modules.',
        ),
        (
            '{"applications": {"a": {"type": "python", "processes": 0}}}',
            'The "processes" number must be equal to or greater than 1.',
        ),
        (
            '{"applications": {"a": {"type": "python", "processes": {"spare": 3, "max": 2}}}}',
            'The "spare" number must be less than or equal to "max".',
        ),
        ('{"upstreams": {"u": {}}}', 'The "u" upstream must contain "servers" object value.'),
        (
            '{"listeners": {"*:443": {"pass": "routes", "tls": {"certificate": "c"}}}, '
            + ROUTES
            + "}",
            'Certificate "c" is not found.',
        ),
        # Members are checked in the order they were sent.
        ('{"bogus": 1, "listeners": []}', 'Unknown parameter "bogus".'),
    ],
)
def test_invalid_configs(conf: str, detail: str) -> None:
    with pytest.raises(ConfigInvalid) as info:
        validate(parse(conf.encode()))
    assert str(info.value) == detail


@pytest.mark.parametrize(
    "conf",
    [
        "{}",
        '{"listeners": {}, "routes": [], "applications": {}}',
        '{"listeners": {"*:80": {"pass": "routes/$host"}}}',
        '{"listeners": {"127.0.0.1:80": {"pass": "applications/a/t"}}, "applications": {"a": '
        '{"type": "python 3.11", "targets": {"t": {"module": "m"}}, "processes": {"max": 4}}}}',
        '{"listeners": {"[::1]:8080": {"pass": "upstreams/u"}}, "upstreams": {"u": '
        '{"servers": {"127.0.0.1:9000": {"weight": 0.5}}}}}',
        '{"listeners": {"unix:/run/x.sock": {"pass": "routes", "backlog": 10}}, ' + ROUTES + "}",
        '{"routes": [{"match": {"uri": ["/a", "!/b"], "anything": 1}, "action": {"share": '
        '["/srv$uri"], "fallback": {"return": 404}, "response_headers": {"X": "y"}}}]}',
        '{"settings": {"http": {"whatever": true}}, "access_log": {"path": "/x"}}',
        '{"applications": {"a": {"type": "python", "home": "/venv", "unknown_option": 1}}}',
    ],
)
def test_valid_configs(conf: str) -> None:
    validate(parse(conf.encode()), certificates=["c"])


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("127.0.0.1:8080", ListenerAddress("inet", "127.0.0.1", 8080)),
        ("127.0.0.1", ListenerAddress("inet", "127.0.0.1", 80)),
        ("*:80", ListenerAddress("inet", "", 80)),
        ("0.0.0.0:80", ListenerAddress("inet", "", 80)),
        ("[::1]:443", ListenerAddress("inet6", "::1", 443)),
        ("unix:/run/a.sock", ListenerAddress("unix", "/run/a.sock", 0)),
        ("unix:@abstract", ListenerAddress("unix", "@abstract", 0)),
        ("x", None),
        ("localhost:80", None),
        ("127.0.0.1:0", None),
        ("127.0.0.1:65536", None),
        ("1.2.3:80", None),
        ("256.1.1.1:80", None),
        (":80", None),
        ("[::1", None),
        ("[zz]:80", None),
        ("unix:", None),
    ],
)
def test_listener_addresses(name: str, parsed: ListenerAddress | None) -> None:
    assert parse_listener(name) == parsed
