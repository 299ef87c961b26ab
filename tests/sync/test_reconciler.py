"""The reconciler's decisions, on an in-memory network (exact and fast).

Each hostile case asserts the three things the project promises: nothing applied, the old
config still in Unit, and a counter naming the reason.
"""

from __future__ import annotations

import base64
from contextlib import asynccontextmanager

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from tests.sync.fakes import FakeMesh, FakeNetwork, FakeStream, FakeUnit
from unit_p2p.mesh import TrustPolicy
from unit_p2p.metrics import Metrics
from unit_p2p.settings import Settings
from unit_p2p.sync import wire
from unit_p2p.sync.reconciler import Reconciler
from unit_p2p.sync.revision import Document, Head, Revision, sign_revision
from unit_p2p.sync.store import StateStore

MESH = "test"


def config(n: int, listener: str = "127.0.0.1:8080") -> dict:
    return {"listeners": {listener: {"pass": "routes"}},
            "routes": [{"action": {"return": 200 + n}}], "applications": {}}


class Node:
    def __init__(self, net, tmp_path, name, keys, trusted, exclusions=(), unit=None,
                 interval=0.3):
        self.keys = keys
        self.peer_id = ID.from_pubkey(keys.public_key).to_base58()
        self.unit = unit or FakeUnit(config(0))
        self.mesh = FakeMesh(net, self.peer_id)
        self.settings = Settings(mesh=MESH, state_dir=tmp_path / name, trust="allowlist",
                                 trusted_peers=tuple(trusted), exclusions=tuple(exclusions),
                                 announce_interval=interval)
        self.trust = TrustPolicy("allowlist", trusted, self.peer_id)
        self.metrics = Metrics()
        self.rec = Reconciler(self.settings, keys.private_key, self.peer_id, self.mesh, self.unit,
                              StateStore(self.settings.state_dir), self.trust, self.metrics)
        self.mesh.events = self.rec

    def rejected(self, reason: str) -> int:
        return self.metrics.rejected_counts().get(reason, 0)


@asynccontextmanager
async def cluster(tmp_path, n=3, extra_untrusted=0, exclusions=(), interval=0.3):
    keys = [create_new_key_pair() for _ in range(n + extra_untrusted)]
    ids = [ID.from_pubkey(k.public_key).to_base58() for k in keys]
    trusted = ids[:n]
    async with trio.open_nursery() as nursery:
        net = FakeNetwork(nursery)
        nodes = [Node(net, tmp_path, f"n{i}", k, trusted, exclusions, interval=interval)
                 for i, k in enumerate(keys)]
        for node in nodes:
            await node.rec.load()
            node.rec.register_handlers()
            await nursery.start(node.rec.serve)
        yield net, nodes
        nursery.cancel_scope.cancel()


async def until(predicate, timeout=5.0):
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - state of several fakes, no single event
            await trio.sleep(0.01)


def digest_of(cfg, exclusions=()) -> str:
    return Document.from_config(cfg, tuple(exclusions)).digest


async def test_publish_reaches_every_peer_and_waits_for_reports(tmp_path):
    async with cluster(tmp_path) as (_, nodes):
        a, _b, _c = nodes
        with trio.fail_after(10):
            result = await a.rec.publish(config(1), wait=True, timeout=5)
        assert result.changed and result.converged
        assert sorted(result.applied) == sorted(n.peer_id for n in nodes)
        for node in nodes:
            assert node.unit.config == config(1)
            assert node.rec.head.revision == result.revision
        # publishing the same config again is idempotent
        with trio.fail_after(10):
            again = await a.rec.publish(wait=True, timeout=5)
        assert not again.changed and again.revision == result.revision and again.converged


async def test_counter_is_max_seen_plus_one(tmp_path):
    async with cluster(tmp_path) as (_, nodes):
        a, b, _ = nodes
        with trio.fail_after(10):
            r1 = await a.rec.publish(config(1), wait=True, timeout=5)
            r2 = await b.rec.publish(config(2), wait=True, timeout=5)
        assert r2.revision.counter == r1.revision.counter + 1
        assert all(n.unit.config == config(2) for n in nodes)


