"""Message streams (mesh/notify.py) over real yamux: one long-lived stream per peer for one-way
messages, the one-shot predecessor as a fallback, resets, caps, idle ends and disconnects."""

from __future__ import annotations

import pytest
import trio

from unit_p2p.errors import MeshError
from unit_p2p.mesh import MeshTuning

from .helpers import start_node, wait_for

NEW = "/test/messages/2.0.0"
OLD = "/test/messages/1.0.0"
CAP = 1000


class Inbox:
    """A message handler that records what arrives and lets a test await it."""

    def __init__(self):
        self.got: list[tuple[str, bytes]] = []
        self._changed = trio.Event()

    async def __call__(self, peer: str, data: bytes) -> None:
        self.got.append((peer, data))
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, n: int) -> None:
        while len(self.got) < n:
            await self._changed.wait()

    def data(self) -> list[bytes]:
        return [d for _, d in self.got]


async def _pair(nursery, *, server_idle: float = 60.0, client_idle: float = 60.0,
                old_only: bool = False):
    server = await start_node(nursery, tuning=MeshTuning(message_idle=server_idle))
    client = await start_node(nursery, tuning=MeshTuning(message_idle=client_idle))
    inbox = Inbox()
    if old_only:  # an agent of the previous version: one message per stream
        async def old_handler(peer, stream):
            await inbox(peer, await stream.receive_all(CAP, 5))

        server.mesh.set_stream_handler(OLD, old_handler)
    else:
        server.mesh.set_message_handler(NEW, inbox, max_bytes=CAP, one_shot=OLD)
    client.mesh.set_message_handler(NEW, Inbox(), max_bytes=CAP, one_shot=OLD)
    with trio.fail_after(10):
        await client.mesh.connect(server.addr)
    return server, client, inbox


async def test_many_messages_share_one_stream_in_order_each_once(nursery):
    server, client, inbox = await _pair(nursery)
    sent = [f"message {i}".encode() for i in range(50)]
    with trio.fail_after(20):
        for data in sent:
            await client.mesh.send_message(server.peer_id, NEW, data)
        await inbox.wait_for(len(sent))
    assert inbox.data() == sent
    assert {peer for peer, _ in inbox.got} == {client.peer_id}
    assert client.mesh.stats["message_streams_opened"] == 1
    assert server.mesh.stats["message_streams_served"] == 1
    assert client.mesh.stats["message_one_shot_sent"] == 0


async def test_concurrent_messages_open_one_stream_and_never_interleave(nursery):
    server, client, inbox = await _pair(nursery)
    sent = {bytes([i]) * (CAP - i) for i in range(30)}  # big enough to need several writes
    with trio.fail_after(20):
        async with trio.open_nursery() as senders:
            for data in sent:
                senders.start_soon(client.mesh.send_message, server.peer_id, NEW, data)
        await inbox.wait_for(len(sent))
    assert sorted(inbox.data()) == sorted(sent)
    assert client.mesh.stats["message_streams_opened"] == 1
    assert server.mesh.stats["handler_error"] == 0


async def test_a_peer_of_the_previous_version_gets_one_shot_streams(nursery):
    server, client, inbox = await _pair(nursery, old_only=True)
    asked: list[list[str]] = []
    opener = client.mesh.messages._open

    async def recording_open(peer_id, protocols):
        asked.append(list(protocols))
        return await opener(peer_id, protocols)

    client.mesh.messages._open = recording_open
    sent = [b"one", b"two", b"three"]
    with trio.fail_after(20):
        for data in sent:
            await client.mesh.send_message(server.peer_id, NEW, data)
        await inbox.wait_for(len(sent))
    assert inbox.data() == sent
    assert client.mesh.stats["message_one_shot_sent"] == 3
    assert client.mesh.stats["message_streams_opened"] == 0
    # both versions offered once; then the old one only (no renegotiation per message)
    assert asked == [[NEW, OLD], [OLD], [OLD]]


async def test_an_agent_of_the_previous_version_reaches_us_one_message_per_stream(nursery):
    server, client, inbox = await _pair(nursery)
    with trio.fail_after(20):
        for data in (b"one", b"two"):
            stream = await client.mesh.open_stream(server.peer_id, OLD)  # as 1.0.0 agents do
            await stream.send_all(data)
            await stream.close_write()
            await stream.close()
        await inbox.wait_for(2)
        stream = await client.mesh.open_stream(server.peer_id, OLD)
        await stream.send_all(b"x" * (CAP + 1))  # the same cap on the old protocol
        await stream.close_write()
        await stream.close()
        await wait_for(lambda: server.mesh.stats["handler_error"] == 1)
    assert sorted(inbox.data()) == [b"one", b"two"]
    assert server.mesh.stats["message_streams_served"] == 0


