"""Unit 1.35's unix-socket quirks: big answers cut at the send buffer, unix listener directories.

The emulator's write of a cut answer happens in one step of the trio loop, and these tests'
clients run in that same loop, so no byte is read before the emulator gives up: the cut is
deterministic here (with a client in another thread or process it depends on how fast that
client reads, as with Unit).
"""

from __future__ import annotations

import json
import socket

import trio

from unit_p2p.unit.client import unit_path
from unit_p2p.unit.emulator.jsonparse import dumps_pretty
from unit_p2p.unit.emulator.rawclient import request

APPLY_FAILED = b'{\r\n\t"error": "Failed to apply new configuration."\r\n}\r\n'


def big_config(routes: int) -> dict:
    table = [
        {"match": {"uri": f"/items/{i:05d}/*"}, "action": {"return": 200}} for i in range(routes)
    ]
    return {"listeners": {"*:8080": {"pass": "routes"}}, "routes": table}


def unix_send_buffer() -> int:
    """The send buffer a fresh unix socket gets (net.core.wmem_default)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        return a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)


async def test_unix_answer_larger_than_the_send_buffer_is_cut(start_emulator) -> None:
    emulator = await start_emulator()
    conf = big_config(5000)
    whole = dumps_pretty(conf)
    assert len(whole) > 2 * unix_send_buffer()
    with trio.fail_after(30):
        put = await request(emulator.control_address, "PUT", "/config", json.dumps(conf).encode())
        assert put.status == 200
        got = await request(emulator.control_address, "GET", "/config")
    assert got.status == 200
    assert got.headers["Content-Length"] == str(len(whole))
    assert 0 < len(got.body) < len(whole)
    assert whole.startswith(got.body)  # a prefix of the right answer, then EOF
    assert len(got.body) <= 2 * unix_send_buffer()
    assert emulator.cut_answers == 1
    with trio.fail_after(10):
        small = await request(emulator.control_address, "GET", "/config/routes/4999")
    assert small.body == dumps_pretty(conf["routes"][4999])
    assert emulator.cut_answers == 1


async def test_whole_answers_when_switched_off_and_over_tcp(start_emulator) -> None:
    conf = json.dumps(big_config(5000)).encode()
    whole = dumps_pretty(json.loads(conf))
    for emulator in (
        await start_emulator(cut_unix_answers=False),
        await start_emulator("127.0.0.1:0"),
    ):
        with trio.fail_after(30):
            assert (await request(emulator.control_address, "PUT", "/config", conf)).status == 200
            got = await request(emulator.control_address, "GET", "/config")
        assert got.body == whole
        assert emulator.cut_answers == 0


async def test_unix_listener_in_a_missing_directory_fails_to_apply(start_emulator, tmp_path):
    emulator = await start_emulator()
    addr = emulator.control_address
    good = {"listeners": {"*:8080": {"pass": "routes"}}, "routes": []}
    missing = {"listeners": {f"unix:{tmp_path}/nope/l.sock": {"pass": "routes"}}, "routes": []}
    present = {"listeners": {f"unix:{tmp_path}/l.sock": {"pass": "routes"}}, "routes": []}
    with trio.fail_after(10):
        assert (await request(addr, "PUT", "/config", json.dumps(good).encode())).status == 200
        before = (await request(addr, "GET", "/config")).body
        got = await request(addr, "PUT", "/config", json.dumps(missing).encode())
        assert (got.status, got.body) == (500, APPLY_FAILED)
        assert (await request(addr, "GET", "/config")).body == before
        sub_path = unit_path("config", "listeners", f"unix:{tmp_path}/nope/x.sock")
        sub = await request(addr, "PUT", sub_path, b'{"pass": "routes"}')
        assert sub.status == 500
        assert (await request(addr, "GET", "/config")).body == before
        assert (await request(addr, "PUT", "/config", json.dumps(present).encode())).status == 200
    assert emulator.config == present
    assert not (tmp_path / "l.sock").exists()  # accepted, but no file is created
