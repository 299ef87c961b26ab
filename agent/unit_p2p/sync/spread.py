"""Who hears of our head, and when: the message-complexity policy of the sync layer.

Every fan-out decision lives here: gossip, direct pushes, the relay after an apply, the heads
exchange (memberlist's LocalState / MergeRemoteState pair) and the anti-entropy rounds.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from unit_p2p.errors import MeshError, WireError
from unit_p2p.metrics import Metrics
from unit_p2p.sync import wire
from unit_p2p.sync.admission import TrustLike
from unit_p2p.sync.candidates import Candidates
from unit_p2p.sync.revision import Head, Revision

log = logging.getLogger("unit_p2p.sync.spread")

#: a converged agent still re-announces its head by gossip every this many announce intervals
ANNOUNCE_HEARTBEAT = 6
#: stale peers whose heads an anti-entropy round exchanges (random ones each round)
ANTI_ENTROPY_FANOUT = 3
# seconds an agent waits before relaying a revision it applied to peers not known to hold it
RELAY_DELAY = (0.2, 0.6)

#: ``protocol`` labels of the message counters
GOSSIP, NOTIFY, HEADS = "gossip", "notify", "heads"

Merge = Callable[[str, bytes, str], Awaitable[Any]]


class Spread:
    def __init__(self, mesh_name: str, mesh: Any, trust: TrustLike, candidates: Candidates,
                 metrics: Metrics, head: Callable[[], Head | None], merge: Merge,
                 spawn: Callable[..., None]):
        """``head()`` is this host's head; ``merge(peer, data, protocol)`` takes a message of a
        peer in (a heads exchange's answer); ``spawn(fn, *args)`` runs a task in the owner's
        nursery."""
        self.mesh_name = mesh_name
        self.mesh = mesh
        self.trust = trust
        self.candidates = candidates
        self.metrics = metrics
        self._head = head
        self._merge = merge
        self._spawn = spawn

    # --- what we say --------------------------------------------------------------------------

    def local_state(self) -> wire.Announce | wire.NoHead:
        """Our head as a message: the announcement, and our side of a heads exchange."""
        head = self._head()
        if head is None:
            return wire.NoHead(self.mesh_name)
        return wire.Announce(self.mesh_name, head)

    def _encode(self, protocol: str, msg: wire.Message) -> bytes:
        self.metrics.message(protocol, msg.TYPE, "sent")
        return wire.encode(msg)

    # --- how we say it ------------------------------------------------------------------------

    async def exchange_heads(self, peer: str) -> None:
        try:
            stream = await self.mesh.open_stream(peer, wire.PROTO_HEADS)
            try:
                with trio.fail_after(wire.STREAM_TIMEOUT):
                    await stream.send_all(self._encode(HEADS, self.local_state()))
                    await stream.close_write()
                    data = await stream.receive_all(wire.MAX_MESSAGE_BYTES, wire.STREAM_TIMEOUT)
            finally:
                await stream.close()
        except (MeshError, WireError, trio.TooSlowError) as exc:
            log.debug("heads exchange with %s failed: %s", peer, exc)
            return
        await self._merge(peer, data, HEADS)

    async def serve_heads(self, peer: str, stream: Any) -> None:
        """The ``/unit-p2p/heads`` handler: answer with our head, then merge theirs."""
        data = await stream.receive_all(wire.MAX_MESSAGE_BYTES, wire.STREAM_TIMEOUT)
        await stream.send_all(self._encode(HEADS, self.local_state()))
        await stream.close_write()
        await stream.close()
        await self._merge(peer, data, HEADS)

    async def push(self, peer: str, msg: wire.Message) -> None:
        try:
            stream = await self.mesh.open_stream(peer, wire.PROTO_NOTIFY)
            try:
                with trio.fail_after(wire.STREAM_TIMEOUT):
                    await stream.send_all(self._encode(NOTIFY, msg))
                    await stream.close_write()
            finally:
                await stream.close()
        except (MeshError, WireError, trio.TooSlowError) as exc:
            log.debug("push to %s failed: %s", peer, exc)

    async def gossip(self, msg: wire.Message) -> None:
        try:
            await self.mesh.publish(self._encode(GOSSIP, msg))
        except MeshError as exc:
            log.debug("gossip publish failed: %s", exc)

    async def broadcast(self, msg: wire.Message, skip_holders_of: Revision | None = None,
                        gossip: bool = True, skip: set[str] | frozenset[str] = frozenset(),
                        ) -> None:
        """Gossip ``msg`` and push it directly to connected trusted peers, all in parallel."""
        async with trio.open_nursery() as nursery:
            if gossip:
                nursery.start_soon(self.gossip, msg)
            for peer in self.mesh.connected_peers():
                if peer in skip:
                    continue
                known = self.candidates.peer_revision(peer)
                if skip_holders_of is not None and known is not None \
                        and known >= skip_holders_of:
                    continue
                if self.trust.is_trusted(peer):
                    nursery.start_soon(self.push, peer, msg)

    # --- when we say it -----------------------------------------------------------------------

    async def published(self) -> None:
        """A new head of our own: gossip it and push it to every connected peer."""
        await self.broadcast(self.local_state())

    async def applied(self, revision: Revision) -> None:
        """We applied ``revision``: announce it.

        The announcement is the "applied" report too (an agent only announces its own head).
        Gossip it now; push it directly, after a short random delay, only to connected peers
        still not known to hold it: in a well-connected mesh the origin's own pushes and the
        others' gossip reach nearly everyone first, so the relay costs O(N) streams, not O(N^2),
        while a hub's leaves (whom gossip may starve) still get it within a second.
        """
        await self.gossip(self.local_state())
        self._spawn(self._relay, revision)

    async def _relay(self, revision: Revision) -> None:
        await trio.sleep(random.uniform(*RELAY_DELAY))
        head = self._head()
        if head is not None and head.revision == revision:
            # Peers in our gossip mesh got this announcement from the gossip we just sent.
            await self.broadcast(self.local_state(), skip_holders_of=revision, gossip=False,
                                 skip=self.mesh.gossip_mesh_peers())

    async def report(self, revision: Revision, digest: str, status: str,
                     reason: str | None) -> None:
        await self.broadcast(wire.Report(self.mesh_name, revision, digest, status, reason))

    def behind(self, peer: str) -> None:
        """``peer`` is behind us (or has no head): tell it where the mesh is."""
        if self._head() is not None and peer in self.mesh.connected_peers():
            self._spawn(self.push, peer, self.local_state())

    def connected(self, peer: str) -> None:
        if self.trust.is_trusted(peer):
            self._spawn(self.exchange_heads, peer)

    async def anti_entropy(self, interval: float, after_round: Callable[[], None]) -> None:
        # Every interval: exchange heads with a few connected peers not known to be at our head,
        # and re-announce by gossip (it reaches peers we are not connected to) only when a peer
        # is known to be behind us, or every ANNOUNCE_HEARTBEAT intervals. A converged fleet then
        # gossips 6x less: each re-announcement costs every agent ~D receptions.
        quiet = 0
        while True:
            await trio.sleep(interval * random.uniform(0.8, 1.2))
            head = self._head()
            if head is None:
                continue
            mine = head.revision
            revs = {p: self.candidates.peer_revision(p) for p in self.mesh.connected_peers()
                    if self.trust.is_trusted(p)}
            stale = [p for p, r in revs.items() if r != mine]
            behind = [p for p in stale if revs[p] is None or revs[p] < mine]
            quiet += 1
            if behind or quiet >= ANNOUNCE_HEARTBEAT:
                quiet = 0
                await self.gossip(self.local_state())
            # A few stale peers per round: during a slow rollout every peer is stale to every
            # other, and exchanging with all of them (N * degree streams a round) competed with
            # the rollout it was meant to repair.
            async with trio.open_nursery() as nursery:
                for peer in random.sample(stale, min(len(stale), ANTI_ENTROPY_FANOUT)):
                    nursery.start_soon(self.exchange_heads, peer)
            after_round()
