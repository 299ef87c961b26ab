"""Fuzzing the API's request decoding, beside tests/sync/test_wire_fuzz.py.

Two layers, each fed a few hundred generated inputs:

- the HTTP layer (``api.http``): arbitrary bytes, and well-formed requests with wrong lengths,
  chunking, pipelining and truncation, on one connection. Whatever arrives, the connection's task
  ends without an exception, and what went back is a sequence of well-formed answers with the
  API's JSON error document, never a 500.
- the routes (``AgentApi``): request bodies from valid to hostile JSON. Every answer is 200 or a
  documented 4xx with ``{"error", "detail"}``, and the agent is only ever called with values
  that passed validation.
"""

from __future__ import annotations

import json
import math

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unit_p2p.api.http import Limits, Request, _serve_connection, json_response, problem
from unit_p2p.api.server import AgentApi

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
LIMITS = Limits(max_connections=4, head_timeout=5, body_timeout=5, send_timeout=5,
                max_head=2048, max_body=4096)
HTTP_ANSWERS = {200, 400, 404, 405, 408, 413, 431, 501}


class Echo:
    """A service that admits /ok and answers with what it read."""

    def admit(self, request: Request):
        return None if request.path == "/ok" else problem(404, "not_found", "no")

    async def respond(self, request: Request):
        return json_response(200, {"method": request.method, "size": len(request.body)})


async def _exchange(data: bytes) -> bytes:
    client, server = trio.testing.memory_stream_pair()
    answer = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve_connection, server, Echo(), LIMITS)
        await client.send_all(data)
        await client.send_eof()
        while chunk := await client.receive_some(65536):
            answer += chunk
    return bytes(answer)


def serve_bytes(data: bytes) -> bytes:
    """All the connection task sent back for ``data`` (timeouts on a mock clock: instant)."""
    return trio.run(_exchange, data, clock=trio.testing.MockClock(autojump_threshold=0))


def split_answers(raw: bytes) -> list[tuple[int, bytes]]:
    answers = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, raw[:200]
        lines = head.split(b"\r\n")
        assert lines[0].startswith(b"HTTP/1.1 "), lines[0]
        status = int(lines[0].split()[1])
        headers = dict(line.split(b": ", 1) for line in lines[1:])
        if status == 100:
            raw = rest
            continue
        length = int(headers[b"content-length"])
        assert len(rest) >= length
        answers.append((status, rest[:length]))
        raw = rest[length:]
    return answers


def check_answers(raw: bytes) -> list[tuple[int, dict]]:
    out = []
    for status, body in split_answers(raw):
        assert status in HTTP_ANSWERS, (status, body)
        if status == 405:  # HEAD: no body
            assert body == b""
            out.append((status, {}))
            continue
        doc = json.loads(body)
        if status != 200:
            assert set(doc) == {"error", "detail"} and isinstance(doc["detail"], str)
            assert len(doc["detail"]) < 300
        out.append((status, doc))
    return out


methods = st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"G\x00T", b"", b"OPTIONS"])
paths = st.sampled_from([b"/ok", b"/nope", b"*", b"/ok?x=1", b"", b"/" + b"a" * 3000, b"/\xff"])
header_lines = st.lists(st.sampled_from([
    b"Host: a", b"Content-Length: 5", b"Content-Length: 0", b"Content-Length: -1",
    b"Content-Length: 99999999999999999999", b"Content-Length: 5, 6", b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip", b"Connection: close", b"Expect: 100-continue", b"X: \x7f",
    b"Bad header", b" folded", b"Content-Type: application/json",
]), max_size=5)
bodies = st.one_of(st.binary(max_size=64), st.sampled_from([
    b"5\r\nhello\r\n0\r\n\r\n", b"ffffffffffffffff\r\n", b"2\r\nab", b"0\r\n\r\n", b"{}",
]))


@st.composite
def requests(draw) -> bytes:
    line = draw(methods) + b" " + draw(paths) + b" " + draw(
        st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9", b"HTTP/1.1 x"]))
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in draw(header_lines)) + b"\r\n" + draw(
        bodies)


@st.composite
def connections(draw) -> bytes:
    data = b"".join(draw(st.lists(requests(), min_size=1, max_size=3)))
    cut = draw(st.one_of(st.none(), st.integers(0, max(len(data), 1))))
    return data if cut is None else data[:cut]


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_end_one_connection_cleanly(data):
    check_answers(serve_bytes(data))


