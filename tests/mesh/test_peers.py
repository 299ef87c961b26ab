"""Peer tracking, dead-peer detection, listen failures and shutdown."""

from __future__ import annotations

import socket
import threading

import multiaddr
import pytest
import trio
from libp2p.peer.id import ID

from unit_p2p.errors import MeshError
from unit_p2p.mesh import MeshTuning
from unit_p2p.mesh.liveness import LivenessParams

from .helpers import make_mesh, start_node, wait_for

FAST_LIVENESS = MeshTuning(liveness=LivenessParams(interval=0.5, timeout=1.0, misses=3))


async def test_connect_and_disconnect_fire_events_on_both_sides(nursery):
    a = await start_node(nursery)
    b = await start_node(nursery)
    with trio.fail_after(10):
        assert await b.mesh.connect(a.addr) == a.peer_id
        await a.events.wait_until(lambda: b.peer_id in a.events.connected)
        await b.events.wait_until(lambda: a.peer_id in b.events.connected)
    # the callbacks ran in trio tasks (they awaited trio.Event machinery without error)
    info = {p.peer_id: p for p in b.mesh.peers()}[a.peer_id]
    assert info.connected and info.trusted and info.connected_since and info.last_seen
    assert any(addr.startswith("/ip4/127.0.0.1/tcp/") for addr in info.addrs)
    assert b.mesh.connected_peers() == [a.peer_id]

    with trio.fail_after(10):
        await b.mesh.disconnect(a.peer_id)
        await a.events.wait_until(lambda: b.peer_id not in a.events.connected)
        await b.events.wait_until(lambda: a.peer_id not in b.events.connected)
    assert a.events.log == [("connected", b.peer_id), ("disconnected", b.peer_id)]
    info = {p.peer_id: p for p in b.mesh.peers()}[a.peer_id]
    assert not info.connected and info.connected_since is None and info.last_seen


async def test_stopped_peer_is_noticed_at_once(nursery):
    a = await start_node(nursery)
    mesh, _, _ = make_mesh()
    async with trio.open_nursery() as inner:
        with trio.fail_after(10):
            await inner.start(mesh.serve)
            await mesh.connect(a.addr)
            await a.events.wait_until(lambda: mesh.peer_id in a.events.connected)
        inner.cancel_scope.cancel()
    started = trio.current_time()
    with trio.fail_after(3):  # a graceful stop closes the connection: no ping timeout needed
        await a.events.wait_until(lambda: mesh.peer_id not in a.events.connected)
    print(f"graceful stop noticed in {(trio.current_time() - started) * 1000:.0f} ms")


