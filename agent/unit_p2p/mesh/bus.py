"""The gossip bus: gossipsub with every parameter chosen on purpose (see docs/mesh.md).

Gossip is the fast path for small signed announcements only; the sync layer never depends on it
for correctness (it pushes to connected peers and exchanges heads), so these settings favour
low latency and no self-inflicted loss over scale tricks.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub, get_peer_and_seqno_msg_id
from libp2p.pubsub.score import ScoreParams

from .trust import TrustPolicy

log = logging.getLogger(__name__)

#: largest gossip payload accepted or published (a broadcast, the largest, is a head of under
#: 4 KiB plus a document of at most 16 KiB)
MAX_ANNOUNCEMENT_BYTES = 64 * 1024
#: largest inbound pubsub RPC frame: one full message plus control traffic (IHAVE/IWANT ids,
#: subscriptions) with room to spare; py-libp2p's default is 1 MiB
MAX_RPC_BYTES = 256 * 1024


@dataclass(frozen=True)
class GossipParams:
    # /meshsub/1.2.0 (IDONTWANT) and 1.1.0 only: the versions js/go speak; 1.3+/2.0 in 0.8.1 are
    # experimental extensions we do not need and do not want to expose.
    protocols: tuple[str, ...] = (str(PROTOCOL_ID_V12), str(PROTOCOL_ID_V11))
    # Mesh degree D=4/Dlo=3/Dhi=8 (the spec's 6/4/12 halved, roughly). Every node receives each
    # message about (mesh degree - 1) times, and a publish is one gossip message, so its flood
    # costs about that many copies per host (the fleet simulator, N=1,000: mean mesh degree 5.6,
    # 4.6 N copies; Dhi=6 made 3.0 N copies but 1.7 N pushes to the more peers pruned, and no
    # fewer messages in all). Hops grow from log6 to log4 of N: milliseconds.
    degree: int = 4
    degree_low: int = 3
    degree_high: int = 8
    # Fanout TTL (s): only matters for topics we publish to without subscribing; we always are.
    fanout_ttl: int = 60
    # Message cache: no IHAVE lazy gossip (spec: 3 heartbeats), keep 5 for IWANT.
    # IHAVE goes to every connected non-mesh peer (at least 6) each heartbeat a message id is in
    # the window, about (degree - D) x window messages per host and publish. The sync layer is
    # the lazy push for revisions (a host offers a revision to the connected peers gossip does
    # not reach from it; heads are exchanged on every new connection), so the fleet simulator
    # needs no IHAVE: N=1,000, 1 % loss, 15.8 N messages a publish at window 0, 20.6 N at 1,
    # 30.3 N at 3, the same time to applied (bench/results/simulate-whatif.md,
    # simulate-ihave-window-1.md). Gossip itself needs no IHAVE to stay whole on real links
    # either: a pubsub stream replaced while its peer stays connected keeps the message being
    # written and the peer's subscription (_keep_peers_across_stream_swaps; without it such a
    # message was lost at window 0, tests/mesh/test_peers.py). With 0 the message cache also
    # replays nothing to a newly subscribed peer: the heads exchange on connect covers it.
    gossip_window: int = 0
    gossip_history: int = 5
    # IDONTWANT (/meshsub/1.2.0) only for messages of at least this size, as go-libp2p does
    # (IDontWantMessageThreshold): py-libp2p 0.8.1 sends one to every mesh peer for every message
    # it receives, which for our ~300-byte announcements costs more than the duplicate it saves
    # (N=100: 556 IDONTWANT for 423 message copies per publish). Above the largest broadcast
    # (a head with a document of up to 16 KiB, sync/wire/heads.py): a few KiB of duplicates cost a
    # host less than D control messages for each publish.
    idontwant_min_bytes: int = 32 * 1024
    # py-libp2p's default heartbeat is 120 s; 1 s keeps mesh repair prompt while there is
    # something to repair (and shifts the message cache while it holds messages). With nothing
    # to do (no message in the cache, the mesh within its degree bounds) the heartbeat waits up
    # to heartbeat_idle_interval, or until a peer, a subscription or a message wakes it
    # (QuietGossipSub): its own work is ~0.1 ms, the cost at idle was 60 wake-ups a minute.
    heartbeat_initial_delay: float = 0.1
    heartbeat_interval: int = 1
    heartbeat_idle_interval: float = 10.0
    # Peer exchange off: PX would let a peer point us at arbitrary addresses; discovery is ours.
    do_px: bool = False
    # Backoff after PRUNE (s): the spec's 60. A pruned peer (a hub's excess leaf) GRAFTs again
    # as it ends and is pruned again at the next heartbeat: an idle hub with 20 leaves got 48
    # GRAFT and sent 48 PRUNE a minute at 10 s, 16 and 16 at 60 s (N per backoff: per idle
    # minute, 100 a second at a 1,000-leaf hub with 10 s). A peer kept out of our mesh longer
    # loses nothing: what we publish or forward goes to the peers we pruned or refused too
    # (QuietGossipSub), and its own publish with an empty mesh goes to subscribed peers.
    prune_back_off: int = 60
    unsubscribe_back_off: int = 10
    max_idontwant_messages: int = 10
    # Adaptive gossip may stretch the heartbeat to 30-60 s (docs/libp2p.md): off.
    adaptive_gossip: bool = False
    # Spam protection (10 msg/s/topic/peer) also throttled our OWN publishes (24 of 100 through
    # at 50 msg/s, docs/libp2p.md): off. Per-peer announcement rate limiting lives in the sync
    # layer, after the trust check, where it can be counted per peer.
    spam_protection: bool = False
    max_messages_per_topic_per_second: float = 1000.0
    # Eclipse protection wants >= 3 distinct IPs in the mesh: on loopback or a small LAN it only
    # refuses good peers. Trust is enforced by the allowlist instead.
    eclipse_protection: bool = False
    min_mesh_diversity_ips: int = 1
    max_pending_messages_per_peer: int = 100
    pending_messages_ttl: float = 30.0
    # Pubsub: seen-cache 120 s (spec's 2 min) catches every relayed duplicate; the seqno counter
    # starts at time.time_ns() so a restarted agent's publishes are never mistaken for old ones.
    seen_ttl: int = 120
    sweep_interval: int = 30
    validation_timeout: float = 2.0
    max_subscriptions_per_rpc: int = 16
    max_subscriptions_per_peer: int = 16


#: most peers QuietGossipSub remembers as pruned (the oldest are forgotten beyond it)
MAX_PRUNED_PEERS = 4096


def announcement_topic(mesh: str) -> str:
    # Hashed so any mesh name is a safe topic string of fixed length.
    digest = hashlib.sha256(f"unit-p2p/mesh/{mesh}".encode()).hexdigest()[:32]
    return f"/unit-p2p/announce/1/{digest}"


class QuietGossipSub(GossipSub):
    """GossipSub whose heartbeat sleeps while it has nothing to do.

    py-libp2p 0.8.1's heartbeat ticks every ``heartbeat_interval`` forever. This one ticks at
    that rate while a tick has work: messages in the cache (IHAVE gossip for the last
    ``gossip_window`` ticks, and shifting them out), or a mesh outside [D_low, D_high] with
    peers to graft or prune. Otherwise it waits up to ``idle_interval`` or until a peer is
    added or removed, subscribes, or a message is published or forwarded. A GRAFT or PRUNE
    does not wake it: a hub's pruned leaves GRAFT again as their backoff ends, and pruning them
    at once cycled them faster (idle hub with 20 leaves: 80 GRAFT and 80 PRUNE a minute instead
    of 48). A tick is never closer than ``heartbeat_interval`` to the one before, so the gossip
    windows keep their length in ticks and at least that in seconds.
    The tick itself is the library's (``_tick``: the same steps, in the same order, as its
    ``heartbeat`` loop with adaptive gossip and eclipse protection off, as we run it), without
    the score-driven steps (opportunistic grafting, mesh quality): every score is 0 here.
    IDONTWANT is sent only for messages of at least ``idontwant_min_bytes``.

    It also remembers the peers it PRUNEd from a topic's mesh (the heartbeat's pruning of a mesh
    above D_high) or refused into it (a GRAFT answered with PRUNE: backoff, flood protection),
    until they are in that mesh again, unsubscribe or disconnect: ``pruned_peers(topic)``. Those
    peers wanted our gossip (typically a hub's leaves, whose only mesh peer was the hub), so
    every message we publish or forward goes to them as well as to the mesh. Both sets are read
    in the same step, so a leaf that the heartbeat grafts or prunes while a publish spreads is
    in one of them (the sync layer's push to the pruned peers, read later, missed a leaf
    grafted in between now and then, which then waited for anti-entropy), and it rides the
    pubsub stream already open instead of a stream of its own.
    """

    def __init__(self, *args, idle_interval: float, idontwant_min_bytes: int = 1024, **kwargs):
        super().__init__(*args, **kwargs)
        self.idle_interval = idle_interval
        self.idontwant_min_bytes = idontwant_min_bytes
        #: ids of the messages being published or forwarded that are too small for IDONTWANT
        self._small: set[bytes] = set()
        self._wake = trio.Event()
        #: ticks run (a count for tests and the footprint benchmark)
        self.ticks = 0
        #: peer -> topics we pruned it from (or refused it into) since it was last in that
        #: mesh, oldest first; see pruned_peers
        self.pruned: dict[ID, set[str]] = {}

    def _poke(self) -> None:
        self._wake.set()

    def add_peer(self, peer_id, protocol_id) -> None:
        super().add_peer(peer_id, protocol_id)
        self._poke()

    def remove_peer(self, peer_id) -> None:
        super().remove_peer(peer_id)
        self.pruned.pop(peer_id, None)
        self._poke()

    def pruned_peers(self, topic: str) -> set[ID]:
        """Subscribed peers we pruned from (or refused into) ``topic``'s mesh and that have not
        been in it since: they get no gossip from us."""
        mesh = self.mesh.get(topic, set())
        subscribed = self.pubsub.peer_topics.get(topic, set()) if self.pubsub else set()
        return {peer for peer, topics in self.pruned.items()
                if topic in topics and peer not in mesh and peer in subscribed}

    def note_pruned(self, peer_id: ID, topic: str) -> None:
        topics = self.pruned.pop(peer_id, set())  # re-inserted: the newest go last
        topics.add(topic)
        self.pruned[peer_id] = topics
        # Entries go when their peer disconnects, so this only bounds a fault: a peer is
        # remembered only after it was in our mesh or sent a GRAFT, over a trusted connection.
        while len(self.pruned) > MAX_PRUNED_PEERS:
            del self.pruned[next(iter(self.pruned))]

    def forget_pruned(self, peer_id: ID, topic: str) -> None:
        topics = self.pruned.get(peer_id)
        if topics is not None:
            topics.discard(topic)
            if not topics:
                del self.pruned[peer_id]

    def _notify_mesh_peer_added(self, peer_id, topic) -> None:
        # Every way into a mesh passes here: the heartbeat's grafting, an accepted GRAFT, the
        # graft on a new subscription, joining a topic.
        super()._notify_mesh_peer_added(peer_id, topic)
        self.forget_pruned(peer_id, topic)

    async def handle_graft(self, graft_msg, sender_peer_id) -> None:
        await super().handle_graft(graft_msg, sender_peer_id)
        topic = graft_msg.topicID
        if topic in self.mesh and sender_peer_id not in self.mesh[topic]:
            self.note_pruned(sender_peer_id, topic)  # refused: answered with PRUNE

    async def publish(self, msg_forwarder, pubsub_msg) -> None:
        small = len(pubsub_msg.data) < self.idontwant_min_bytes and self.pubsub is not None
        if small:
            msg_id = self.pubsub.get_message_id(pubsub_msg)
            self._small.add(msg_id)
        try:
            await super().publish(msg_forwarder, pubsub_msg)
        finally:
            if small:
                self._small.discard(msg_id)
        self._poke()

    async def _emit_idontwant_for_message(self, msg_id, topic_ids) -> None:
        if msg_id not in self._small:
            await super()._emit_idontwant_for_message(msg_id, topic_ids)

    def _get_peers_to_send(self, topic_ids, msg_forwarder, origin, msg_id=None):
        peers = set(super()._get_peers_to_send(topic_ids, msg_forwarder, origin, msg_id))
        pubsub = self.pubsub
        if pubsub is None:
            return peers
        for topic in topic_ids:
            if topic not in self.mesh:
                continue
            # The peers we pruned want the message too (see the class doc).
            peers.update(self.pruned_peers(topic) - {msg_forwarder, origin})
            # Our own message and an empty mesh (every mesh peer PRUNEd us: a hub's leaf, for
            # the prune backoff): py-libp2p sends it to nobody, and the flood never starts. It
            # goes to every subscribed peer instead (flood publishing, as go's gossipsub does
            # with every message of its own); they forward it into their meshes. All, not D at
            # random: the sync layer then knows whom it reached (Spread._gossip_reach).
            if msg_forwarder == origin == pubsub.my_id and not self.mesh[topic]:
                peers.update(p for p in pubsub.peer_topics.get(topic, ())
                             if p in self.peer_protocol)
        return peers

    def _perform_opportunistic_grafting(self, topic, peers_to_graft) -> int:
        # py-libp2p 0.8.1 runs this on every heartbeat (the spec: every 60, and only when the
        # mesh's median score is low). Our scores are all 0 (every weight is 0: admission is the
        # allowlist's job), so every non-mesh peer passed the threshold and each tick grafted 2
        # more, until the mesh passed D_high and was pruned back to D: a GRAFT and a PRUNE per
        # agent and second while messages were cached (N=100: 821 GRAFT and 831 PRUNE per
        # publish). With no scores there is nothing to opportunize on.
        return 0

    def busy(self) -> bool:
        """Would the next tick do anything but housekeeping?"""
        if any(self.mcache.history):
            return True
        for topic, mesh in self.mesh.items():
            subscribed = self.pubsub.peer_topics.get(topic, ()) if self.pubsub else ()
            if len(mesh) > self.degree_high:
                return True
            if len(mesh) < self.degree_low and any(p not in mesh for p in subscribed):
                return True
        return False

    async def heartbeat(self) -> None:
        await trio.sleep(self.heartbeat_initial_delay)
        while True:
            self._wake = trio.Event()
            last = trio.current_time()
            await self._tick()
            self.ticks += 1
            if not self.busy():
                with trio.move_on_after(self.idle_interval):
                    await self._wake.wait()
            await trio.sleep_until(last + self.heartbeat_interval)

    async def _tick(self) -> None:
        peers_to_graft, peers_to_prune = self.mesh_heartbeat()
        for peer, topics in peers_to_prune.items():
            for topic in topics:
                self.note_pruned(peer, topic)
        self.fanout_heartbeat()
        peers_to_gossip = self.gossip_heartbeat()
        await self._emit_control_msgs(peers_to_graft, peers_to_prune, peers_to_gossip)
        self.mcache.shift()
        if self.scorer is not None:
            self.scorer.on_heartbeat()
        self._periodic_security_cleanup()
        # The library's _maintain_mesh_quality is left out: it swaps the worst-scoring mesh peer
        # for a better one, and with every score 0 there never is one.
        self._prune_idontwant_entries()


def build_pubsub(
    host, topic: str, trust: TrustPolicy, stats, params: GossipParams = GossipParams(),
    check: Callable[[str, bytes], bool] | None = None,
) -> tuple[Pubsub, GossipSub]:
    """Pubsub + GossipSub for ``host``; both still need to be run as services."""
    router = QuietGossipSub(
        idle_interval=params.heartbeat_idle_interval,
        idontwant_min_bytes=params.idontwant_min_bytes,
        protocols=list(params.protocols),
        degree=params.degree,
        degree_low=params.degree_low,
        degree_high=params.degree_high,
        direct_peers=None,
        time_to_live=params.fanout_ttl,
        gossip_window=params.gossip_window,
        gossip_history=params.gossip_history,
        heartbeat_initial_delay=params.heartbeat_initial_delay,
        heartbeat_interval=params.heartbeat_interval,
        do_px=params.do_px,
        prune_back_off=params.prune_back_off,
        unsubscribe_back_off=params.unsubscribe_back_off,
        # Scoring gates all at -inf: who may participate is the allowlist's call, not a score.
        score_params=ScoreParams(),
        max_idontwant_messages=params.max_idontwant_messages,
        adaptive_gossip_enabled=params.adaptive_gossip,
        spam_protection_enabled=params.spam_protection,
        max_messages_per_topic_per_second=params.max_messages_per_topic_per_second,
        eclipse_protection_enabled=params.eclipse_protection,
        min_mesh_diversity_ips=params.min_mesh_diversity_ips,
        max_pending_messages_per_peer=params.max_pending_messages_per_peer,
        pending_messages_ttl=params.pending_messages_ttl,
    )
    pubsub = Pubsub(
        host,
        router,
        seen_ttl=params.seen_ttl,
        sweep_interval=params.sweep_interval,
        strict_signing=True,
        msg_id_constructor=get_peer_and_seqno_msg_id,
        validation_timeout=params.validation_timeout,
        max_subscriptions_per_rpc=params.max_subscriptions_per_rpc,
        max_subscriptions_per_peer=params.max_subscriptions_per_peer,
        max_inbound_rpc_size=MAX_RPC_BYTES,
        allowed_topics={topic},
    )
    # Pubsub seeds its seqno with int(time.time()): a restart within the seen-cache window reused
    # seqnos and lost the first 20 publishes (docs/libp2p.md). Nanoseconds never repeat across
    # restarts.
    pubsub.counter = time.time_ns()
    pubsub.set_topic_validator(topic, _validator(trust, stats, check),
                               is_async_validator=False)
    _wake_on_subscription(pubsub, router)
    _send_without_sender_records(pubsub)
    _keep_peers_across_stream_swaps(pubsub, router)
    return pubsub, router


def _wake_on_subscription(pubsub: Pubsub, router: QuietGossipSub) -> None:
    """Wake the heartbeat when a peer subscribes: a subscription usually arrives just after
    the connection, and a mesh below D_low is grafted at the next tick instead of up to
    ``idle_interval`` later. (Until then the new peer gets no messages from us: there is no
    IHAVE gossip, see GossipParams.gossip_window.) A peer that unsubscribes is no longer one
    we pruned from that topic."""
    handle = pubsub.handle_subscription

    def handle_subscription(origin_id: ID, sub_message: rpc_pb2.RPC.SubOpts) -> None:
        handle(origin_id, sub_message)
        if not sub_message.subscribe:
            router.forget_pruned(origin_id, sub_message.topicid)
        router._poke()

    pubsub.handle_subscription = handle_subscription


#: the outbound pubsub stream the current task writes to (pubsub calls _handle_dead_peer from the
#: writer when a write fails, and from readers and the disconnect handler with this unset)
_WRITING_TO: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "pubsub_writing_to", default=None)


def on_live_connection(pubsub: Pubsub, peer_id: ID, stream) -> bool:
    """Is ``stream`` (pubsub's stream to ``peer_id``) on a connection the swarm still holds?"""
    conn = getattr(stream, "muxed_conn", None)
    if conn is None or getattr(conn, "is_closed", False):
        return False
    live = pubsub.host.get_network().get_connections(peer_id)
    return any(getattr(c, "muxed_conn", None) is conn for c in live)


def _keep_peers_across_stream_swaps(pubsub: Pubsub, router: QuietGossipSub) -> None:
    """A pubsub stream that dies while its peer stays connected is replaced, and the peer keeps
    its subscriptions, its place in our mesh and the messages that were on their way to it.

    py-libp2p 0.8.1 handles every dead pubsub stream as a dead peer (``_handle_dead_peer``): it
    forgets the peer's subscriptions, drops it from the mesh and loses the RPC whose write
    failed and whatever was still queued behind it; when a connection is left it then opens a
    new stream (with its hello, our subscriptions). But the peer re-announces *its*
    subscriptions only on a stream *it* opens, and it may already have done so: measured with
    two connections of which the one carrying both pubsub streams closed, each side's swap ran
    at its own moment, the side that swapped second forgot the other's fresh subscription and
    never learnt it again (gossip in that direction stayed dead, at any IHAVE window), and a
    message published just after the close was written to the dead stream and dropped. At an
    IHAVE window of 1 that message still arrived only because pubsub replays the message
    cache's gossip window to a peer whose subscription it (re)learns; at 0 it was lost.

    While a live connection to the peer remains, its subscriptions and mesh membership (or its
    being pruned from our mesh) are therefore kept through the swap, and the publishes that did
    not go out (the failed write, the queue behind it) are sent on the new stream with the
    router's pending messages (bounded like those: ``max_pending_messages_per_peer``,
    ``pending_messages_ttl``). A peer with no connection left is removed as before, from our
    mesh too.
    """
    handle_dead_peer = pubsub._handle_dead_peer
    write = pubsub.write_msg
    flush_pending = router.flush_pending_messages
    sending_loop = pubsub.handle_sending_messages
    #: id(stream) -> the RPCs being written to it, so a swap keeps them in order
    writing: dict[int, list[rpc_pb2.RPC]] = {}
    #: publishes kept for a connected peer's next stream. Not the router's pending list itself:
    #: a write failing while that list is flushed would append to the list being iterated.
    kept: dict[ID, list[tuple[float, rpc_pb2.RPC]]] = {}

    def keep(peer_id: ID, rpcs: list[rpc_pb2.RPC]) -> None:
        now = time.time()
        entries = [(ts, rpc) for ts, rpc in kept.get(peer_id, ())
                   if now - ts <= router._pending_messages_ttl]
        entries += [(now, rpc_pb2.RPC(publish=rpc.publish)) for rpc in rpcs if rpc.publish]
        if entries:
            kept[peer_id] = entries[-router._max_pending_messages_per_peer:]

    async def flush_pending_messages(peer_id: ID) -> None:
        entries = kept.pop(peer_id, None)
        if entries:
            router._pending_messages[peer_id].extend(entries)
        await flush_pending(peer_id)

    def _handle_dead_peer(peer_id: ID) -> None:
        if not pubsub._peer_is_connected(peer_id):
            kept.pop(peer_id, None)
            handle_dead_peer(peer_id)
            router.remove_peer(peer_id)  # also when it never finished registering
            return
        topics = [t for t, peers in pubsub.peer_topics.items() if peer_id in peers]
        subscriptions = pubsub._peer_subscription_count.get(peer_id)
        meshes = [t for t, peers in router.mesh.items() if peer_id in peers]
        pruned = router.pruned.get(peer_id)
        stream = pubsub.peers.get(peer_id)
        outbound = _WRITING_TO.get()
        if stream is not None and (
                (outbound is not None and outbound is not stream)  # an old stream of ours
                or (outbound is None and on_live_connection(pubsub, peer_id, stream))):
            return  # ours is fine: an inbound stream (the peer's to replace) or an old one ended
        taken = writing.pop(id(stream), None)
        unsent = list(taken or ())
        if taken:
            taken.clear()
        queue = pubsub.peer_queues.get(peer_id)
        while queue is not None and (rpc := queue._queue.pop()) is not None:
            unsent.append(rpc)
        handle_dead_peer(peer_id)
        for topic in topics:
            pubsub.peer_topics.setdefault(topic, set()).add(peer_id)
        if subscriptions is not None:
            pubsub._peer_subscription_count[peer_id] = subscriptions
        for topic in meshes:
            router.mesh[topic].add(peer_id)
        if pruned:
            router.pruned[peer_id] = pruned
        keep(peer_id, unsent)

    async def write_msg(stream, rpc_msg: rpc_pb2.RPC) -> bool:
        key = id(stream)
        batch = writing.setdefault(key, [])
        batch.append(rpc_msg)
        ok = False
        token = _WRITING_TO.set(stream)  # seen by _handle_dead_peer if this write fails
        try:
            ok = await write(stream, rpc_msg)
            return ok
        finally:
            _WRITING_TO.reset(token)
            # Not taken by a swap (that pops the batch): still ours to keep if it failed.
            mine = any(r is rpc_msg for r in batch)
            batch[:] = [r for r in batch if r is not rpc_msg]
            if not batch and writing.get(key) is batch:
                del writing[key]
            peer_id = stream.muxed_conn.peer_id
            if mine and not ok and pubsub._peer_is_connected(peer_id):
                keep(peer_id, [rpc_msg])

    async def handle_sending_messages(peer_id: ID, stream, queue) -> None:
        _WRITING_TO.set(stream)  # this task's own context: a failure here is this stream's
        await sending_loop(peer_id, stream, queue)

    pubsub._handle_dead_peer = _handle_dead_peer
    pubsub.write_msg = write_msg
    pubsub.handle_sending_messages = handle_sending_messages
    router.flush_pending_messages = flush_pending_messages


def _send_without_sender_records(pubsub: Pubsub) -> None:
    """Send RPCs without the signed peer record py-libp2p 0.8.1 attaches to every one.

    Each RPC (every published or forwarded message, every batch of control messages) carried the
    sender's signed peer record, and the receiver verified its Ed25519 signature before looking
    at the RPC, duplicates included: the largest single cost of a publish in a 30-agent mesh
    (16 % of an agent's samples). The record only certifies listen addresses, which our
    discovery already knows, over a connection Noise already authenticated. The stream's hello
    (sent once, not through ``write_msg``) still carries it. Records a peer does send are still
    verified as before; our agents simply send none.
    """
    write = pubsub.write_msg

    async def write_msg(stream, rpc_msg: rpc_pb2.RPC) -> bool:
        if rpc_msg.HasField("senderRecord"):
            rpc_msg.ClearField("senderRecord")
        return await write(stream, rpc_msg)

    pubsub.write_msg = write_msg


_CONTROL_KINDS = ("ihave", "iwant", "graft", "prune", "idontwant")


def count_gossipsub(pubsub: Pubsub, router: GossipSub, count) -> None:
    """Count gossipsub's wire traffic with ``count("gossipsub", kind, direction, n)``.

    Kinds: ``message`` (each copy of a published message, duplicates included: what a publish
    costs the network), ``subscribe``, and the control entries ihave/iwant/graft/prune/idontwant.
    Received messages are counted where pubsub hands them to ``push_msg`` (one call per copy),
    received control where the router handles it; what is sent, in ``write_msg``.
    """

    def tally(rpc: rpc_pb2.RPC, direction: str, messages: bool) -> None:
        if messages and rpc.publish:
            count("gossipsub", "message", direction, len(rpc.publish))
        if messages and rpc.subscriptions:
            count("gossipsub", "subscribe", direction, len(rpc.subscriptions))
        if rpc.HasField("control"):
            for kind in _CONTROL_KINDS:
                n = len(getattr(rpc.control, kind))
                if n:
                    count("gossipsub", kind, direction, n)

    write = pubsub.write_msg

    async def write_msg(stream, rpc_msg: rpc_pb2.RPC) -> bool:
        tally(rpc_msg, "sent", True)
        return await write(stream, rpc_msg)

    pubsub.write_msg = write_msg
    push_msg = pubsub.push_msg

    async def counted_push_msg(msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        if msg_forwarder != pubsub.my_id:
            count("gossipsub", "message", "received", 1)
        await push_msg(msg_forwarder, msg)

    pubsub.push_msg = counted_push_msg
    handle_rpc = router.handle_rpc

    async def counted_handle_rpc(rpc: rpc_pb2.RPC, sender_peer_id: ID) -> None:
        tally(rpc, "received", False)
        await handle_rpc(rpc, sender_peer_id)

    router.handle_rpc = counted_handle_rpc


def _validator(trust: TrustPolicy, stats,
               check: Callable[[str, bytes, str], bool] | None = None):
    """Runs after pubsub verified the signature, before delivery AND before relaying: a message
    refused here goes no further than this hop. ``check(origin, data, forwarder)`` is the
    application's own check of the payload (the sync layer's: schema, mesh, origin signature of a
    head). Pubsub validates the first copy of a message only, so ``forwarder`` is the peer whose
    copy arrived first."""

    def validate(forwarder: ID, msg: rpc_pb2.Message) -> bool:
        if len(msg.data) > MAX_ANNOUNCEMENT_BYTES:
            stats["announcement_too_large"] += 1
            return False
        try:
            origin = ID(msg.from_id).to_base58()
        except Exception:
            stats["gossip_malformed"] += 1
            return False
        if not trust.is_trusted(origin):
            trust.reject("untrusted_announcement", origin, f"relayed by {forwarder}")
            return False
        return check is None or check(origin, bytes(msg.data), forwarder.to_base58())

    return validate