async def test_unit_rejection_keeps_old_config_and_publisher_sees_failure(tmp_path):
    async with cluster(tmp_path) as (_, nodes):
        a, b, c = nodes
        c.unit.reject_next = 1
        with trio.fail_after(10):
            result = await a.rec.publish(config(1), wait=True, timeout=5)
        assert not result.converged
        assert "unit_rejected" in result.failed[c.peer_id]
        assert c.unit.config == config(0)
        assert c.rec.head is None
        assert c.rec.status()["last_error"]["reason"] == "unit_rejected"
        assert b.unit.config == config(1)


async def test_untrusted_origin_is_ignored(tmp_path):
    async with cluster(tmp_path, n=2, extra_untrusted=1) as (_, nodes):
        a, _b, evil = nodes
        with trio.fail_after(10):
            await evil.rec.publish(config(9), wait=False)
            await until(lambda: a.rejected("untrusted_peer") >= 1)
        assert a.unit.config == config(0) and a.rec.head is None


def forged_announce(signer, origin: str, counter: int, cfg: dict) -> bytes:
    doc = Document.from_config(cfg, ())
    rev = Revision(counter, origin)
    head = Head(rev, doc.digest, doc.size, sign_revision(signer.private_key, MESH, rev,
                                                         doc.digest))
    return wire.encode(wire.Announce(MESH, head))


async def test_forged_origin_signature_is_rejected(tmp_path):
    async with cluster(tmp_path) as (_, nodes):
        a, b, c = nodes
        # b relays a revision claiming a's origin but signed with b's key
        data = forged_announce(b.keys, a.peer_id, 5, config(5))
        with trio.fail_after(5):
            await c.rec.on_announcement(b.peer_id, data)
        assert c.rejected("bad_signature") == 1
        assert c.unit.config == config(0) and c.rec.head is None


async def test_replay_of_older_revision_applies_nothing(tmp_path):
    async with cluster(tmp_path) as (_, nodes):
        a, _b, c = nodes
        with trio.fail_after(10):
            r1 = await a.rec.publish(config(1), wait=True, timeout=5)
            old = wire.encode(wire.Announce(MESH, a.rec.head))
            await a.rec.publish(config(2), wait=True, timeout=5)
            puts = c.unit.puts
            await c.rec.on_announcement(a.peer_id, old)
        assert c.rec.head.revision.counter == r1.revision.counter + 1
        assert c.unit.puts == puts and c.unit.config == config(2)
        assert c.rejected("stale_revision") >= 1


async def test_digest_mismatch_from_a_lying_server_is_rejected(tmp_path):
    async with cluster(tmp_path) as (net, nodes):
        a, b, c = nodes
        net.gossip_enabled = False
        # b answers every pull with another document under the requested digest
        async def lying_pull(peer, stream: FakeStream):
            request = wire.decode(await stream.receive_all(4096, 5))
            doc = Document.from_config(config(666), ())
            await stream.send_all(wire.encode_served(request.digest, doc.data))
            await stream.close_write()
        b.mesh.set_stream_handler(wire.PROTO_PULL, lying_pull)
        a.mesh.up = False  # the honest origin is away: only the liar can serve
        doc = Document.from_config(config(3), ())
        rev = Revision(1, a.peer_id)
        head = Head(rev, doc.digest, doc.size, sign_revision(a.keys.private_key, MESH, rev,
                                                             doc.digest))
        with trio.fail_after(5):
            await c.rec.on_announcement(b.peer_id, wire.encode(wire.Announce(MESH, head)))
            await until(lambda: c.rec.last_error is not None)
        assert c.unit.config == config(0) and c.rec.head is None
        assert c.rejected("digest_mismatch") >= 1
        assert c.rec.last_error["reason"] == "pull_failed"


async def test_oversized_and_garbage_messages_are_counted_not_applied(tmp_path):
    async with cluster(tmp_path) as (_, nodes):
        a, _b, c = nodes
        doc = Document.from_config(config(4), ())
        rev = Revision(1, a.peer_id)
        big = Head(rev, doc.digest, c.settings.max_config_bytes + 1,
                   sign_revision(a.keys.private_key, MESH, rev, doc.digest))
        with trio.fail_after(5):
            await c.rec.on_announcement(a.peer_id, wire.encode(wire.Announce(MESH, big)))
            for junk in (b"", b"\xff" * 100, b"[]", b'{"v":2}', b'{"v":3,"type":"nohead"}',
                         b"x" * (wire.MAX_ANY_BYTES + 1)):
                await c.rec.on_announcement(a.peer_id, junk)
        assert c.rejected("too_large") >= 2
        assert c.rejected("malformed") >= 2
        assert c.rejected("unsupported_version") == 1
        assert c.rec.head is None and c.unit.config == config(0)


