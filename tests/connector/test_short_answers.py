"""Answers Unit cuts short: recognised as such, and big values read in pieces that arrive whole.

The server here cuts every answer body after ``limit`` bytes, deterministically (real Unit's cut
depends on how fast the client reads; the emulator's is tested in tests/emulator and end to end
in tests/agent).
"""

from __future__ import annotations

import json

import pytest

from unit_p2p import errors
from unit_p2p.unit.client import _BATCH, PIECE_ATTEMPTS, UnitClient
from unit_p2p.unit.emulator.jsonparse import dumps_pretty


def routes(n: int, tag: str = "r") -> list[dict]:
    return [{"match": {"uri": f"/{tag}/{i:05d}/*"}, "action": {"return": 200 + i % 3}}
            for i in range(n)]


def config(n: int) -> dict:
    return {
        "listeners": {"*:8080": {"pass": "routes"}},
        "routes": routes(n),
        "applications": {"app": {"type": "python", "path": "/srv", "module": "wsgi"}},
    }


def test_a_short_answer_is_short_not_unreachable(cutting) -> None:
    server = cutting({}, limit=5)
    with pytest.raises(errors.UnitShortAnswer) as info:
        UnitClient(server.address).put("/config", {"listeners": {}})
    assert not isinstance(info.value, errors.UnitUnreachable)
    assert (info.value.received, info.value.expected) == (5, 43)
    text = str(info.value)
    assert "5 of 43 body bytes arrived" in text
    assert "send buffer" in text and "TCP" in text
    assert "1024" not in text


def test_a_big_config_is_read_in_pieces_and_reassembled(cutting) -> None:
    conf = config(600)
    limit = 8192
    assert len(dumps_pretty(conf)) > 5 * limit
    server = cutting(conf, limit=limit)
    client = UnitClient(server.address)
    got = client.get("/config")
    assert got == conf
    assert list(got) == list(conf)  # Unit's member order is kept
    assert client.piecewise_reads == 1
    # Complete elements of the cut answer are kept: only the rest is asked for one by one
    # (a batch at a time) until Unit answers 404, and the application after the cut by name.
    element_gets = {t for t in server.targets if t.startswith("GET /config/routes/")}
    assert "GET /config/routes/0" not in element_gets
    assert {f"GET /config/routes/{i}" for i in range(500, 601)} <= element_gets
    assert len(element_gets) < 600 + _BATCH
    assert "GET /config/applications" in server.targets
    # One more read of the whole answer checks that nothing changed meanwhile.
    assert server.targets.count("GET /config") == 2


def test_pieces_that_are_still_cut_are_split_further(cutting) -> None:
    conf = {"routes": {"main": routes(300, "m"), "spare": routes(2, "s")},
            "listeners": {"*:80": {"pass": "routes/main"}}}
    server = cutting(conf, limit=2048)
    client = UnitClient(server.address)
    # "spare" and "listeners" come after the cut of the named-routes object, where Unit cannot
    # list them: the object's announced length tells that something is missing.
    with pytest.raises(errors.UnitShortAnswer, match="cut its answer to GET /config short"):
        client.get("/config")
    # With the big member last, the object's length proves it complete.
    conf = {"listeners": {"*:80": {"pass": "routes/main"}},
            "routes": {"spare": routes(2, "s"), "main": routes(300, "m")}}
    server = cutting(conf, limit=2048)
    assert UnitClient(server.address).get("/config") == conf
    assert "GET /config/routes" in server.targets  # the object, read by its own path


def test_a_change_during_the_read_starts_it_over(cutting) -> None:
    before, after = config(300), config(301)
    server = cutting(before, limit=4096)

    def change(n: int) -> None:
        if n == 20:
            server.tree = after

    server.on_request = change
    client = UnitClient(server.address)
    assert client.get("/config") == after
    assert client.piecewise_reads == 2


def test_retries_are_bounded(cutting) -> None:
    server = cutting(config(300), limit=4096)
    counter = iter(range(10**6))
    # A config that changes during every read can never be read consistently.
    server.on_request = lambda n: server.tree.__setitem__("routes", routes(300, str(next(counter))))
    client = UnitClient(server.address)
    with pytest.raises(errors.UnitShortAnswer, match=f"{PIECE_ATTEMPTS} attempts"):
        client.get("/config")
    assert client.piecewise_reads == PIECE_ATTEMPTS


def test_a_value_that_cannot_be_split_fails_after_a_few_tries(cutting) -> None:
    conf = {"settings": {"http": {"server_version": False}}, "access_log": "x" * 5000}
    server = cutting(conf, limit=1024)
    with pytest.raises(errors.UnitShortAnswer) as info:
        UnitClient(server.address).get("/config/access_log")
    assert info.value.expected == len(json.dumps(conf["access_log"])) + 2
    assert len(server.targets) <= 2 * PIECE_ATTEMPTS + 1


def test_whole_answers_take_one_request(cutting) -> None:
    conf = config(50)
    server = cutting(conf)
    client = UnitClient(server.address)
    assert client.get("/config") == conf
    assert server.targets == ["GET /config"]
    assert client.piecewise_reads == 0


@pytest.mark.parametrize("cut", range(1, 140))
def test_every_cut_point_keeps_only_complete_values(cut: int) -> None:
    from unit_p2p.unit.client import _scan

    value = {"a": [1234, {"b": "x,y"}, [5.5, True]], "cc": {"d": 12}, "e": "tail"}
    text = dumps_pretty(value).decode()[:cut]
    part = _scan(text, 0)
    assert part is not None and not part.array

    def check(part, whole) -> None:
        if part.array:
            assert whole[: len(part.items)] == part.items
            return
        assert list(whole.items())[: len(part.items)] == part.items
        if part.key is not None:
            assert part.key == list(whole)[len(part.items)]
            if part.inner is not None:
                check(part.inner, whole[part.key])

    check(part, value)
