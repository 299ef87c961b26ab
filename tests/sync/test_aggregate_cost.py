"""What a host spends on heads exchanges, whatever the fleet's size: one exchange per new
connection (not one from each end), and anti-entropy rounds that leave alone the neighbours
that hold our head's document (after a publish, every neighbour that offered it)."""

from __future__ import annotations

import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from tests.sync.fakes import FakeNetwork
from tests.sync.test_reconciler import Node, config, until
from unit_p2p.metrics import Metrics
from unit_p2p.sync.candidates import Candidates
from unit_p2p.sync.revision import Head, Revision
from unit_p2p.sync.spread import ANTI_ENTROPY_FANOUT, Spread

#: the larger end's wait, long enough that a loaded machine does not make the smaller end's
#: exchange look missing
GRACE = 1.0


def _set_grace(monkeypatch) -> None:
    monkeypatch.setattr("unit_p2p.sync.spread.CONNECT_GRACE", GRACE)


def heads_sent(node) -> int:
    return sum(v for (proto, _, way), v in node.metrics.message_counts().items()
               if proto == "heads" and way == "sent")


async def _pair(tmp_path, nursery, interval=3600.0):
    keys = [create_new_key_pair() for _ in range(2)]
    ids = [ID.from_pubkey(k.public_key).to_base58() for k in keys]
    net = FakeNetwork(nursery)
    net.gossip_enabled = False
    nodes = [Node(net, tmp_path, f"c{i}", k, ids, interval=interval) for i, k in enumerate(keys)]
    for node in nodes:
        await node.rec.load()
        node.rec.register_handlers()
        await nursery.start(node.rec.serve)
    return sorted(nodes, key=lambda n: n.peer_id)


async def test_a_new_connection_costs_one_heads_exchange(tmp_path, monkeypatch):
    _set_grace(monkeypatch)
    async with trio.open_nursery() as nursery:
        small, large = await _pair(tmp_path, nursery)
        with trio.fail_after(30):
            await small.rec.publish(config(1))
            # both ends see the connection, as a real mesh reports it
            await small.rec.on_peer_connected(large.peer_id)
            await large.rec.on_peer_connected(small.peer_id)
            await until(lambda: large.unit.config == config(1))
            await trio.sleep(2 * GRACE)  # past the larger end's grace: it starts none as well
        # one exchange: one heads message from each end
        assert heads_sent(small) == 1 and heads_sent(large) == 1
        nursery.cancel_scope.cancel()


async def test_the_other_end_starts_the_exchange_when_none_came(tmp_path, monkeypatch):
    _set_grace(monkeypatch)
    async with trio.open_nursery() as nursery:
        small, large = await _pair(tmp_path, nursery)
        with trio.fail_after(30):
            await small.rec.publish(config(1))
            await large.rec.on_peer_connected(small.peer_id)  # the smaller end's event is lost
            await until(lambda: heads_sent(large) == 1)
            await trio.sleep(2 * GRACE)
        assert heads_sent(large) == 1 and heads_sent(small) == 1
        assert large.rec.candidates.peer_revision(small.peer_id) == small.rec.head.revision
        nursery.cancel_scope.cancel()


class _Mesh:
    peer_id = "me"

    def __init__(self, peers):
        self.peers = peers

    def connected_peers(self):
        return list(self.peers)


async def test_anti_entropy_leaves_holders_of_our_head_alone(autojump_clock):
    peers = [f"p{i}" for i in range(8)]
    head = Head(Revision(2, "me"), "sha256:" + "a" * 64, 1, b"s" * 64)
    candidates = Candidates()
    for peer in peers:  # what we last heard of each: the revision before
        candidates.note_peer(peer, Head(Revision(1, "me"), "sha256:" + "b" * 64, 1, b"s" * 64))
    spread = Spread("m", _Mesh(peers), TrustAll(), candidates, Metrics(), lambda: head,
                    None, None, {})
    picked: list[list[str]] = []

    async def exchange_heads(peer):
        picked[-1].append(peer)

    spread.exchange_heads = exchange_heads
    rounds = 0

    def after_round():
        nonlocal rounds
        rounds += 1
        picked.append([])

    picked.append([])
    with trio.move_on_after(35):
        await spread.anti_entropy(10.0, after_round)
    # every neighbour looks behind (each last said revision 1): each round exchanges with
    # ANTI_ENTROPY_FANOUT of them (one), whatever the number of neighbours
    assert ANTI_ENTROPY_FANOUT == 1
    assert [len(p) for p in picked[:rounds]] == [ANTI_ENTROPY_FANOUT] * rounds
    for peer in peers[:-1]:
        spread.holds(peer, head.revision)  # they offered our head's document ('have')
    picked = [[]]
    rounds = 0
    with trio.move_on_after(35):
        await spread.anti_entropy(10.0, after_round)
    # only the one that never said it holds it is still exchanged with
    assert rounds >= 2 and all(p == [peers[-1]] for p in picked[:rounds])


class TrustAll:
    def is_trusted(self, peer_id: str) -> bool:
        return True


async def test_a_push_lost_to_a_reset_stream_is_tried_again(autojump_clock):
    from unit_p2p.errors import MeshError
    from unit_p2p.sync import wire

    class FlakyMesh(_Mesh):
        """Connected to ``peers``; the first ``fail`` messages it sends are lost to resets."""

        def __init__(self, peers, fail):
            super().__init__(peers)
            self.fail, self.opened = fail, 0

        async def send_message(self, peer_id, protocol, data):
            self.opened += 1
            if self.opened <= self.fail:
                raise MeshError("stream reset")

    mesh = FlakyMesh(["p0"], fail=2)
    spread = Spread("m", mesh, TrustAll(), Candidates(), Metrics(), lambda: None, None, None, {})
    with trio.fail_after(10):
        assert await spread.push("p0", wire.NoHead("m"), tries=3)
    assert mesh.opened == 3
    mesh = FlakyMesh(["p0"], fail=2)
    spread.mesh = mesh
    with trio.fail_after(10):
        assert not await spread.push("p0", wire.NoHead("m"))  # one try: given up
