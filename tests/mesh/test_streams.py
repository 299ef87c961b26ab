"""The Stream wrapper over real yamux streams: large bodies, caps, timeouts, refusals."""

from __future__ import annotations

import os
import struct
import time

import pytest
import trio
from libp2p.stream_muxer.yamux.yamux import (
    DEFAULT_WINDOW_SIZE,
    HEADER_SIZE,
    TYPE_WINDOW_UPDATE,
    YAMUX_HEADER_FORMAT,
)

from unit_p2p.errors import MeshError, WireError
from unit_p2p.mesh.host import PingingYamux

from .helpers import start_node

ECHO = "/test/echo/1"
CAP = 9 * 1024 * 1024


async def _pair(nursery):
    server = await start_node(nursery)
    client = await start_node(nursery)
    results: list[object] = []

    async def echo(peer_id, stream):
        try:
            body = await stream.receive_all(CAP, timeout=20)
        except WireError as exc:
            results.append(exc)
            raise
        results.append(len(body))
        await stream.send_all(body[::-1])
        await stream.close_write()

    server.mesh.set_stream_handler(ECHO, echo)
    with trio.fail_after(10):
        await client.mesh.connect(server.addr)
    return server, client, results


async def _roundtrip(client, server, body: bytes) -> bytes:
    stream = await client.mesh.open_stream(server.peer_id, ECHO)
    await stream.send_all(body)
    await stream.close_write()
    answer = await stream.receive_all(CAP, timeout=20)
    await stream.close()
    return answer


@pytest.mark.parametrize("size", [0, 1, 1_500_000, 8 * 1024 * 1024])
async def test_bodies_roundtrip_intact(nursery, size):
    server, client, results = await _pair(nursery)
    body = os.urandom(size)
    started = time.monotonic()
    with trio.fail_after(30):
        assert await _roundtrip(client, server, body) == body[::-1]
    print(f"{size} bytes round trip in {(time.monotonic() - started) * 1000:.0f} ms")
    assert results == [size]


async def test_many_small_writes_form_one_body(nursery):
    server, client, _ = await _pair(nursery)
    with trio.fail_after(10):
        stream = await client.mesh.open_stream(server.peer_id, ECHO)
        for i in range(100):
            await stream.send_all(bytes([i]) * 100)
        await stream.close_write()
        answer = await stream.receive_all(CAP, timeout=10)
    assert answer == b"".join(bytes([i]) * 100 for i in range(100))[::-1]


async def test_over_cap_is_refused_by_the_receiver(nursery):
    server, client, results = await _pair(nursery)
    with trio.fail_after(20):
        stream = await client.mesh.open_stream(server.peer_id, ECHO)
        # the receiver rejects on the frame header, so the sender may or may not finish writing
        with pytest.raises(MeshError):
            await stream.send_all(os.urandom(CAP + 1))
            await stream.close_write()
            await stream.receive_all(CAP, timeout=10)
    assert isinstance(results[0], WireError) and results[0].reason == "too_large"
    # the connection survives the refusal
    with trio.fail_after(10):
        assert await _roundtrip(client, server, b"abc") == b"cba"


async def test_client_side_cap(nursery):
    server = await start_node(nursery)
    client = await start_node(nursery)

    async def big(peer_id, stream):
        await stream.send_all(b"x" * 100_000)
        await stream.close_write()

    server.mesh.set_stream_handler("/test/big/1", big)
    with trio.fail_after(10):
        await client.mesh.connect(server.addr)
        stream = await client.mesh.open_stream(server.peer_id, "/test/big/1")
        with pytest.raises(WireError) as err:
            await stream.receive_all(99_999, timeout=5)
    assert err.value.reason == "too_large"


async def test_silent_peer_times_out(nursery):
    server = await start_node(nursery)
    client = await start_node(nursery)
    release = trio.Event()

    async def silent(peer_id, stream):
        await release.wait()

    server.mesh.set_stream_handler("/test/silent/1", silent)
    with trio.fail_after(10):
        await client.mesh.connect(server.addr)
        stream = await client.mesh.open_stream(server.peer_id, "/test/silent/1")
        started = trio.current_time()
        with pytest.raises(MeshError, match="timed out"):
            await stream.receive_all(1024, timeout=0.5)
        assert trio.current_time() - started < 2
    release.set()


async def test_truncated_body_is_not_mistaken_for_complete(nursery):
    server = await start_node(nursery)
    client = await start_node(nursery)

    async def half(peer_id, stream):
        await stream.send_all(b"partial")
        await stream.reset()  # dies before the end marker

    server.mesh.set_stream_handler("/test/half/1", half)
    with trio.fail_after(10):
        await client.mesh.connect(server.addr)
        stream = await client.mesh.open_stream(server.peer_id, "/test/half/1")
        with pytest.raises(MeshError):
            await stream.receive_all(1024, timeout=5)


async def test_open_stream_failures_are_mesh_errors(nursery):
    server = await start_node(nursery)
    client = await start_node(nursery, trust_mode="allowlist", trusted=[server.peer_id])
    stranger = await start_node(nursery)
    with trio.fail_after(15):
        await client.mesh.connect(server.addr)
        with pytest.raises(MeshError):  # nobody serves it
            await client.mesh.open_stream(server.peer_id, "/test/nobody/1")
        with pytest.raises(MeshError, match="not trusted"):
            await client.mesh.open_stream(stranger.peer_id, ECHO)
        with pytest.raises(MeshError):
            await client.mesh.open_stream("not-a-peer", ECHO)


@pytest.mark.parametrize("size", [100 * 1024, 4 * 1024 * 1024])
async def test_the_receiver_credits_the_window_once_per_half_window_read(nursery, monkeypatch,
                                                                          size):
    # py-libp2p's yamux answered every read with a WINDOW_UPDATE frame: one more Noise frame
    # each way for every small message. go-yamux's rule: one per half window read.
    updates: list[int] = []
    real_write = PingingYamux._write_frame

    async def counting_write(self, data: bytes) -> None:
        if len(data) == HEADER_SIZE:
            _, kind, flags, _, length = struct.unpack(YAMUX_HEADER_FORMAT, data)
            if kind == TYPE_WINDOW_UPDATE and flags == 0 and length:
                updates.append(length)
        await real_write(self, data)

    monkeypatch.setattr(PingingYamux, "_write_frame", counting_write)
    server, client, results = await _pair(nursery)
    body = os.urandom(size)
    with trio.fail_after(30):
        stream = await client.mesh.open_stream(server.peer_id, ECHO)
        for offset in range(0, size, 1024):  # as many small writes as a busy link carries
            await stream.send_all(body[offset:offset + 1024])
        await stream.close_write()
        assert await stream.receive_all(CAP, timeout=20) == body[::-1]
        await stream.close()
    assert results == [size]
    half_window = DEFAULT_WINDOW_SIZE // 2
    # both ends read `size` bytes (the body, then its echo): a credit per half window each
    assert len(updates) <= 2 * (size // half_window), updates
    assert all(n >= half_window for n in updates)
