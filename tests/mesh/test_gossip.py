"""Gossipsub as configured by bus.py, on real hosts."""

from __future__ import annotations

import random

import pytest
import trio

from unit_p2p.errors import MeshError
from unit_p2p.mesh.bus import MAX_ANNOUNCEMENT_BYTES

from .helpers import make_mesh, start_node, wait_for


async def _mesh_of(nursery, n: int, links: list[tuple[int, int]]):
    nodes = [await start_node(nursery) for _ in range(n)]
    with trio.fail_after(15):
        for a, b in links:
            await nodes[a].mesh.connect(nodes[b].addr)
        # gossip can reach a neighbour once its subscription has arrived
        for a, b in links:
            await wait_for(lambda a=a, b=b: nodes[b].peer_id in nodes[a].mesh.gossip_peers()
                           and nodes[a].peer_id in nodes[b].mesh.gossip_peers())
    return nodes


async def test_publish_reaches_all_five_in_a_random_mesh(nursery):
    rng = random.Random(5)
    # a random connected graph: each node links to 1-2 earlier ones
    links = []
    for i in range(1, 5):
        for j in rng.sample(range(i), k=min(i, rng.choice([1, 2]))):
            links.append((i, j))
    nodes = await _mesh_of(nursery, 5, links)
    for sender in nodes:
        await sender.mesh.publish(f"from {sender.peer_id}".encode())
    expected = {(n.peer_id, f"from {n.peer_id}".encode()) for n in nodes}
    with trio.fail_after(15):
        for node in nodes:
            others = expected - {(node.peer_id, f"from {node.peer_id}".encode())}
            await node.events.wait_until(
                lambda node=node, others=others: others <= set(node.events.announcements))
    for node in nodes:
        assert len(node.events.announcements) == 4, "each announcement exactly once"


async def test_origin_is_verified_publisher_across_a_relay(nursery):
    a, _b, c = await _mesh_of(nursery, 3, [(0, 1), (1, 2)])  # a - b - c, a and c not connected
    assert c.peer_id not in a.mesh.connected_peers()
    await a.mesh.publish(b"via-b")
    with trio.fail_after(10):
        await c.events.wait_until(lambda: c.events.announcements)
    assert c.events.announcements == [(a.peer_id, b"via-b")]


async def test_our_own_bursts_are_not_rate_limited(nursery):
    # py-libp2p's spam protection (10 msg/s/topic/peer) let 24 of 100 through at 50 msg/s.
    # Bursts of 20 at ~100 msg/s trip that limit; waiting for each burst keeps us below
    # py-libp2p's 32-message queues, whose overflow is a different (silent) loss.
    sender, receiver = await _mesh_of(nursery, 2, [(0, 1)])
    for burst in range(5):
        for i in range(20):
            await sender.mesh.publish(b"burst %d" % (burst * 20 + i))
            await trio.sleep(0.01)
        with trio.fail_after(15):
            await receiver.events.wait_until(
                lambda burst=burst: len(receiver.events.announcements) == 20 * (burst + 1))
    assert [d for _, d in receiver.events.announcements] == [b"burst %d" % i for i in range(100)]


async def test_restarted_publisher_is_not_silenced_by_the_seen_cache(nursery):
    listener = await start_node(nursery)
    mesh, _, _ = make_mesh()
    for round_ in range(2):
        async with trio.open_nursery() as inner:
            with trio.fail_after(15):
                await inner.start(mesh.serve)
                await mesh.connect(listener.addr)
                await wait_for(lambda: listener.peer_id in mesh.gossip_peers())
                for i in range(5):
                    await mesh.publish(b"round %d msg %d" % (round_, i))
                await listener.events.wait_until(
                    lambda r=round_: len(listener.events.announcements) == 5 * (r + 1))
            inner.cancel_scope.cancel()
    assert len(listener.events.announcements) == 10


async def test_publish_errors(nursery):
    mesh, _, _ = make_mesh()
    with pytest.raises(MeshError, match="not running"):
        await mesh.publish(b"x")
    node = await start_node(nursery)
    with pytest.raises(MeshError, match="exceeds"):
        await node.mesh.publish(b"x" * (MAX_ANNOUNCEMENT_BYTES + 1))
    await node.mesh.publish(b"x" * MAX_ANNOUNCEMENT_BYTES)  # the cap itself is fine