@FUZZ
@given(connections())
def test_malformed_and_pipelined_requests_get_well_formed_answers(data):
    check_answers(serve_bytes(data))


def test_well_formed_requests_are_served_in_order():
    data = (b"POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
            b"POST /ok HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
    answers = check_answers(serve_bytes(data))
    assert [s for s, _ in answers] == [200, 200, 404, 200]
    assert [d.get("size") for _, d in answers] == [5, 3, None, 0]


def test_head_is_405_without_a_body_and_the_connection_goes_on():
    answers = check_answers(serve_bytes(b"HEAD /ok HTTP/1.1\r\nHost: a\r\n\r\n"
                                        b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n"))
    assert [s for s, _ in answers] == [405, 200]


def test_a_body_shorter_than_announced_then_eof_is_a_400_for_that_connection():
    raw = serve_bytes(b"POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n{")
    [(status, doc)] = check_answers(raw)
    assert status == 400 and "expected 1000" in doc["detail"]


# --- the routes ---------------------------------------------------------------------------------


class Result:
    def to_json(self, with_diff: bool) -> dict:
        return {"changed": False, "diff": with_diff}


class StubAgent:
    """Records what the routes pass on; checks it is what validation promised."""

    def __init__(self):
        self.calls = []

    def _check_wait_args(self, timeout, min_peers, require_all):
        assert type(timeout) is float and 0 < timeout <= 3600 and math.isfinite(timeout)
        assert min_peers is None or (type(min_peers) is int and min_peers >= 0)
        assert type(require_all) is bool

    async def publish(self, config, *, dry_run, wait, timeout, min_peers, require_all, force):
        assert config is None or isinstance(config, dict)
        assert type(dry_run) is bool and type(wait) is bool and type(force) is bool
        self._check_wait_args(timeout, min_peers, require_all)
        self.calls.append("publish")
        return Result()

    async def wait(self, revision, *, timeout, min_peers, require_all):
        self._check_wait_args(timeout, min_peers, require_all)
        self.calls.append("wait")
        return Result()


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)
fields = st.sampled_from(["config", "wait", "timeout", "dry_run", "min_peers", "require_all",
                          "diff", "force", "revision", "bogus", "dry_run"])
REV = "1@12D3KooWKp3JpYh1RhD1VvHQt1bDxHbZ3mJ5YvbD1Y4m2rR1cBqU"


@st.composite
def bodies_for_routes(draw) -> bytes:
    kind = draw(st.integers(0, 4))
    if kind == 0:  # arbitrary bytes
        return draw(st.binary(max_size=200))
    if kind == 1:  # any JSON value
        return json.dumps(draw(json_values)).encode()
    members = draw(st.lists(st.tuples(fields, json_values), max_size=6))
    if kind == 2:  # an object of known and unknown fields, duplicates possible
        pass
    elif kind == 3:  # plausible values
        members += [("timeout", draw(st.one_of(st.floats(-1, 4000), st.integers(-5, 5000)))),
                    ("revision", draw(st.sampled_from([REV, "x@y", "", "1@"])))]
    text = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in members) + "}"
    if kind == 4:  # and then damaged
        pos = draw(st.integers(0, len(text)))
        text = text[:pos] + draw(st.sampled_from(["NaN", "Infinity", "\\ud800", "[" * 80, "\x00",
                                                  '"', "}", ""])) + text[pos:]
    return text.encode("utf-8", "surrogatepass")


async def _respond(route: str, body: bytes):
    agent = StubAgent()
    api = AgentApi(agent)
    request = Request("POST", route, {}, body)
    assert api.admit(request) is None
    response = await api.respond(request)
    return response, agent


@FUZZ
@given(st.sampled_from(["/v1/publish", "/v1/wait"]), bodies_for_routes())
def test_route_bodies_are_answered_200_or_a_documented_error(route, body):
    response, agent = trio.run(_respond, route, body)
    doc = json.loads(response.body)
    if response.status == 200:
        assert agent.calls == [route.rsplit("/", 1)[1]]
        return
    assert response.status in (400, 422), (response.status, doc)
    assert set(doc) == {"error", "detail"} and len(doc["detail"]) < 300
    assert doc["error"] in ("bad_request", "not_an_object")
    assert agent.calls == []