async def test_not_an_object_config_is_refused_before_anything(tmp_path):
    from unit_p2p.errors import SyncError

    async with cluster(tmp_path) as (_, nodes):
        with pytest.raises(SyncError, match="not_an_object"), trio.fail_after(5):
            await nodes[0].rec.publish([1, 2, 3])
        assert nodes[0].unit.config == config(0)


async def test_flood_is_rate_limited_and_node_stays_responsive(tmp_path):
    async with cluster(tmp_path) as (_, nodes):
        a, b, c = nodes
        data = forged_announce(b.keys, a.peer_id, 7, config(7))
        with trio.fail_after(10):
            for _ in range(2000):
                await c.rec.on_announcement(b.peer_id, data)
            assert c.rejected("rate_limited") > 1000
            # still works for honest traffic
            result = await a.rec.publish(config(1), wait=True, timeout=5)
        assert result.converged


async def test_partition_heals_to_the_higher_revision(tmp_path):
    async with cluster(tmp_path, n=4) as (net, nodes):
        a, b, c, d = nodes
        for x in (a, b):
            for y in (c, d):
                net.cut.add(frozenset((x.peer_id, y.peer_id)))
        with trio.fail_after(10):
            await a.rec.publish(config(1), wait=False)
            await c.rec.publish(config(2), wait=False)
            await c.rec.publish(config(3), wait=False)
            await until(lambda: b.unit.config == config(1) and d.unit.config == config(3))
            net.cut.clear()
            for x in nodes:  # the heads exchange a new connection triggers
                for y in nodes:
                    if x is not y:
                        await x.rec.on_peer_connected(y.peer_id)
            # (a Unit holds a config a moment before its agent records the head)
            await until(lambda: all(n.rec.head for n in nodes)
                        and len({n.rec.head.revision for n in nodes}) == 1)
        assert all(n.unit.config == config(3) for n in nodes)
        assert nodes[0].rec.head.revision.origin == c.peer_id


async def test_anti_entropy_alone_heals_without_reconnect_events(tmp_path):
    async with cluster(tmp_path, n=3) as (net, nodes):
        a, b, c = nodes
        net.cut.add(frozenset((a.peer_id, c.peer_id)))
        net.cut.add(frozenset((b.peer_id, c.peer_id)))
        with trio.fail_after(10):
            await a.rec.publish(config(1), wait=False)
            await until(lambda: b.unit.config == config(1))
            net.cut.clear()
            await until(lambda: c.unit.config == config(1))


async def test_concurrent_publishes_converge_on_one_winner(tmp_path):
    async with cluster(tmp_path, n=4) as (_, nodes):
        a, b = nodes[0], nodes[1]
        with trio.fail_after(10):
            async with trio.open_nursery() as n:
                n.start_soon(a.rec.publish, config(1))
                n.start_soon(b.rec.publish, config(2))
            winner = max(a.rec.head.revision, b.rec.head.revision)
            await until(lambda: all(x.rec.head and x.rec.head.revision >= winner for x in nodes))
        heads = {x.rec.head.revision for x in nodes}
        assert len(heads) == 1
        assert len({str(x.unit.config) for x in nodes}) == 1


async def test_unit_down_then_up_catches_up(tmp_path, monkeypatch):
    monkeypatch.setattr("unit_p2p.sync.reconciler.UNIT_RETRY_INTERVAL", 0.05)
    async with cluster(tmp_path) as (_, nodes):
        a, b, c = nodes
        c.unit.down = True
        with trio.fail_after(10):
            await a.rec.publish(config(1), wait=False)
            await until(lambda: b.unit.config == config(1))
            await until(lambda: c.rec.status()["local"]["unit"] == "unreachable")
            assert c.rec.status()["last_error"]["reason"] == "unit_unreachable"
            c.unit.down = False
            await until(lambda: c.unit.config == config(1))