async def test_a_write_failure_on_a_kept_stream_is_retried_once_on_a_new_one(nursery):
    server, client, inbox = await _pair(nursery)
    with trio.fail_after(20):
        await client.mesh.send_message(server.peer_id, NEW, b"first")
        await inbox.wait_for(1)
        live = client.mesh.messages._out[server.peer_id][NEW].live

        async def failing_write(data):  # what Stream.send_frame does when a write fails
            await live.stream.reset()
            raise MeshError("stream reset")

        live.stream.send_frame = failing_write
        await client.mesh.send_message(server.peer_id, NEW, b"second")
        await inbox.wait_for(2)
    assert inbox.data() == [b"first", b"second"]
    assert client.mesh.stats["message_stream_replaced"] == 1
    assert client.mesh.stats["message_streams_opened"] == 2


async def test_a_stream_the_receiver_reset_when_idle_is_replaced(nursery):
    # the receiver ends a stream idle for 2 x its message_idle (0.2 s), long before the
    # sender's own idle close (60 s)
    server, client, inbox = await _pair(nursery, server_idle=0.1)
    with trio.fail_after(20):
        await client.mesh.send_message(server.peer_id, NEW, b"first")
        await inbox.wait_for(1)
        await wait_for(lambda: server.mesh.stats["message_streams_idle_reset"] == 1)
        # (a message written while the reset is on its way would be lost: no receipts)
        await wait_for(lambda: client.mesh.messages.open_streams(server.peer_id) == 0)
        await client.mesh.send_message(server.peer_id, NEW, b"second")
        await inbox.wait_for(2)
    assert inbox.data() == [b"first", b"second"]
    assert client.mesh.stats["message_streams_opened"] == 2
    assert server.mesh.stats["handler_error"] == 0


async def test_an_oversized_frame_resets_the_stream_not_the_connection_and_is_counted(nursery):
    server, client, inbox = await _pair(nursery)
    with trio.fail_after(20):
        await client.mesh.send_message(server.peer_id, NEW, b"fits")
        await client.mesh.send_message(server.peer_id, NEW, b"x" * (CAP + 1))
        await wait_for(lambda: server.mesh.stats["handler_error"] == 1)
        # the sender learns of the reset (its watcher sees it) and drops the stream
        await wait_for(lambda: client.mesh.messages.open_streams(server.peer_id) == 0)
        await client.mesh.send_message(server.peer_id, NEW, b"after")
        await inbox.wait_for(2)
    assert inbox.data() == [b"fits", b"after"]
    assert server.mesh.trust.rejected["handler_error"] == 1
    assert server.peer_id in client.mesh.connected_peers()


async def test_an_idle_stream_is_closed_by_the_sender_and_reopened_on_use(nursery):
    server, client, inbox = await _pair(nursery, client_idle=0.2)
    with trio.fail_after(20):
        await client.mesh.send_message(server.peer_id, NEW, b"first")
        await wait_for(lambda: client.mesh.stats["message_streams_idle_closed"] == 1)
        assert client.mesh.messages.open_streams(server.peer_id) == 0
        await client.mesh.send_message(server.peer_id, NEW, b"second")
        await inbox.wait_for(2)
    assert inbox.data() == [b"first", b"second"]
    assert client.mesh.stats["message_streams_opened"] == 2
    # ended with the end marker: no error, no reset on the receiver's side
    assert server.mesh.stats["handler_error"] == 0
    assert server.mesh.stats["message_streams_idle_reset"] == 0


async def test_a_disconnect_drops_the_stream_and_a_reconnect_works(nursery):
    server, client, inbox = await _pair(nursery)
    with trio.fail_after(20):
        await client.mesh.send_message(server.peer_id, NEW, b"first")
        await inbox.wait_for(1)
        assert client.mesh.messages.open_streams(server.peer_id) == 1
        await client.mesh.disconnect(server.peer_id)
        assert client.mesh.messages.open_streams(server.peer_id) == 0
        # dropped by the mesh's connection hook, or by its watcher if the close reached it first
        stats = client.mesh.stats
        assert stats["message_streams_conn_closed"] + stats["message_streams_ended_by_peer"] == 1
        await client.mesh.connect(server.addr)
        await client.mesh.send_message(server.peer_id, NEW, b"second")
        await inbox.wait_for(2)
    assert inbox.data() == [b"first", b"second"]
    assert client.mesh.stats["message_streams_opened"] == 2


async def test_sending_needs_a_declared_protocol(nursery):
    server, client, _ = await _pair(nursery)
    with trio.fail_after(20), pytest.raises(MeshError, match="not a declared"):
        await client.mesh.send_message(server.peer_id, "/test/undeclared/1", b"x")
