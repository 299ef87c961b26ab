"""Who hears of our head, and when: the message-complexity policy of the sync layer.

Every fan-out decision lives here: gossip, direct pushes, the relay after an apply, the reports
to a publisher, the heads exchange (memberlist's LocalState / MergeRemoteState pair) and the
anti-entropy rounds. One publish costs O(N) messages in all and a constant per host
(docs/sync.md counts them): one gossip flood (the origin's signed head, with its document when
that is small), pushes to the peers gossip does not reach, and the reports, batched up the tree
the revision spread along; a big document adds about one offer per connection and one pull per
host.
"""

from __future__ import annotations

import logging
import math
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from unit_p2p.errors import MeshError, WireError
from unit_p2p.metrics import Metrics
from unit_p2p.sync import wire
from unit_p2p.sync.admission import TrustLike
from unit_p2p.sync.candidates import Candidates
from unit_p2p.sync.revision import Document, Head, Revision

log = logging.getLogger("unit_p2p.sync.spread")

#: stale peers whose heads an anti-entropy round exchanges (random ones each round). One, as
#: memberlist's push-pull: a host behind the mesh finds out in its own next round (each of its
#: neighbours looks stale to it, or it picks one at random), so a second or third exchange per
#: round only made each publish cost more heads exchanges: N=1,000 in the simulator, 2.2 N of a
#: steady publish's messages at 3 (the neighbours not known to hold the new head are all stale)
ANTI_ENTROPY_FANOUT = 1
#: connected peers not known to hold a revision that a host offers it to (None: all of them).
#: At most 4 saved 1.8 N of a publish's 15.8 N messages in the simulator (N=1,000) but each
#: host applied later (p99 0.47 s instead of 0.29): a host no neighbour offered it to waits
#: for one (fetch.HOLDER_WAIT), then dials the origin
HAVE_FANOUT: int | None = None
#: a report is pushed towards its origin this many times (0.5 s, then 1 s apart) before gossip
REPORT_TRIES = 3
REPORT_RETRY = 0.5
#: a broadcast's push to one peer is tried this many times (PUSH_RETRY s, then twice that
#: apart): a push lost to a reset stream left that peer to the next anti-entropy round, 10 s
#: later (the fleet simulator, a star of 100 with 1 % loss: the last leaf after 3.6 s)
PUSH_TRIES = 3
PUSH_RETRY = 0.5
#: a peer that depends on our gossip and has not reported a revision it carried to it is pushed
#: it once the reports stop arriving: REPAIR_WAIT s after the relay at the earliest, when
#: no peer told us of a newer holding for REPAIR_QUIET s, at the latest REPAIR_MAX s after it
#: (anti-entropy covers the rest); see Spread._repair
REPAIR_WAIT = 1.0
REPAIR_QUIET = 0.5
REPAIR_MAX = 8.0
#: reports about one revision leave a host at most once per this many seconds, batched: the first
#: after a quiet spell at once, the ones that arrive meanwhile together when it is up
REPORT_LINGER = 0.1
#: revisions whose report batches are tracked
BATCHES_KEPT = 64
#: peers whose held revision (and last heads exchange) is remembered (a bound: a flood of peer
#: IDs cannot grow the tables)
HOLDING_KEPT = 4096
#: seconds the end with the larger peer ID waits for the other to start the heads exchange of a
#: new connection
CONNECT_GRACE = 1.0

#: ``protocol`` labels of the message counters
GOSSIP, NOTIFY, HEADS = "gossip", "notify", "heads"

Merge = Callable[[str, bytes, str], Awaitable[Any]]


@dataclass
class _Batch:
    """The reports about one revision waiting to leave this host, and when the last left."""

    #: the report about each peer, and whom it came from (None: our own)
    waiting: dict[str, tuple[wire.Report, str | None]] = field(default_factory=dict)
    flushing: bool = False
    last_flush: float = float("-inf")