class FreezableProxy:
    """A TCP relay we can 'cut' without closing anything: bytes just stop flowing."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.frozen = trio.Event()
        self.listener = trio.socket.socket()
        self.port = 0
        self.streams: list[trio.SocketStream] = []

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED):
        await self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                client, _ = await self.listener.accept()
                upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
                down = trio.SocketStream(client)
                self.streams += [down, upstream]
                nursery.start_soon(self._pump, down, upstream)
                nursery.start_soon(self._pump, upstream, down)

    async def close_all(self):
        """Close every relayed socket: the connection through the proxy dies cleanly."""
        for stream in list(self.streams):
            with trio.move_on_after(1):
                await stream.aclose()

    async def _pump(self, src, dst):
        while True:
            try:
                data = await src.receive_some(65536)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            if not data:
                return
            if self.frozen.is_set():
                await trio.sleep_forever()  # hold the socket open, forward nothing
            try:
                await dst.send_all(data)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return


async def test_link_cut_is_noticed_within_the_liveness_bound(nursery):
    a = await start_node(nursery, tuning=FAST_LIVENESS)
    b = await start_node(nursery, tuning=FAST_LIVENESS)
    port = int(a.addr.split("/tcp/")[1].split("/")[0])
    proxy = FreezableProxy(port)
    await nursery.start(proxy.serve)
    with trio.fail_after(10):
        await b.mesh.connect(f"/ip4/127.0.0.1/tcp/{proxy.port}/p2p/{a.peer_id}")
        await a.events.wait_until(lambda: b.peer_id in a.events.connected)
        # pings flow while the link is up: nobody is dropped
        await wait_for(lambda: a.mesh.liveness.rtt.get(b.peer_id) is not None)
    proxy.frozen.set()
    cut = trio.current_time()
    bound = FAST_LIVENESS.liveness.bound
    with trio.fail_after(bound + 2):
        await a.events.wait_until(lambda: b.peer_id not in a.events.connected)
        await b.events.wait_until(lambda: a.peer_id not in b.events.connected)
    took = trio.current_time() - cut
    print(f"link cut noticed after {took:.2f} s (bound {bound:.1f} s)")
    assert a.mesh.stats["dead_peer_dropped"] >= 1 and b.mesh.stats["dead_peer_dropped"] >= 1


async def test_healthy_idle_peer_is_not_dropped(nursery):
    a = await start_node(nursery, tuning=FAST_LIVENESS)
    b = await start_node(nursery, tuning=FAST_LIVENESS)
    with trio.fail_after(10):
        await b.mesh.connect(a.addr)
    # several liveness rounds of idleness (a time window is the point of this test)
    await trio.sleep(FAST_LIVENESS.liveness.bound * 1.5)
    assert a.mesh.connected_peers() == [b.peer_id]
    assert a.mesh.stats["dead_peer_dropped"] == 0 and b.mesh.stats["dead_peer_dropped"] == 0


async def test_second_mesh_on_a_port_in_use_fails_loudly(nursery):
    first = await start_node(nursery)
    taken = first.addr.split("/p2p/")[0]
    second, _, _ = make_mesh(listen=(taken,))
    with trio.fail_after(10), pytest.raises(MeshError, match="already in use"):
        await nursery.start(second.serve)


async def test_port_held_with_so_reuseport_is_detected(nursery):
    # what a second py-libp2p daemon would do: its listener sets SO_REUSEPORT
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        mesh, _, _ = make_mesh(listen=(f"/ip4/127.0.0.1/tcp/{port}",))
        with trio.fail_after(10), pytest.raises(MeshError, match="already in use"):
            await nursery.start(mesh.serve)
    finally:
        holder.close()


async def test_bad_listen_addresses_are_mesh_errors(nursery):
    for listen in [("/ip4/127.0.0.1/udp/9000/quic-v1",), ("garbage",), ()]:
        mesh, _, _ = make_mesh(listen=listen)
        with trio.fail_after(5), pytest.raises(MeshError):
            await nursery.start(mesh.serve)
    mesh, _, _ = make_mesh(bootstrap=("/ip4/127.0.0.1/tcp/1",))  # no /p2p/ part
    with trio.fail_after(5), pytest.raises(MeshError, match="/p2p/"):
        await nursery.start(mesh.serve)


async def test_port_is_free_again_after_shutdown(nursery):
    mesh, _, keypair = make_mesh()
    async with trio.open_nursery() as inner:
        with trio.fail_after(10):
            addrs = await inner.start(mesh.serve)
        inner.cancel_scope.cancel()
    fixed = addrs[0].split("/p2p/")[0]
    again, _, _ = make_mesh(keypair=keypair, listen=(fixed,))
    async with trio.open_nursery() as inner:
        with trio.fail_after(10):
            assert await inner.start(again.serve) == addrs
        inner.cancel_scope.cancel()


async def test_callbacks_never_run_on_foreign_threads(nursery):
    a = await start_node(nursery)
    threads = []
    original = a.events.on_peer_connected

    async def record(peer_id):
        threads.append(threading.get_ident())
        await original(peer_id)

    a.events.on_peer_connected = record
    b = await start_node(nursery)
    with trio.fail_after(10):
        await b.mesh.connect(a.addr)
        await a.events.wait_until(lambda: b.peer_id in a.events.connected)
    assert threads == [threading.get_ident()]


async def test_gossip_survives_losing_the_connection_that_carried_it(nursery):
    # Two connections between a and b; the first (through the proxy) carries pubsub's streams.
    # When it dies, gossip must continue on the second one, both ways, with no IHAVE gossip
    # (the default window is 0) to make up for a message lost on the way.
    assert MeshTuning().gossip.gossip_window == 0
    a = await start_node(nursery)
    b = await start_node(nursery)
    port = int(a.addr.split("/tcp/")[1].split("/")[0])
    proxy = FreezableProxy(port)
    await nursery.start(proxy.serve)
    with trio.fail_after(10):
        await b.mesh.connect(f"/ip4/127.0.0.1/tcp/{proxy.port}/p2p/{a.peer_id}")
        await wait_for(lambda: a.peer_id in b.mesh.gossip_peers()
                       and b.peer_id in a.mesh.gossip_peers())
        direct = multiaddr.Multiaddr(b.addr.split("/p2p/")[0])
        await a.mesh._host.get_network().dial_addr(direct, ID.from_base58(b.peer_id))
        await wait_for(lambda: len(a.mesh._host.get_network().get_connections(
            ID.from_base58(b.peer_id))) == 2)
        await proxy.close_all()
        await wait_for(lambda: len(a.mesh._host.get_network().get_connections(
            ID.from_base58(b.peer_id))) == 1)
    assert a.mesh.connected_peers() == [b.peer_id], "still connected over the direct link"
    # Published at once: b's pubsub stream may still be the one on the closed connection (the
    # write fails and the message must go out on the new stream, not be dropped), and each side
    # replaces its stream at its own moment (neither may forget the other's subscription).
    with trio.fail_after(10):
        await b.mesh.publish(b"after the first link died")
        await a.events.wait_until(lambda: a.events.announcements)
        await a.mesh.publish(b"and the other way")
        await b.events.wait_until(lambda: b.events.announcements)
    assert a.peer_id in b.mesh.gossip_peers() and b.peer_id in a.mesh.gossip_peers()
    assert a.peer_id in b.mesh.gossip_mesh_peers() and b.peer_id in a.mesh.gossip_mesh_peers()
    print("pubsub streams repaired:", a.mesh.stats["pubsub_stream_repaired"],
          b.mesh.stats["pubsub_stream_repaired"])


async def test_explicit_disconnect_is_not_undone_by_background_tasks(nursery):
    # pubsub retries, identify, the DHT and our pinger all open streams, and py-libp2p dials for
    # any of them when no connection exists; mesh._guard_dials refuses those background dials.
    # (A regression check: on a quiet box the race rarely hits even without the guard.)
    a = await start_node(nursery, tuning=FAST_LIVENESS, dht=True)
    b = await start_node(nursery, tuning=FAST_LIVENESS, dht=True)
    with trio.fail_after(10):
        await b.mesh.connect(a.addr)
        await wait_for(lambda: a.peer_id in b.mesh.gossip_peers())
        await b.mesh.disconnect(a.peer_id)
        await b.events.wait_until(lambda: a.peer_id not in b.events.connected)
    await trio.sleep(3)  # several pinger periods, pubsub retries and DHT rounds
    assert a.mesh.connected_peers() == [] and b.mesh.connected_peers() == []
    assert b.events.log == [("connected", a.peer_id), ("disconnected", a.peer_id)]
    # explicit dials still work
    with trio.fail_after(10):
        await b.mesh.connect(a.addr)


async def test_pings_are_muxer_frames_and_the_pinged_side_hears_them(nursery):
    a = await start_node(nursery, tuning=FAST_LIVENESS)
    b = await start_node(nursery, tuning=FAST_LIVENESS)
    counted: dict[str, list[tuple[str, str]]] = {"a": [], "b": []}
    for name, node in (("a", a), ("b", b)):
        node.mesh.on_message = (lambda protocol, kind, way, n=1, name=name:
                                counted[name].append((kind, way)) if protocol == "ping" else None)
    with trio.fail_after(10):
        await b.mesh.connect(a.addr)
        # one side's pings keep the other quiet: wait for a ping answered and one received
        await wait_for(lambda: any(("ping", "received") in c for c in counted.values())
                       and any(("pong", "received") in c for c in counted.values()))
    # a PING frame answered by the peer's muxer: no /ipfs/ping/1.0.0 stream was opened
    for node, other in ((a, b), (b, a)):
        conns = node.mesh._host.get_network().get_connections(ID.from_base58(other.peer_id))
        assert conns
        protocols = {s.get_protocol() for c in conns for s in c.get_streams()}
        assert "/ipfs/ping/1.0.0" not in protocols, protocols
        assert conns[0].muxed_conn.rtt() > 0  # the probes feed the muxer's RTT
