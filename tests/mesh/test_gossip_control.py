"""Gossipsub control traffic our router settings decide (bus.QuietGossipSub): no opportunistic
grafting churn, no IDONTWANT for small messages. Driven directly, without a network."""

from __future__ import annotations

from types import SimpleNamespace

from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V12
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.score import ScoreParams

from unit_p2p.mesh.bus import MAX_PRUNED_PEERS, GossipParams, QuietGossipSub

TOPIC = "/t"


def _router() -> tuple[QuietGossipSub, list[ID]]:
    p = GossipParams()
    router = QuietGossipSub(protocols=list(p.protocols), degree=p.degree,
                            degree_low=p.degree_low, degree_high=p.degree_high,
                            score_params=ScoreParams(), adaptive_gossip_enabled=False,
                            idle_interval=p.heartbeat_idle_interval,
                            idontwant_min_bytes=p.idontwant_min_bytes)
    peers = [ID(bytes([0, 1, i])) for i in range(10)]
    router.pubsub = SimpleNamespace(peer_topics={TOPIC: set(peers)}, peers={},
                                    get_message_id=lambda m: m.from_id + m.seqno)
    for peer in peers:
        router.peer_protocol[peer] = PROTOCOL_ID_V12
    router.mesh[TOPIC] = set(peers[: p.degree])
    return router, peers


def test_a_mesh_within_its_degree_is_left_alone():
    # py-libp2p 0.8.1 grafted 2 more non-mesh peers on every heartbeat (opportunistic grafting
    # with every score 0), until the mesh passed D_high and was pruned: GRAFT/PRUNE churn.
    router, _ = _router()
    for _ in range(5):
        graft, prune = router.mesh_heartbeat()
        assert not graft and not prune
    assert len(router.mesh[TOPIC]) == GossipParams().degree


async def test_idontwant_only_for_messages_of_at_least_idontwant_min_bytes():
    # py-libp2p 0.8.1 sent one to every mesh peer for every message, whatever its size.
    router, peers = _router()
    sent: list[ID] = []

    async def emit_idontwant(msg_ids, to_peer):
        sent.append(to_peer)

    router.emit_idontwant = emit_idontwant
    router._get_peers_to_send = lambda *a, **kw: iter(())  # forwarding itself is not the point
    min_bytes = GossipParams().idontwant_min_bytes
    for seqno, size, expected in ((1, 300, 0), (2, min_bytes, GossipParams().degree)):
        msg = rpc_pb2.Message(from_id=peers[5].to_bytes(), seqno=seqno.to_bytes(8, "big"),
                              data=b"x" * size, topicIDs=[TOPIC])
        sent.clear()
        await router.publish(peers[5], msg)
        assert len(sent) == expected, size
    assert not router._small


async def test_a_heartbeat_remembers_whom_it_pruned_until_they_are_back_in_the_mesh():
    router, peers = _router()
    router.mesh[TOPIC] = set(peers)  # 10 > D_high: the tick prunes back to D

    async def emit(*control):
        return None

    router._emit_control_msgs = emit
    await router._tick()
    pruned = router.pruned_peers(TOPIC)
    assert len(pruned) == len(peers) - GossipParams().degree
    assert not pruned & router.mesh[TOPIC] and pruned | router.mesh[TOPIC] == set(peers)
    back = next(iter(pruned))
    router.mesh[TOPIC].add(back)
    router._notify_mesh_peer_added(back, TOPIC)
    assert router.pruned_peers(TOPIC) == pruned - {back}
    router.mesh[TOPIC].discard(back)  # it left by its own PRUNE: it was not pruned since
    assert router.pruned_peers(TOPIC) == pruned - {back}
    router.remove_peer(next(iter(pruned - {back})))  # disconnected
    assert len(router.pruned_peers(TOPIC)) == len(pruned) - 2


def test_the_pruned_peers_are_bounded():
    router, _ = _router()
    many = [ID(b"\x00\x01" + i.to_bytes(4, "big")) for i in range(MAX_PRUNED_PEERS + 100)]
    for peer in many:
        router.note_pruned(peer, TOPIC)
    assert len(router.pruned) == MAX_PRUNED_PEERS
    assert many[-1] in router.pruned and many[0] not in router.pruned  # the oldest go first