class Spread:
    def __init__(self, mesh_name: str, mesh: Any, trust: TrustLike, candidates: Candidates,
                 metrics: Metrics, head: Callable[[], Head | None], merge: Merge,
                 spawn: Callable[..., None], parents: Mapping[Revision, str]):
        """``head()`` is this host's head; ``merge(peer, data, protocol)`` takes a message of a
        peer in (a heads exchange's answer); ``spawn(fn, *args)`` runs a task in the owner's
        nursery; ``parents`` maps a revision to the peer that served it to us."""
        self.mesh_name = mesh_name
        self.mesh = mesh
        self.trust = trust
        self.candidates = candidates
        self.metrics = metrics
        self._head = head
        self._merge = merge
        self._spawn = spawn
        self.parents = parents
        self._batches: OrderedDict[tuple[Revision, str], _Batch] = OrderedDict()
        #: the newest revision each peer told us it holds (``have``, or its own report), and
        #: when the last news of that kind came
        self._holding: dict[str, Revision] = {}
        self._holding_news = float("-inf")
        #: when we last exchanged heads with each peer (either end started it)
        self._exchanged: dict[str, float] = {}

    # --- what we say --------------------------------------------------------------------------

    def local_state(self) -> wire.Announce | wire.NoHead:
        """Our head as a message: the announcement, and our side of a heads exchange."""
        head = self._head()
        if head is None:
            return wire.NoHead(self.mesh_name)
        return wire.Announce(self.mesh_name, head)

    def carrying(self, head: Head, doc: Document) -> wire.Broadcast | None:
        """``head`` with its document, when the document is small enough to travel along;
        marked ``flood`` when our gossip reaches nobody (no peer subscribed to the topic; see
        ``reflood``)."""
        if not self.travels_inline(doc):
            return None
        return wire.Broadcast(self.mesh_name, head, doc.data,
                              flood=not self.mesh.gossip_peers())

    @staticmethod
    def travels_inline(doc: Document) -> bool:
        """Whether ``doc`` travels with its head (``carrying``), so nobody pulls it from us."""
        return doc.size <= wire.MAX_INLINE_BYTES

    def encode(self, protocol: str, msg: wire.Message) -> bytes:
        """``msg`` on the wire, counted as sent over ``protocol`` (a metrics label)."""
        self.metrics.message(protocol, msg.TYPE, "sent")
        return wire.encode(msg)

    # --- how we say it ------------------------------------------------------------------------

    async def ask(self, peer: str, protocol_id: str, protocol: str,
                  msg: wire.Message) -> bytes | None:
        """One request and its answer over a new stream of ``protocol_id``, bounded by
        STREAM_TIMEOUT; None (logged) when the peer cannot be reached or does not answer."""
        try:
            stream = await self.mesh.open_stream(peer, protocol_id)
            try:
                with trio.fail_after(wire.STREAM_TIMEOUT):
                    await stream.send_all(self.encode(protocol, msg))
                    await stream.close_write()
                    return await stream.receive_all(wire.MAX_MESSAGE_BYTES,
                                                    wire.STREAM_TIMEOUT)
            finally:
                await stream.close()
        except (MeshError, WireError, trio.TooSlowError) as exc:
            log.debug("%s %s to %s failed: %s", protocol, msg.TYPE, peer, exc)
            return None

    async def exchange_heads(self, peer: str) -> None:
        data = await self.ask(peer, wire.PROTO_HEADS, HEADS, self.local_state())
        if data is None:
            return
        self._stamp_exchange(peer)
        await self._merge(peer, data, HEADS)

    async def serve_heads(self, peer: str, stream: Any) -> None:
        """The ``/unit-p2p/heads`` handler: answer with our head, then merge theirs."""
        data = await stream.receive_all(wire.MAX_MESSAGE_BYTES, wire.STREAM_TIMEOUT)
        await stream.send_all(self.encode(HEADS, self.local_state()))
        await stream.close_write()
        await stream.close()
        self._stamp_exchange(peer)
        await self._merge(peer, data, HEADS)

    def _stamp_exchange(self, peer: str) -> None:
        if len(self._exchanged) >= HOLDING_KEPT:
            self._exchanged.clear()
        self._exchanged[peer] = trio.current_time()

    async def push(self, peer: str, msg: wire.Message, tries: int = 1) -> bool:
        """Send ``msg`` one way over ``/unit-p2p/notify``, trying up to ``tries`` times (0.5 s,
        then 1 s apart) while ``peer`` stays connected; False if it could not be sent."""
        for attempt in range(tries):
            if attempt:
                await trio.sleep(PUSH_RETRY * attempt)
                if peer not in self.mesh.connected_peers():
                    return False
            if await self._push_once(peer, msg):
                return True
        return False

    async def _push_once(self, peer: str, msg: wire.Message) -> bool:
        # One message on the mesh's long-lived notify stream to ``peer``; the mesh bounds the
        # open and the write, and already retried once on a new stream when a kept one failed.
        try:
            await self.mesh.send_message(peer, wire.PROTO_NOTIFY, self.encode(NOTIFY, msg))
        except MeshError as exc:
            log.debug("push to %s failed: %s", peer, exc)
            return False
        return True

    async def gossip(self, msg: wire.Message) -> None:
        try:
            await self.mesh.publish(self.encode(GOSSIP, msg))
        except MeshError as exc:
            log.debug("gossip publish failed: %s", exc)

    async def broadcast(self, msg: wire.Message, skip_holders_of: Revision | None = None,
                        gossip: bool = True, skip: Collection[str] = frozenset(),
                        limit: int | None = None) -> None:
        """Gossip ``msg`` and push it directly to connected trusted peers (``limit``: to at most
        that many of them, picked at random), all in parallel."""
        peers = []
        for peer in self.mesh.connected_peers():
            if peer in skip:
                continue
            known = self.candidates.peer_revision(peer)
            if skip_holders_of is not None and known is not None \
                    and known >= skip_holders_of:
                continue
            if self.trust.is_trusted(peer):
                peers.append(peer)
        if limit is not None and len(peers) > limit:
            peers = random.sample(peers, limit)
        async with trio.open_nursery() as nursery:
            if gossip:
                nursery.start_soon(self.gossip, msg)
            for peer in peers:
                nursery.start_soon(self.push, peer, msg, PUSH_TRIES)

    # --- when we say it -----------------------------------------------------------------------

    async def published(self, doc: Document) -> None:
        """A new head of our own, ``doc`` its document: the one flood of this publish (gossip;
        a small document travels in it), pushed at once only to the connected peers our gossip
        does not reach directly, and later to those it reached directly that have not reported
        it (``_repair``: gossip is not acknowledged). A push to a peer our gossip reaches too
        was a second copy for nothing, and worse at a hub: the push could overtake the gossip,
        and the hub then pushed the revision to all its pruned leaves as well as gossiping it
        to them."""
        head = self._head()
        assert head is not None and head.digest == doc.digest
        msg = self.carrying(head, doc) or self.local_state()
        direct = self._gossip_reach()
        await self.broadcast(msg, skip=direct)
        if direct:
            self._spawn(self._repair, msg, direct)

    def _gossip_reach(self) -> set[str]:
        """The peers our own gossip goes to directly (QuietGossipSub): our mesh and the peers it
        pruned; with an empty mesh, every subscribed peer."""
        mesh = self.mesh.gossip_mesh_peers()
        if not mesh:
            return set(self.mesh.gossip_peers())
        return mesh | self.mesh.gossip_pruned_peers()

    def fetched(self, head: Head, holders: set[str], doc: Document,
                passed_on: bool = False) -> None:
        """We hold ``head``'s document ``doc``, fetched and verified, and apply it next.

        A small document came with the origin's flood, which our gossipsub has already sent on
        to its mesh and to the peers it pruned from that mesh (a hub's leaves: QuietGossipSub),
        in the same step, so that a leaf grafted or pruned meanwhile is in one of the two; or
        it came in a push asking us to flood it (``reflood``). Either way (``passed_on``) it
        needs nothing more here. One that came otherwise (pushed to us, pulled by anti-entropy)
        goes on to those pruned peers as a push of the whole broadcast: they get no gossip of
        it from us. A bigger one was announced without it: offer it (``have``) to the
        neighbours not known to hold it, so they pull from us while our Unit applies it (one
        pull per hop, not a pull and an apply) and not from the origin. Whoever of two neighbours
        fetches first tells the other, who then knows not to tell back: about one push per
        connection, a constant per host.
        """
        carried = self.carrying(head, doc)
        if carried is not None:
            if not passed_on:
                self._spawn(self._relay_to_starved, carried, holders)
            elif (mine := self._head()) is not None:
                # the pruned peers that depend on us: they took our head from us (``_repair``)
                dependents = {peer for peer in self.mesh.gossip_pruned_peers()
                              if self._holding.get(peer) == mine.revision}
                if dependents:
                    self._spawn(self._repair, carried, dependents)
        else:
            self._spawn(self._offer, head, holders)

    def reflood(self, head: Head, doc: Document) -> None:
        """A peer whose gossip reaches nobody (no peer subscribed to the mesh's topic yet, just
        after it started) pushed us ``head``: its flood never started, so start it here, once;
        or, with no gossip peer here either, push it on to every connected peer not known to
        hold it, still asking for a flood."""
        msg = self.carrying(head, doc)
        if msg is None:
            return
        self._spawn(self._push_on if msg.flood else self.gossip, msg)

    async def _relay_to_starved(self, msg: wire.Broadcast, holders: Collection[str]) -> None:
        pruned = self.mesh.gossip_pruned_peers()
        await self._push_on(msg, skip=set(holders) | (set(self.mesh.connected_peers()) - pruned))

    async def _repair(self, msg: wire.Broadcast | wire.Announce,
                      targets: Collection[str]) -> None:
        """Push ``msg`` to those of ``targets`` that have not told us they hold its revision
        once the reports stop arriving.

        Gossip is not acknowledged, and a copy can be lost without anyone knowing: py-libp2p
        drops an RPC for a peer whose outbound queue (32 RPCs) is full, and the fleet simulator
        loses 1 % of gossip copies. A peer whose only path is us (a hub's leaf; the hub for a
        leaf's own publish) then waited for anti-entropy. Reports are the acknowledgement: the
        peers we gossiped to first report to us (we are their parent). ``targets`` are the
        peers expected to: the ones our own publish went to directly (each gets the first copy
        from us), or, for a relayed revision, the peers we pruned that took our previous head
        from us (a hub's leaves). Not our mesh peers: each has D_low or more mesh peers, and
        often reports to another host that was faster than us (in the fleet simulator, N=1,000,
        repairing them too pushed 0.9 N times a publish for nothing).
        """
        rev = msg.head.revision
        latest = trio.current_time() + REPAIR_MAX
        await trio.sleep(REPAIR_WAIT)
        while True:  # then until the reports pause (their news is a time, not an event)
            quiet, now = self._holding_news + REPAIR_QUIET, trio.current_time()
            if now >= quiet or now >= latest:
                break
            await trio.sleep_until(min(quiet, latest))
        missing = {peer for peer in targets
                   if (held := self._holding.get(peer)) is None or held < rev}
        if missing:
            log.debug("revision %s: %d peers gossiped to did not report it, pushing", rev,
                      len(missing))
            await self._push_on(msg, skip=set(self.mesh.connected_peers()) - missing)

    async def _push_on(self, msg: wire.Broadcast | wire.Announce,
                       skip: Collection[str] = frozenset()) -> None:
        """Push ``msg`` to every connected trusted peer not known to hold it, but ``skip``."""
        await self.broadcast(msg, skip_holders_of=msg.head.revision, gossip=False, skip=skip)

    async def _offer(self, head: Head, holders: Collection[str]) -> None:
        # At once: a random delay (0-100 ms, meant to keep two neighbours that fetched together
        # from offering to each other) cost more offers, not fewer, and time (simulator, N=1,000:
        # 16.5 N messages and each host applied after 0.32 / 0.46 s (p50 / p99); without it
        # 15.7 N and 0.21 / 0.31 s). ``holders`` is the candidate's own set, still growing.
        mine = self._head()
        if mine is None or mine.revision <= head.revision:
            await self.broadcast(wire.Have(self.mesh_name, head), skip_holders_of=head.revision,
                                 gossip=False, skip=holders, limit=HAVE_FANOUT)

    def send_report(self, revision: Revision, digest: str, status: str,
                    reason: str | None) -> None:
        """Tell the revision's origin (its publisher, who may be waiting) how it went here."""
        if revision.origin != self.mesh.peer_id:
            self.forward(wire.Report(self.mesh_name, revision, digest, status, reason,
                                     self.mesh.peer_id))

    async def report(self, revision: Revision, digest: str, status: str,
                     reason: str | None) -> None:
        """``send_report`` for callers that run it as a task."""
        self.send_report(revision, digest, status, reason)

    def forward(self, report: wire.Report, came_from: str | None = None) -> None:
        """Send ``report`` on towards the origin of its revision, batched with the others about
        that revision that this host sends (its own, its pull subtree's).

        A batch leaves at once when none left in the last REPORT_LINGER seconds, else when that
        is up, with whatever arrived meanwhile: the last report of a publish, which arrives after
        a quiet spell, is never held back, and a host near the origin sends its subtree's
        hundreds of reports as a few messages instead of one each. A later report about the same
        peer replaces one still waiting.
        """
        key = (report.revision, report.digest)
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = _Batch()
            while len(self._batches) > BATCHES_KEPT:
                self._batches.popitem(last=False)
        batch.waiting[report.peer] = (report, came_from)
        if not batch.flushing:
            batch.flushing = True
            self._spawn(self._flush, batch)

    async def _flush(self, batch: _Batch) -> None:
        await trio.sleep_until(batch.last_flush + REPORT_LINGER)
        waiting, batch.waiting = batch.waiting, {}
        batch.last_flush = trio.current_time()
        batch.flushing = False
        came_from = {frm for _, frm in waiting.values() if frm is not None}
        async with trio.open_nursery() as nursery:
            for msg in wire.pack_reports([r for r, _ in waiting.values()]):
                nursery.start_soon(self._deliver, msg, came_from)

    async def _deliver(self, msg: wire.Reports, came_from: set[str]) -> None:
        """Move ``msg`` one hop towards the origin of its revision, the first way that works:

        1. straight to the origin when connected to it;
        2. to the peer that served us the revision, our parent in its pull tree (one hop
           closer to the origin; it forwards the same way; the tree has no cycles, since a
           peer serves only what it fetched before us);
        3. straight to the origin, dialled for this message and released after, the way a Serf
           query's answer goes straight to the asker;
        4. by gossip, the only flood, when all of that failed ``REPORT_TRIES`` times: a flood
           costs every host about D receptions, so a push lost now and then must not become one.
        """
        for attempt in range(REPORT_TRIES):
            if attempt:
                await trio.sleep(REPORT_RETRY * attempt)
            if await self._push_towards_origin(msg, came_from):
                return
        log.warning("%d reports about %s could not be pushed towards its origin in %d tries: "
                    "gossiped", len(msg.reports), msg.revision, REPORT_TRIES)
        await self.gossip(msg)

    async def _push_towards_origin(self, msg: wire.Reports, came_from: set[str]) -> bool:
        origin = msg.revision.origin
        connected = self.mesh.connected_peers()
        if origin in connected and await self.push(origin, msg):
            return True
        parent = self.parents.get(msg.revision)
        if parent is not None and parent != origin and parent not in came_from \
                and parent in connected and await self.push(parent, msg):
            return True
        if origin in connected:
            return False
        delivered = await self.push(origin, msg)
        release = getattr(self.mesh, "release", None)  # in-memory meshes hold none
        if release is not None:
            await release(origin)
        return delivered

    def behind(self, peer: str) -> None:
        """``peer`` is behind us (or has no head): tell it where the mesh is."""
        if self._head() is not None and peer in self.mesh.connected_peers():
            self._spawn(self.push, peer, self.local_state())

    def holds(self, peer: str, revision: Revision) -> None:
        """``peer`` holds ``revision``'s document (it said so, or reported it applied; or it
        reported it failed there): an anti-entropy round has nothing to tell it about that
        revision, nor a repair (``_repair``)."""
        known = self._holding.get(peer)
        if known is None or revision > known:
            if len(self._holding) >= HOLDING_KEPT:
                self._holding.clear()
            self._holding[peer] = revision
            self._holding_news = trio.current_time()

    def connected(self, peer: str) -> None:
        if self.trust.is_trusted(peer):
            self._spawn(self._exchange_on_connect, peer)

    async def _exchange_on_connect(self, peer: str) -> None:
        # One heads exchange per new connection, not one from each end (both ends merge what it
        # carries): the end with the smaller peer ID starts it; the other starts one only if
        # none came within CONNECT_GRACE (that end's event was lost, its exchange failed).
        if self.mesh.peer_id > peer:
            since = trio.current_time()
            await trio.sleep(CONNECT_GRACE)
            if self._exchanged.get(peer, -math.inf) >= since:
                return
        await self.exchange_heads(peer)

    async def anti_entropy(self, interval: float, after_round: Callable[[], None]) -> None:
        """Every interval, exchange heads with ANTI_ENTROPY_FANOUT connected peers not known to
        be at our head, or with one random connected peer when all are (what we believe of a
        peer may be out of date). A round costs a host one stream whatever N: no gossip, whose
        every message costs every host of the mesh."""
        while True:
            await trio.sleep(interval * random.uniform(0.8, 1.2))
            head = self._head()
            if head is None:
                continue
            mine = head.revision
            revs = {p: self.candidates.peer_revision(p) for p in self.mesh.connected_peers()
                    if self.trust.is_trusted(p)}
            # A peer that holds our head's document is not behind on anything a heads exchange
            # could tell it (it relayed or offered it, or its report passed through us).
            stale = [p for p, r in revs.items() if r != mine and self._holding.get(p) != mine]
            # Not every stale peer: during a slow rollout every peer is stale to every other,
            # and exchanging with all of them competed with the rollout itself.
            picked = random.sample(stale, min(len(stale), ANTI_ENTROPY_FANOUT)) if stale \
                else random.sample(list(revs), min(len(revs), 1))
            async with trio.open_nursery() as nursery:
                for peer in picked:
                    nursery.start_soon(self.exchange_heads, peer)
            after_round()
