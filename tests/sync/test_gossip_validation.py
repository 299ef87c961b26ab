"""Gossipsub relays only announcements the sync layer admits (real hosts, a - b - c)."""

from __future__ import annotations

import trio

from tests.mesh.helpers import start_node, wait_for
from unit_p2p.metrics import Metrics
from unit_p2p.sync import wire
from unit_p2p.sync.admission import Admission
from unit_p2p.sync.revision import Document, Head, Revision, sign_revision

MESH = "test"


def announce(keys, origin: str, counter: int, *, good: bool) -> bytes:
    doc = Document.from_config({"routes": [counter]}, ())
    rev = Revision(counter, origin)
    signature = sign_revision(keys.private_key, MESH, rev, doc.digest) if good else b"\x01" * 64
    return wire.encode(wire.Announce(MESH, Head(rev, doc.digest, doc.size, signature)))


async def _relayed_by_a_checking_hop(nursery, first: bytes, second: bytes):
    """a - b - c, only b checking what it relays (a is the hostile sender, c delivers whatever
    reaches it, so what c gets is exactly what b forwarded); a publishes ``first`` then
    ``second``. Returns (a, b, c, b's refusal counts)."""
    a, b, c = [await start_node(nursery) for _ in range(3)]
    metrics = Metrics()
    b.mesh.gossip_check = Admission(MESH, b.mesh.trust, metrics, 1 << 20).gossip
    with trio.fail_after(20):
        await a.mesh.connect(b.addr)
        await b.mesh.connect(c.addr)
        await wait_for(lambda: a.peer_id in b.mesh.gossip_peers()
                       and c.peer_id in b.mesh.gossip_peers())
        await a.mesh.publish(first(a))
        await a.mesh.publish(second(a))
        await c.events.wait_until(lambda: c.events.announcements)
        await b.events.wait_until(lambda: b.events.announcements)
    return a, b, c, metrics.rejected_counts()


def counters(events) -> list[int]:
    return [wire.decode(d).head.revision.counter for _, d in events.announcements]


async def test_a_badly_signed_announcement_goes_no_further_than_the_first_hop():
    async with trio.open_nursery() as nursery:
        _, b, c, refused = await _relayed_by_a_checking_hop(
            nursery, lambda a: announce(a.keypair, a.peer_id, 1, good=False),
            lambda a: announce(a.keypair, a.peer_id, 2, good=True))
        assert counters(c.events) == [2] and counters(b.events) == [2]
        assert refused == {"bad_signature": 1}
        nursery.cancel_scope.cancel()


def broadcast(keys, origin: str, counter: int, *, intact: bool) -> bytes:
    """A signed broadcast; not ``intact``: its document is another than the one signed."""
    doc = Document.from_config({"routes": [counter]}, ())
    rev = Revision(counter, origin)
    head = Head(rev, doc.digest, doc.size, sign_revision(keys.private_key, MESH, rev, doc.digest))
    body = doc.data if intact else doc.data.replace(str(counter).encode(), b"9")
    return wire.encode(wire.Broadcast(MESH, head, body))


async def test_a_broadcast_with_another_document_goes_no_further_than_the_first_hop():
    async with trio.open_nursery() as nursery:
        _, b, c, refused = await _relayed_by_a_checking_hop(
            nursery, lambda a: broadcast(a.keypair, a.peer_id, 1, intact=False),
            lambda a: broadcast(a.keypair, a.peer_id, 2, intact=True))
        assert counters(c.events) == [2] and refused == {"digest_mismatch": 1}
        # c knows who relayed it: b (the reconciler's parent in the spread tree)
        assert c.events.relayers == [b.peer_id]
        nursery.cancel_scope.cancel()


async def test_the_mesh_counts_its_own_messages():
    from unit_p2p.mesh import MeshTuning
    from unit_p2p.mesh.liveness import LivenessParams

    fast = MeshTuning(liveness=LivenessParams(interval=0.2, timeout=1.0, misses=3))
    async with trio.open_nursery() as nursery:
        a, b = [await start_node(nursery, tuning=fast) for _ in range(2)]
        counted = {a.peer_id: Metrics(), b.peer_id: Metrics()}
        for node in (a, b):
            node.mesh.on_message = counted[node.peer_id].message
        with trio.fail_after(20):
            await a.mesh.connect(b.addr)
            await wait_for(lambda: b.peer_id in a.mesh.gossip_peers())
            await a.mesh.publish(b"counted")
            await b.events.wait_until(lambda: b.events.announcements)
            await wait_for(lambda: counted[a.peer_id].message_counts().get(
                ("ping", "ping", "sent"), 0) + counted[b.peer_id].message_counts().get(
                ("ping", "ping", "sent"), 0) >= 1)
        sent, got = counted[a.peer_id].message_counts(), counted[b.peer_id].message_counts()
        assert sent[("gossipsub", "message", "sent")] >= 1
        assert got[("gossipsub", "message", "received")] >= 1
        nursery.cancel_scope.cancel()