async def test_exclusions_keep_host_local_values(tmp_path):
    async with cluster(tmp_path, exclusions=("/listeners",)) as (_, nodes):
        a, b, c = nodes
        b.unit.config = config(0, listener="127.0.0.1:9999")
        with trio.fail_after(10):
            result = await a.rec.publish(config(5), wait=True, timeout=5)
        assert result.converged
        assert b.unit.config == config(5, listener="127.0.0.1:9999")
        assert c.unit.config == config(5)
        assert result.digest == digest_of(config(5, "x:1"), ("/listeners",))


async def test_head_survives_restart(tmp_path):
    async with cluster(tmp_path) as (_, nodes):
        with trio.fail_after(10):
            result = await nodes[0].rec.publish(config(1), wait=True, timeout=5)
    store = StateStore(tmp_path / "n2")
    head, max_seen, _ = store.load_head()
    assert head.revision == result.revision and max_seen == result.revision.counter
    assert base64.b64encode(head.signature)
    assert store.load_document_bytes(head.digest) == Document.from_config(config(1), ()).data


async def test_a_host_that_stopped_before_its_report_left_reports_after_its_restart(tmp_path):
    async with cluster(tmp_path, n=2) as (net, (a, b)):
        b.rec.spread.send_report = lambda *args: None  # stopped before the report left

        async def no_exchange(peer):  # what a learns from b is b's report, nothing else
            pass

        a.rec.spread.exchange_heads = b.rec.spread.exchange_heads = no_exchange
        with trio.fail_after(10):
            result = await a.rec.publish(config(1))
            await until(lambda: b.rec.head is not None)
            waiting = await a.rec.wait_revision(result.revision, timeout=0.3)
            assert b.peer_id in waiting.pending
            # b restarts from its state dir and connects: it reports the head it loaded, once
            again = Node(net, tmp_path, "n1", b.keys, [a.peer_id, b.peer_id])
            await again.rec.load()
            again.rec.register_handlers()
            again.rec.spread.exchange_heads = no_exchange
            await net.nursery.start(again.rec.serve)
            await again.rec.on_peer_connected(a.peer_id)
            done = await a.rec.wait_revision(result.revision, timeout=5)
        assert done.converged and b.peer_id in done.applied
        assert count(again, "notify", "reports", "sent") == 1


async def test_disk_failure_during_apply_fails_that_revision_only(tmp_path):
    async with cluster(tmp_path) as (_, nodes):
        a, b, c = nodes

        def disk_full(*args, **kwargs):
            raise OSError(28, "No space left on device")

        c.rec.store.save_backup = disk_full
        with trio.fail_after(10):
            result = await a.rec.publish(config(1), wait=True, timeout=5)
        assert "apply_error" in result.failed[c.peer_id]
        assert "No space left" in result.failed[c.peer_id]
        assert c.unit.config == config(0) and c.rec.head is None
        assert b.unit.config == config(1)


async def test_work_that_arrives_before_serve_is_kept(tmp_path):
    # Anti-entropy is too slow to matter here: only the connect event's heads exchange, which
    # arrives before b serves, can bring b to a's head.
    keys = [create_new_key_pair() for _ in range(2)]
    ids = [ID.from_pubkey(k.public_key).to_base58() for k in keys]
    async with trio.open_nursery() as nursery:
        net = FakeNetwork(nursery)
        net.gossip_enabled = False
        a, b = (Node(net, tmp_path, f"w{i}", k, ids, interval=3600) for i, k in enumerate(keys))
        with trio.fail_after(10):
            await a.rec.load()
            a.rec.register_handlers()
            await nursery.start(a.rec.serve)
            await a.rec.publish(config(1))
            await b.rec.load()
            b.rec.register_handlers()
            await b.rec.on_peer_connected(a.peer_id)
            await nursery.start(b.rec.serve)
            await until(lambda: b.unit.config == config(1))
        nursery.cancel_scope.cancel()


def test_mesh_refusals_reach_the_one_refusal_counter():
    from tests.mesh.helpers import make_mesh

    metrics = Metrics()
    mesh, _, _ = make_mesh()
    mesh.trust.on_refused = metrics.refused
    mesh.stats["handler_error"] += 1
    mesh.stats["dead_peer_dropped"] += 1  # an event, not a refusal
    mesh.trust.reject("untrusted_connection", "someone")
    assert metrics.rejected_counts() == {"handler_error": 1, "untrusted_connection": 1}


