"""Notice peers that vanish without closing (link cut, host frozen, power loss).

py-libp2p 0.8.1's yamux sends a PING every 30 s to measure RTT but never acts on a missing
answer, and TCP without traffic does not notice a dead path for many minutes. So we ping every
connected peer with a yamux PING frame (``host.PingingYamux``: one 12-byte header each way,
answered by the peer's muxer) every ``interval`` seconds with a ``timeout``; after ``misses``
consecutive failures the connection is closed, which fires the normal disconnect path (notifee
-> MeshEvents.on_peer_disconnected). A healthy peer is probed ``interval`` after it was last
heard; a missed probe is retried as soon as its ``timeout`` has passed (at once after a probe
that used it all), so the worst-case detection time is ``interval + misses * timeout``
(defaults: 10 + 3 x 5 = 25 s), counted from the last time the peer was heard. Retrying a miss
at once rather than an interval later is what lets the interval (and so the idle cost) double
for 5 s more detection time, with the same tolerance of a stalled but healthy peer (three
timeouts in a row).

A peer that pinged *us* was heard: our muxer answers its PING and tells us, and our next probe
of that peer waits until ``interval`` after it. Both ends run the same rule, so on a healthy
link one side's pings keep the other quiet: one ping per interval per connection instead of two
(pings were half the idle CPU of a 30-agent full mesh). Traffic counts as well: a stream opened
to or from the peer (a heads exchange, a pull, an announcement push) is heard too, so a busy
link carries no pings at all. A cut link silences both directions, so each end still probes and
drops within the bound. Peers that ping with ``/ipfs/ping/1.0.0`` streams (agents before the
muxer-level ping, other libp2p nodes) are answered by ``handle_ping`` and count as heard too.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
from libp2p.host.ping import ID as PING_PROTOCOL  # noqa: F401  (the mesh serves handle_ping)
from libp2p.host.ping import PING_LENGTH
from libp2p.io.utils import read_exactly
from libp2p.peer.id import ID

from .bounded import call_abandonable
from .guard import remote_peer, reset_quietly

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LivenessParams:
    # A timeout of 5 s rides out an overloaded host (a busy 2-core box stalled healthy pings
    # past 2 s and peers were dropped and redialled); a dead link is still dropped in <= 25 s.
    # The interval sets the idle cost (one ping per idle connection per interval, see the
    # module doc): pings were most of an idle agent's CPU at 5 s.
    interval: float = 10.0
    timeout: float = 5.0
    misses: int = 3

    @property
    def bound(self) -> float:
        """Worst-case seconds from a silent cut to the connection being closed."""
        return self.interval + self.misses * self.timeout


class Liveness:
    def __init__(
        self,
        host,
        connected: Callable[[], list[str]],
        drop: Callable[[str], Awaitable[None]],
        on_alive: Callable[[str, float], None],
        stats,
        params: LivenessParams = LivenessParams(),
        *,
        count: Callable[[str, str], None] = lambda kind, direction: None,
    ):
        """``count(kind, direction)`` counts each ping and pong sent or received."""
        self._host = host
        self._connected = connected
        self._drop = drop
        self._on_alive = on_alive
        self._stats = stats
        self._count = count
        self.params = params
        self._misses: dict[str, int] = {}
        self._inflight: set[str] = set()
        #: trio time each peer was last heard (its ping to us, or its answer to ours)
        self._heard: dict[str, float] = {}
        self._nursery: trio.Nursery | None = None
        #: last measured round-trip time per peer, seconds
        self.rtt: dict[str, float] = {}

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        # One pinger per connected peer, each on its own clock: a failed probe that used the whole
        # timeout is followed by the next one at once, so the detection bound holds. The mesh
        # starts a peer's pinger when it connects (watch); this sweep, once an interval, only
        # catches a connection that came up before the pingers could be started.
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                for peer in self._connected():
                    self.watch(peer)
                await trio.sleep(self.params.interval)

    def watch(self, peer: str) -> None:
        """Start pinging ``peer`` (just connected) unless its pinger already runs."""
        if self._nursery is None or peer in self._inflight:
            return
        self._inflight.add(peer)
        self._nursery.start_soon(self._pinger, peer)

    def heard(self, peer: str) -> None:
        """``peer`` just showed its connection works (it pinged us, answered our ping, or a
        stream to or from it was opened): its next probe can wait."""
        if peer not in self._inflight:
            return  # not (or no longer) connected: nothing to put off, nothing to keep
        self._heard[peer] = trio.current_time()
        self._misses.pop(peer, None)

    async def handle_ping(self, stream) -> None:
        """The ``/ipfs/ping/1.0.0`` responder (for peers that ping with streams): echo each
        32-byte ping and note the peer heard."""
        peer = remote_peer(stream)
        try:
            while True:
                payload = await read_exactly(stream, PING_LENGTH)
                self._count("ping", "received")
                await stream.write(payload)
                self._count("pong", "sent")
                if peer:
                    self.heard(peer)
        except Exception:  # EOF, reset, connection closed: the pinger's side notices
            await reset_quietly(stream)

    async def _pinger(self, peer: str) -> None:
        self._listen(peer)
        try:
            while peer in self._connected():
                due = self._heard.get(peer, -float("inf")) + self.params.interval
                if trio.current_time() < due:
                    await trio.sleep_until(due)
                    continue
                started = trio.current_time()
                if not await self._probe_once(peer):
                    return
                # After an answer the peer was just heard (the check above waits an interval);
                # a miss is retried once its timeout has passed (see the module doc's bound).
                await trio.sleep_until(
                    started + min(self.params.interval, self.params.timeout)
                )
        finally:
            self._inflight.discard(peer)
            self._forget(peer)

    def _muxers(self, peer: str) -> list:
        conns = self._host.get_network().get_connections(ID.from_base58(peer))
        return [c.muxed_conn for c in conns if hasattr(c.muxed_conn, "ping")]

    def _listen(self, peer: str) -> None:
        """Have the peer's muxer tell us when the peer pings us (it answers by itself)."""
        for muxer in self._muxers(peer):
            muxer.on_pinged = lambda peer=peer: self._pinged(peer)

    def _pinged(self, peer: str) -> None:
        self._count("ping", "received")
        self._count("pong", "sent")
        self.heard(peer)

    async def _ping(self, peer: str) -> float:
        muxers = self._muxers(peer)
        if not muxers:
            raise ConnectionError("no muxed connection to ping")
        self._count("ping", "sent")
        rtt = await muxers[0].ping()
        self._count("pong", "received")
        return rtt

    def _forget(self, peer: str) -> None:
        self._misses.pop(peer, None)
        self._heard.pop(peer, None)
        self.rtt.pop(peer, None)

    async def _probe_once(self, peer: str) -> bool:
        """One ping; False once the peer has been dropped."""
        try:
            # Abandonable: a write over a dead path can block where no deadline reaches
            # (bounded.py); the miss must still count on time.
            rtt = await call_abandonable(self._nursery, self.params.timeout, self._ping, peer)
        except Exception as exc:  # timeout, connection closing: each counts as one miss
            misses = self._misses.get(peer, 0) + 1
            self._misses[peer] = misses
            log.debug("ping %s missed (%d/%d): %s", peer, misses, self.params.misses, exc)
            if misses >= self.params.misses:
                self._stats["dead_peer_dropped"] += 1
                log.warning("peer %s missed %d pings; dropping its connection", peer, misses)
                await self._drop(peer)
                return False
            return True
        self.heard(peer)
        self.rtt[peer] = rtt
        self._on_alive(peer, self.rtt[peer])
        return True