def big_config(n: int) -> dict:
    """A config whose document is too big to travel in the announcement."""
    routes = [{"match": {"uri": f"/r{i}/*"}, "action": {"return": 200 + n}} for i in range(400)]
    return {"listeners": {}, "routes": routes, "applications": {}}


def count(node, protocol, kind, direction):
    return node.metrics.message_counts().get((protocol, kind, direction), 0)


@pytest.mark.parametrize("small", [True, False], ids=["small-config", "big-config"])
async def test_one_publish_is_one_flood_and_one_report_per_peer(tmp_path, small):
    published = config(1) if small else big_config(1)
    size = len(Document.from_config(published, ()).data)
    assert (size <= wire.MAX_INLINE_BYTES) == small
    async with cluster(tmp_path, n=5) as (_, nodes):
        origin, others = nodes[0], nodes[1:]
        with trio.fail_after(10):
            result = await origin.rec.publish(published, wait=True, timeout=5)
        assert result.converged and len(result.applied) == 5

        # a small document travels in the flood (``broadcast``), a big one is announced and
        # pulled, once per host
        kind = "broadcast" if small else "announce"
        assert count(origin, "gossip", kind, "sent") == 1
        for node in others:
            # appliers flood nothing; each reports once, straight to the origin
            assert sum(v for (proto, _, way), v in node.metrics.message_counts().items()
                       if proto == "gossip" and way == "sent") == 0
            assert count(node, "notify", "reports", "sent") == 1
            assert count(node, "pull", "pull", "sent") == (0 if small else 1)
            assert count(node, "gossip", kind, "received") == 1
        assert count(origin, "notify", "reports", "received") == len(others)


async def test_a_publisher_whose_gossip_reaches_nobody_has_its_neighbour_flood_it(tmp_path):
    async with cluster(tmp_path, n=3) as (net, nodes):
        a, b, c = nodes
        net.cut.add(frozenset((a.peer_id, c.peer_id)))  # a chain: a - b - c
        a.mesh.gossips = False  # no peer subscribed to its topic yet: its flood goes nowhere
        with trio.fail_after(10):
            result = await a.rec.publish(config(1), wait=True, timeout=5)
        assert result.converged and sorted(result.applied) == sorted(n.peer_id for n in nodes)
        # a pushed it to b asking for a flood; b flooded it (once), and c got it from that
        assert count(a, "notify", "broadcast", "sent") == 1
        assert count(b, "gossip", "broadcast", "sent") == 1
        assert count(c, "gossip", "broadcast", "received") == 1
        assert count(c, "pull", "pull", "sent") == 0


async def test_report_of_a_host_not_connected_to_the_origin_is_forwarded_by_its_parent(tmp_path):
    async with cluster(tmp_path, n=3) as (net, nodes):
        a, b, c = nodes
        net.cut.add(frozenset((a.peer_id, c.peer_id)))  # a chain: a - b - c
        with trio.fail_after(10):
            result = await a.rec.publish(config(1), wait=True, timeout=5)
        assert result.converged and sorted(result.applied) == sorted(n.peer_id for n in nodes)
        # c got the document in the flood b relayed, and b carried c's report on: no dial, no
        # pull, no flood of reports
        assert count(c, "pull", "pull", "sent") == 0
        assert count(c, "notify", "reports", "sent") == 1
        assert count(b, "notify", "reports", "sent") == 2
        assert count(a, "notify", "reports", "received") == 2
        assert count(c, "gossip", "reports", "sent") == 0


@pytest.mark.parametrize("arrival", ["gossip", "push", "push asking for a flood"])
async def test_a_relayer_pushes_to_its_pruned_peers_only_what_gossip_did_not_bring(
        tmp_path, monkeypatch, arrival):
    # Gossipsub sends what it relays to the peers it pruned as well: a document that came in
    # gossip needs no push from the sync layer, nor one we flood on (the flood reaches them);
    # one pushed to us does.
    monkeypatch.setattr("unit_p2p.sync.spread.REPAIR_WAIT", 0.2)
    async with cluster(tmp_path, n=3) as (net, nodes):
        a, b, c = nodes
        net.cut.add(frozenset((a.peer_id, c.peer_id)))  # a chain: a - b - c
        if arrival == "push":
            b.mesh.hears_gossip = False  # a's flood misses b: a's repair push reaches it
        elif arrival == "push asking for a flood":
            net.gossip_enabled = False
        b.mesh.pruned = {c.peer_id}
        with trio.fail_after(10):
            result = await a.rec.publish(config(1), wait=True, timeout=5)
        assert result.converged and sorted(result.applied) == sorted(n.peer_id for n in nodes)
        # the origin pushes nothing at once to a peer its gossip reaches (b, in its mesh)
        assert count(a, "notify", "broadcast", "sent") == (1 if arrival != "gossip" else 0)
        assert count(b, "notify", "broadcast", "sent") == (0 if arrival == "gossip" else 1)
        assert count(c, "pull", "pull", "sent") == 0


@pytest.mark.parametrize("lost_at", ["origin", "relayer"])
async def test_a_gossip_copy_lost_to_a_peer_that_depends_on_us_is_pushed_once_reports_stop(
        tmp_path, monkeypatch, lost_at):
    # Gossip is not acknowledged (py-libp2p drops an RPC for a peer whose queue is full); the
    # peers we gossip to directly report to us, so a missing report is the sign. A chain
    # a - b - c, c pruned by b (a hub's leaf): the first publish reaches all, the second's
    # gossip misses b (lost at the origin) or c (lost at the relayer).
    monkeypatch.setattr("unit_p2p.sync.spread.REPAIR_WAIT", 0.2)
    # anti-entropy out of the way (it would heal it too, a round later)
    async with cluster(tmp_path, n=3, interval=3600) as (net, nodes):
        a, b, c = nodes
        net.cut.add(frozenset((a.peer_id, c.peer_id)))
        b.mesh.pruned = {c.peer_id}
        with trio.fail_after(10):
            first = await a.rec.publish(config(1), wait=True, timeout=5)
            assert first.converged
            (b if lost_at == "origin" else c).mesh.hears_gossip = False
            second = await a.rec.publish(config(2), wait=True, timeout=5)
        assert second.converged and sorted(second.applied) == sorted(n.peer_id for n in nodes)
        pusher = a if lost_at == "origin" else b
        assert count(pusher, "notify", "broadcast", "sent") == 1
        # and nobody else got a push it did not need
        assert count(a, "notify", "broadcast", "sent") + count(
            b, "notify", "broadcast", "sent") == (2 if lost_at == "origin" else 1)
        assert c.unit.config == config(2)


async def test_a_document_nobody_serves_is_retried_with_backoff(tmp_path, monkeypatch):
    monkeypatch.setattr("unit_p2p.sync.candidates.RETRY_FIRST", 0.1)
    async with cluster(tmp_path) as (_, nodes):
        a, _b, c = nodes
        # A validly signed head whose document nobody holds (a never saved it).
        with trio.fail_after(10):
            await c.rec.on_announcement(a.peer_id, forged_announce(a.keys, a.peer_id, 9,
                                                                   config(9)))
            await trio.sleep(3.0)  # counting attempts over a span of time: no event to await
        attempts = c.metrics.message_counts().get(("pull", "pull", "sent"), 0)
        # each attempt asks every connected peer (2); backing off from 0.1 s: 0.1, 0.2, 0.4,
        # 0.8, 1.6 -> about 5 attempts in 3 s, where a fixed 0.1 s (or every anti-entropy
        # round's wake-up, 0.3 s) would make 10 to 30
        assert 2 <= attempts <= 2 * 7, attempts
        assert c.rec.status()["pending"] == [f"9@{a.peer_id}"]
        assert c.unit.config == config(0)


async def test_a_counter_at_the_top_of_the_range_does_not_stop_later_publishes(tmp_path):
    async with cluster(tmp_path) as (_, nodes):
        a, b, c = nodes
        top = 999_999_999_999_999_999  # the largest counter the wire allows
        with trio.fail_after(10):
            for node in (b, c):
                await node.rec.on_announcement(a.peer_id, forged_announce(a.keys, a.peer_id,
                                                                          top, config(9)))
            assert b.rejected("counter_jump") == 1 and c.rejected("counter_jump") == 1
            result = await b.rec.publish(config(2), wait=True, timeout=5)
        assert result.converged and result.revision.counter == 1
        assert all(n.unit.config == config(2) for n in nodes)
