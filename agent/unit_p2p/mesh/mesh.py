"""The mesh facade: the one object the rest of the agent uses to talk to peers.

It owns the libp2p host and everything around it (guards, gossip, liveness, discovery) and
exposes a narrow interface: streams by protocol, gossip publish, peer list, connect/disconnect,
and callbacks (``MeshEvents``) that always run in trio tasks of the mesh, never on libp2p's
notification path and never on zeroconf's thread.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import multiaddr
import trio
from libp2p.abc import INetConn, INetStream, INotifee
from libp2p.crypto.keys import KeyPair
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo as LibPeerInfo
from libp2p.tools.anyio_service import background_trio_service

from ..errors import MeshError
from ..identity import peer_id_of
from ..settings import Settings
from ..shutdown import cleanup_scope
from .bounded import call_abandonable
from .bus import (
    MAX_ANNOUNCEMENT_BYTES,
    GossipParams,
    announcement_topic,
    build_pubsub,
    count_gossipsub,
    on_live_connection,
)
from .discovery import Backoff, Bootstrap, Mdns, Rendezvous, split_p2p, strip_p2p
from .guard import (
    guard_pubsub,
    guard_swarm_handler,
    install_handler_guards,
    remote_peer,
    reset_quietly,
)
from .host import (
    DIAL_TIMEOUT,
    NEGOTIATE_TIMEOUT,
    build_host,
    check_listening,
    parse_listen,
    probe_ports,
)
from .liveness import PING_PROTOCOL, Liveness, LivenessParams
from .notify import MessageHandler, MessageStreams
from .stream import DEFAULT_TIMEOUT, Stream
from .trust import TrustPolicy

log = logging.getLogger(__name__)

StreamHandler = Callable[[str, Stream], Awaitable[None]]


@dataclass
class PeerInfo:
    peer_id: str
    addrs: list[str]
    connected: bool
    trusted: bool
    connected_since: float | None
    last_seen: float | None


class MeshEvents(Protocol):
    """Implemented by the reconciler. Called from the mesh's trio tasks, one at a time."""

    async def on_peer_connected(self, peer_id: str) -> None: ...

    async def on_peer_disconnected(self, peer_id: str) -> None: ...

    async def on_announcement(self, peer_id: str, data: bytes, via: str | None = None) -> None:
        """A gossip message of origin ``peer_id``, relayed to us by ``via`` (the peer whose copy
        arrived first; None when not known)."""


#: validated gossip messages whose relaying peer is remembered until their delivery
RELAYERS_KEPT = 256

#: mesh events waiting for their consumer; beyond this the mesh's event tasks wait (pushing back
#: on libp2p's own bounded queues) instead of buffering without bound
EVENT_BUFFER = 1024

MeshEvent = tuple[str, str, bytes, str | None]


class ChannelEvents:
    """MeshEvents that put each event on a channel, as ``(kind, peer_id, data, via)`` with kind
    ``connected``, ``disconnected`` or ``announcement`` (memberlist's ChannelEventDelegate).

    The mesh can then be built before its consumer exists, and events that arrive before the
    consumer runs wait in the channel instead of being lost.
    """

    def __init__(self, buffer: int = EVENT_BUFFER):
        self._send, self.receive = trio.open_memory_channel[MeshEvent](buffer)

    async def on_peer_connected(self, peer_id: str) -> None:
        await self._send.send(("connected", peer_id, b"", None))

    async def on_peer_disconnected(self, peer_id: str) -> None:
        await self._send.send(("disconnected", peer_id, b"", None))

    async def on_announcement(self, peer_id: str, data: bytes, via: str | None = None) -> None:
        await self._send.send(("announcement", peer_id, data, via))


#: ``Mesh.stats`` events that are refusals of what a peer sent; they are counted with the
#: trust refusals too, so every refusal shows in one counter (``TrustPolicy.count``)
REFUSALS = frozenset({"handler_error", "gossip_malformed", "announcement_too_large"})


class _Stats(collections.Counter):
    """The mesh's event counters; increments of ``REFUSALS`` are also reported as refusals."""

    def __init__(self, on_refused: Callable[[str, int], None]):
        self._on_refused = on_refused
        super().__init__()

    def __setitem__(self, key: str, value: int) -> None:
        grew = value - self.get(key, 0)
        super().__setitem__(key, value)
        if grew > 0 and key in REFUSALS:
            self._on_refused(key, grew)


@dataclass(frozen=True)
class MeshTuning:
    """Timing knobs; the defaults are the production values (docs/mesh.md)."""

    liveness: LivenessParams = field(default_factory=LivenessParams)
    backoff: Backoff = field(default_factory=Backoff)
    gossip: GossipParams = field(default_factory=GossipParams)
    #: longest pause between DHT rendezvous rounds while they find nothing new (discovery.py)
    dht_idle_interval: float = 60.0
    #: ... and while the connected peers stay the same and no lost peer is missing
    dht_stable_interval: float = 300.0
    #: discovery (DHT rendezvous, mDNS) dials new peers only while fewer than this many are
    #: connected; bootstrap peers and peers we lost are always redialled (docs/mesh.md)
    peer_target: int = 8
    dial_timeout: float = DIAL_TIMEOUT
    stream_timeout: float = DEFAULT_TIMEOUT
    publish_timeout: float = 5.0
    #: an outbound message stream unused this long is closed (receivers reset one idle for
    #: twice as long; notify.py)
    message_idle: float = 60.0


@dataclass
class _PeerState:
    addrs: list[str] = field(default_factory=list)
    conns: set[int] = field(default_factory=set)
    connected_since: float | None = None
    last_seen: float | None = None
    sources: set[str] = field(default_factory=set)
    changed: trio.Event = field(default_factory=trio.Event)
    #: we were connected once and are not now (discovery may redial it beyond peer_target)
    lost: bool = False
    #: the connection is being closed by ``release``: its end is not a loss
    released: bool = False


class _Notifee(INotifee):
    def __init__(self, mesh: Mesh):
        self._mesh = mesh

    async def opened_stream(self, network, stream) -> None:
        return None

    async def closed_stream(self, network, stream) -> None:
        return None

    async def connected(self, network, conn: INetConn) -> None:
        self._mesh._on_conn(conn, up=True)

    async def disconnected(self, network, conn: INetConn) -> None:
        self._mesh._on_conn(conn, up=False)

    async def listen(self, network, multiaddr) -> None:
        return None

    async def listen_close(self, network, multiaddr) -> None:
        return None


class Mesh:
    def __init__(
        self,
        settings: Settings,
        keypair: KeyPair,
        trust: TrustPolicy,
        events: MeshEvents,
        *,
        tuning: MeshTuning | None = None,
    ):
        self.settings = settings
        self.trust = trust
        self.events = events
        self.tuning = tuning or MeshTuning()
        self._keypair = keypair
        self.peer_id = peer_id_of(keypair)
        self.own_peer_id = self.peer_id
        if trust.own_peer_id != self.peer_id:
            raise MeshError("TrustPolicy was built for another peer ID than this key's")
        self.topic = announcement_topic(settings.mesh)
        #: counters by event: handler_error, gossip_malformed, dead_peer_dropped, ...
        self.stats: collections.Counter[str] = _Stats(trust.count)
        #: told of every message counted at the mesh layer: (protocol, kind, direction, n)
        self.on_message: Callable[[str, str, str, int], None] | None = None
        #: ``gossip_check(origin, data)``: whether a gossip message may be delivered and relayed
        #: (the sync layer's admission); runs in gossipsub's validator, before forwarding
        self.gossip_check: Callable[[str, bytes], bool] | None = None
        #: (origin, data) of validated gossip -> the peer that relayed its first copy, until the
        #: message is delivered (pubsub hands the application the message without its forwarder)
        self._relayers: collections.OrderedDict[tuple[str, bytes], str] = \
            collections.OrderedDict()
        self.listen_addrs: list[str] = []
        self._peers: dict[str, _PeerState] = {}
        self._handlers: dict[str, StreamHandler] = {}
        self._dial_locks: dict[str, trio.Lock] = {}
        self._host = None
        self._pubsub = None
        self._router = None
        self._services: trio.Nursery | None = None
        self._running = False
        self._stopping = False
        self._event_send, self._event_receive = trio.open_memory_channel[tuple[str, str]](
            math.inf
        )
        self.liveness: Liveness | None = None
        self.messages = MessageStreams(self._open, self._on_live_connection, self.stats,
                                       self._heard, self.tuning.message_idle)
        self.mdns: Mdns | None = None
        self.rendezvous: Rendezvous | None = None
        self.bootstrap: Bootstrap | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        if self._host is not None:
            raise MeshError("this mesh is already serving")
        listen = parse_listen(self.settings.listen)
        bootstrap = Bootstrap(self, self.settings.bootstrap, self.tuning.backoff)
        probe_ports(listen)
        host = build_host(self._keypair, self.trust, self._note_rejected)
        # Guards first: pubsub and the DHT register their handlers in their constructors.
        guard_swarm_handler(host, self.trust, self.stats)
        install_handler_guards(host, self.trust, self.stats)
        network = host.get_network()
        network.register_notifee(_Notifee(self))
        self._stopping = False
        _guard_dials(network, lambda: self._stopping)
        pubsub, router = build_pubsub(host, self.topic, self.trust, self.stats,
                                      self.tuning.gossip, check=self._check_gossip)
        guard_pubsub(pubsub, self.stats)
        count_gossipsub(pubsub, router, self.count_message)
        dht = KadDHT(host, DHTMode.SERVER, enable_random_walk=False) if self.settings.dht else None
        self._host = host
        for protocol, handler in self._handlers.items():
            self._register(protocol, handler)
        # The libp2p stack runs under a shielded scope: if our caller's cancellation reached its
        # tasks directly, yamux would tear down without a GO_AWAY and leave the sockets open
        # (measured: the remote kept the dead connection until its pings failed). Instead we
        # close connections and listeners first, then cancel the stack.
        stack_scope = trio.CancelScope(shield=True)
        try:
            async with trio.open_nursery() as nursery:
                try:
                    addrs = await nursery.start(self._run_stack, stack_scope, network, listen,
                                                pubsub, router, dht, bootstrap)
                    self._running = True
                    log.info("mesh %s listening on %s", self.settings.mesh, " ".join(addrs))
                    task_status.started(addrs)
                    await trio.sleep_forever()
                finally:
                    self._running = False
                    self._stopping = True
                    with cleanup_scope():
                        await _close_quietly(network)
                    stack_scope.cancel()
        finally:
            self._running = False
            self._pubsub = None
            self._router = None
            self._host = None
            self._services = None
            for state in self._peers.values():
                state.lost = state.lost or bool(state.conns)
                state.conns.clear()
                state.connected_since = None

    async def _run_stack(self, stack_scope, network, listen, pubsub, router, dht, bootstrap, *,
                         task_status=trio.TASK_STATUS_IGNORED) -> None:
        with stack_scope:
            async with background_trio_service(network):
                await self._start_listening(network, listen)
                async with background_trio_service(pubsub), background_trio_service(router):
                    await pubsub.wait_until_ready()
                    subscription = await pubsub.subscribe(self.topic)
                    self._pubsub = pubsub
                    self._router = router
                    async with trio.open_nursery() as nursery:
                        await self._start_services(nursery, self._host, dht, bootstrap,
                                                   subscription)
                        task_status.started(list(self.listen_addrs))
                        await trio.sleep_forever()

    async def _start_listening(self, network, listen) -> None:
        try:
            ok = await network.listen(*listen)
        except Exception as exc:
            raise MeshError(f"cannot listen on {[str(a) for a in listen]}: {exc}") from exc
        if not ok:
            raise MeshError(f"cannot listen on any of {[str(a) for a in listen]}")
        self.listen_addrs = check_listening(self._host, listen)

    async def _libp2p_call(self, what: str, timeout: float, fn, *args, discard=None):
        """One bounded py-libp2p call; its failures become MeshError, translated here once."""
        try:
            return await self._bounded(timeout, fn, *args, discard=discard)
        except trio.TooSlowError as exc:
            raise MeshError(f"cannot {what}: timed out after {timeout} s") from exc
        except Exception as exc:
            raise MeshError(f"cannot {what}: {type(exc).__name__}: {exc}") from exc

    async def _bounded(self, timeout: float, fn, *args, discard=None):
        """``fn(*args)`` within ``timeout`` even if py-libp2p shields it (see bounded.py)."""
        if self._services is None:  # starting or stopping: no nursery to leave a task in
            with trio.fail_after(timeout):
                return await fn(*args)
        return await call_abandonable(self._services, timeout, fn, *args, discard=discard)

    async def _start_services(self, nursery, host, dht, bootstrap, subscription) -> None:
        self._services = nursery
        nursery.start_soon(self._dispatch_events)
        nursery.start_soon(self._read_announcements, subscription)
        await nursery.start(self.messages.serve)
        self.liveness = Liveness(host, self.connected_peers, self.disconnect, self._alive,
                                 self.stats, self.tuning.liveness,
                                 count=lambda kind, way: self.count_message("ping", kind, way))
        # Our responder replaces py-libp2p's: it also tells the pinger the peer was heard.
        host.set_stream_handler(TProtocol(PING_PROTOCOL), self.liveness.handle_ping)
        await nursery.start(self.liveness.serve)
        if dht is not None:
            await nursery.start(_run_service, dht)
            self.rendezvous = Rendezvous(self, dht, self.settings.mesh,
                                         idle_interval=self.tuning.dht_idle_interval,
                                         stable_interval=self.tuning.dht_stable_interval)
            await nursery.start(self.rendezvous.serve)
        self.bootstrap = bootstrap
        await nursery.start(bootstrap.serve)
        if self.settings.mdns:
            self.mdns = Mdns(self, self.settings.mesh, self.listen_addrs)
            await nursery.start(self.mdns.serve)

    def _require_running(self) -> None:
        if not self._running or self._host is None:
            raise MeshError("the mesh is not running")

    def _check_gossip(self, origin: str, data: bytes, forwarder: str) -> bool:
        if self.gossip_check is not None and not self.gossip_check(origin, data):
            return False
        self._relayers[(origin, data)] = forwarder
        while len(self._relayers) > RELAYERS_KEPT:
            self._relayers.popitem(last=False)
        return True

    def count_message(self, protocol: str, kind: str, direction: str, n: int = 1) -> None:
        if self.on_message is not None:
            self.on_message(protocol, kind, direction, n)

    # -- streams -----------------------------------------------------------------------------

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        self._handlers[protocol] = handler
        if self._host is not None:
            self._register(protocol, handler)

    def _register(self, protocol: str, handler: StreamHandler) -> None:
        timeout = self.tuning.stream_timeout

        async def adapter(raw: INetStream) -> None:
            peer = remote_peer(raw)
            self._heard(peer)
            stream = Stream(raw, peer, protocol, timeout)
            await handler(peer, stream)
            await stream.close()

        # host.set_stream_handler is the guarded one (install_handler_guards)
        self._host.set_stream_handler(TProtocol(protocol), adapter)

    async def open_stream(self, peer_id: str, protocol: str) -> Stream:
        return await self._open(peer_id, [protocol])

    async def _open(self, peer_id: str, protocols: Sequence[str]) -> Stream:
        """A new stream of the first of ``protocols`` the peer accepts (one negotiation);
        the returned Stream's ``protocol`` is the one it accepted."""
        self._require_running()
        if not self.trust.is_trusted(peer_id):
            raise MeshError(f"peer {peer_id} is not trusted")
        pid = _parse_id(peer_id)
        allow = _ALLOW_DIAL.set(True)  # may dial a known but unconnected peer
        try:
            raw = await self._libp2p_call(
                f"open {' or '.join(protocols)} to {peer_id}",
                self.tuning.dial_timeout + NEGOTIATE_TIMEOUT, self._host.new_stream, pid,
                [TProtocol(p) for p in protocols], discard=reset_quietly)
        finally:
            _ALLOW_DIAL.reset(allow)
        self._heard(peer_id)
        protocol = str(raw.get_protocol() or protocols[0])
        return Stream(raw, peer_id, protocol, self.tuning.stream_timeout)

    # -- one-way messages ----------------------------------------------------------------------

    def set_message_handler(self, protocol: str, handler: MessageHandler, *, max_bytes: int,
                            one_shot: str | None = None) -> None:
        """Serve ``protocol`` as a message stream: ``handler(peer_id, data)`` for each message,
        in order, ``max_bytes`` at most each (notify.py). ``one_shot``: the protocol's
        predecessor (one message per stream), served too, and offered to peers that refuse
        ``protocol`` when this agent sends. Declares ``protocol`` for ``send_message``."""
        self.messages.declare(protocol, one_shot)
        self.set_stream_handler(protocol, self.messages.stream_handler(handler, max_bytes))
        if one_shot is not None:
            self.set_stream_handler(one_shot, self.messages.one_shot_handler(handler, max_bytes))

    async def send_message(self, peer_id: str, protocol: str, data: bytes) -> None:
        """Send ``data`` one way to ``peer_id`` as one message on this agent's long-lived
        stream of ``protocol`` to it (opened on first use); MeshError when it cannot be
        written (notify.py: one retry on a new stream is already done)."""
        await self.messages.send(peer_id, protocol, data)

    def _on_live_connection(self, peer_id: str, stream: Stream) -> bool:
        pubsub = self._pubsub
        # the same test as for pubsub's streams (pubsub.host is our host)
        return pubsub is not None and on_live_connection(pubsub, _parse_id(peer_id), stream.raw)

    # -- gossip ------------------------------------------------------------------------------

    async def publish(self, data: bytes) -> None:
        self._require_running()
        if len(data) > MAX_ANNOUNCEMENT_BYTES:
            raise MeshError(f"announcement of {len(data)} bytes exceeds the "
                            f"{MAX_ANNOUNCEMENT_BYTES}-byte cap")
        try:
            with trio.fail_after(self.tuning.publish_timeout):
                await self._pubsub.publish(self.topic, data)
        except trio.TooSlowError as exc:
            raise MeshError("publish timed out") from exc
        except Exception as exc:
            raise MeshError(f"publish failed: {type(exc).__name__}: {exc}") from exc

    async def _read_announcements(self, subscription) -> None:
        while True:
            msg = await subscription.get()
            try:
                origin = ID(msg.from_id).to_base58()
            except Exception:
                self.stats["gossip_malformed"] += 1
                continue
            if origin == self.peer_id:
                continue  # pubsub hands our own publishes to our own subscription
            self._touch(origin)
            self.stats["announcements_received"] += 1
            try:
                data = bytes(msg.data)
                via = self._relayers.pop((origin, data), None)
                await self.events.on_announcement(origin, data, via)
            except Exception:
                self.stats["events_error"] += 1
                log.exception("on_announcement failed for %s", origin)

    # -- peers -------------------------------------------------------------------------------

    def peers(self) -> list[PeerInfo]:
        out = []
        for peer_id, state in sorted(self._peers.items()):
            out.append(PeerInfo(
                peer_id=peer_id,
                addrs=list(state.addrs),
                connected=bool(state.conns),
                trusted=self.trust.is_trusted(peer_id),
                connected_since=state.connected_since,
                last_seen=state.last_seen,
            ))
        return out

    def connected_peers(self) -> list[str]:
        return sorted(p for p, s in self._peers.items() if s.conns)

    def gossip_mesh_peers(self) -> set[str]:
        """Peers in our gossipsub mesh for the topic: each gets what we publish or forward."""
        router = self._router
        if router is None:
            return set()
        return {p.to_base58() for p in router.mesh.get(self.topic, ())}

    def gossip_pruned_peers(self) -> set[str]:
        """Connected peers our gossipsub pruned from (or refused into) our topic's mesh and that
        have not been in it since: they wanted our gossip and get none from us (a hub's
        leaves, typically). Disjoint from ``gossip_mesh_peers``; see QuietGossipSub."""
        router = self._router
        if router is None:
            return set()
        return {p for p in (pid.to_base58() for pid in router.pruned_peers(self.topic))
                if self.is_connected(p)}

    def gossip_peers(self) -> list[str]:
        """Peers known to be subscribed to our announcement topic (gossip can reach them)."""
        if self._pubsub is None:
            return []
        return sorted(p.to_base58() for p in self._pubsub.peer_topics.get(self.topic, ()))

    def is_connected(self, peer_id: str) -> bool:
        state = self._peers.get(peer_id)
        return bool(state and state.conns)

    def is_trusted(self, peer_id: str) -> bool:
        return self.trust.is_trusted(peer_id)

    def dial_budget(self) -> int:
        """How many newly discovered peers discovery may dial now (see ``peer_target``)."""
        return max(0, self.tuning.peer_target - len(self.connected_peers()))

    def was_lost(self, peer_id: str) -> bool:
        """Connected once, not now: redialled whatever the budget, so a healed split rejoins."""
        state = self._peers.get(peer_id)
        return bool(state and state.lost)

    async def wait_peer_change(self, peer_id: str) -> None:
        await self._state(peer_id).changed.wait()

    async def connect(self, multiaddr_text: str) -> str:
        peer_id, transport = split_p2p(multiaddr_text)
        if not transport:
            raise MeshError(f"{multiaddr_text!r} has no transport address to dial")
        await self.dial(peer_id, [transport])
        return peer_id

    async def dial(self, peer_id: str, addrs: Sequence[str]) -> None:
        self._require_running()
        if peer_id == self.peer_id:
            raise MeshError("refusing to dial this agent itself")
        pid = _parse_id(peer_id)
        try:
            mas = [multiaddr.Multiaddr(strip_p2p(a)) for a in addrs]
        except Exception as exc:
            raise MeshError(f"bad address for {peer_id}: {exc}") from exc
        self.note_discovered(peer_id, [str(a) for a in mas], "dial")
        lock = self._dial_locks.setdefault(peer_id, trio.Lock())
        async with lock:
            if self.is_connected(peer_id):
                return
            network = self._host.get_network()
            # A failed dial puts the peer in the swarm's 60 s negative cache, which would turn our
            # backoff schedule into one attempt a minute: lift it before each of our attempts.
            network.unblock_peer(pid)
            allow = _ALLOW_DIAL.set(True)
            try:
                await self._libp2p_call(f"connect to {peer_id}", self.tuning.dial_timeout,
                                        self._host.connect, LibPeerInfo(pid, mas))
            finally:
                _ALLOW_DIAL.reset(allow)

    async def disconnect(self, peer_id: str) -> None:
        if self._host is None:
            return
        pid = _parse_id(peer_id)
        try:
            await self._bounded(5, self._host.disconnect, pid)
        except trio.TooSlowError:
            log.warning("disconnecting %s is stuck on a dead path; left to finish", peer_id)
        except Exception as exc:
            log.warning("disconnecting %s failed: %s", peer_id, exc)
        self._forget_dead_connections(peer_id, pid)

    async def release(self, peer_id: str) -> None:
        """Close a connection opened for one message (a report to a publisher we are not
        otherwise connected to). Unlike a lost connection, discovery does not redial it."""
        state = self._peers.get(peer_id)
        if state is None or not state.conns:
            return
        state.released = True
        await self.disconnect(peer_id)

    def _forget_dead_connections(self, peer_id: str, pid: ID) -> None:
        """Make our view match the swarm's after a disconnect.

        ``Swarm.close_peer`` drops its connections from its table even when closing one over a
        dead path never fires the notifee's ``disconnected`` (measured in the netns link-cut
        tests: the peer stayed "connected" here forever, its pinger re-dropping it every few
        seconds). Whatever the swarm no longer holds is gone for us too.
        """
        state = self._peers.get(peer_id)
        if state is None or not state.conns or self._host is None:
            return
        live = {id(c) for c in self._host.get_network().get_connections(pid)}
        for conn_id in list(state.conns - live):
            self._conn_closed(peer_id, conn_id)

    # -- bookkeeping -------------------------------------------------------------------------

    def _state(self, peer_id: str) -> _PeerState:
        state = self._peers.get(peer_id)
        if state is None:
            state = self._peers[peer_id] = _PeerState()
        return state

    def _touch(self, peer_id: str) -> None:
        if peer_id and peer_id != self.peer_id:
            self._state(peer_id).last_seen = time.time()

    def _heard(self, peer_id: str) -> None:
        """Traffic on our direct link to ``peer_id``: it is alive, its ping can wait."""
        self._touch(peer_id)
        if self.liveness is not None and peer_id:
            self.liveness.heard(peer_id)

    def _alive(self, peer_id: str, rtt: float) -> None:
        self._touch(peer_id)

    def note_discovered(self, peer_id: str, addrs: Sequence[str], source: str) -> None:
        if peer_id == self.peer_id:
            return
        state = self._state(peer_id)
        for addr in addrs:
            if addr and addr not in state.addrs:
                state.addrs.append(addr)
        state.sources.add(source)

    def _note_rejected(self, peer_id: str) -> None:
        self._touch(peer_id)
        self._state(peer_id).sources.add("rejected")

    def _on_conn(self, conn: INetConn, *, up: bool) -> None:
        try:
            peer_id = conn.muxed_conn.peer_id.to_base58()
        except Exception:
            return
        if not up:
            self._conn_closed(peer_id, id(conn))
            return
        state = self._state(peer_id)
        was_connected = bool(state.conns)
        state.conns.add(id(conn))
        try:
            for addr in conn.get_transport_addresses():
                text = strip_p2p(str(addr))
                if text not in state.addrs:
                    state.addrs.append(text)
        except Exception:
            pass
        self._conn_changed(peer_id, state, was_connected)

    def _conn_closed(self, peer_id: str, conn_id: int) -> None:
        state = self._state(peer_id)
        was_connected = bool(state.conns)
        state.conns.discard(conn_id)
        self._conn_changed(peer_id, state, was_connected)

    def _conn_changed(self, peer_id: str, state: _PeerState, was_connected: bool) -> None:
        now_connected = bool(state.conns)
        self._repair_pubsub(peer_id)
        self.messages.connection_changed(peer_id, now_connected)
        if was_connected == now_connected:
            return
        state.connected_since = time.time() if now_connected else None
        state.last_seen = time.time()
        state.lost = not now_connected and not state.released
        state.released = False
        state.changed.set()
        state.changed = trio.Event()
        if state.lost and self.rendezvous is not None:
            self.rendezvous.nudge()
        if now_connected and self.liveness is not None:
            self.liveness.watch(peer_id)
        self._event_send.send_nowait(("connected" if now_connected else "disconnected",
                                      peer_id))

    def _repair_pubsub(self, peer_id: str) -> None:
        """Keep pubsub's stream to a peer on a live connection.

        py-libp2p keeps one pubsub stream per peer and skips a new connection's hello while it
        holds one; when the old connection dies while a newer one exists, it keeps the dead stream
        (it only drops peers with no connection left) until a write to it fails. On every
        connection change, a stream that is no longer on a live connection is handed to pubsub's
        dead-peer path at once, which opens a new one (with hello) on the live connection; the
        peer keeps its subscriptions and mesh place through that swap (bus.py
        ``_keep_peers_across_stream_swaps``), so nothing waits for a failed write or a heartbeat.
        """
        pubsub, host = self._pubsub, self._host
        if pubsub is None or host is None:
            return
        pid = ID.from_base58(peer_id)
        stream = pubsub.peers.get(pid)
        if stream is None or on_live_connection(pubsub, pid, stream):
            return
        self.stats["pubsub_stream_repaired"] += 1
        log.debug("pubsub stream to %s was on a closed connection; reopening", peer_id)
        try:
            pubsub._handle_dead_peer(pid)
        except Exception:
            log.warning("repairing the pubsub stream to %s failed", peer_id, exc_info=True)

    async def _dispatch_events(self) -> None:
        async for kind, peer_id in self._event_receive:
            try:
                if kind == "connected":
                    await self.events.on_peer_connected(peer_id)
                else:
                    await self.events.on_peer_disconnected(peer_id)
            except Exception:
                self.stats["events_error"] += 1
                log.exception("on_peer_%s failed for %s", kind, peer_id)


async def _run_service(service, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    async with background_trio_service(service):
        task_status.started()
        await trio.sleep_forever()


#: set while the mesh itself dials (discovery, connect, open_stream); see _guard_dials
_ALLOW_DIAL: contextvars.ContextVar[bool] = contextvars.ContextVar("mesh_allow_dial",
                                                                   default=False)


def _guard_dials(network, stopping: Callable[[], bool]) -> None:
    """Only the mesh decides whom to connect to.

    py-libp2p dials whenever a stream is wanted and no connection exists: pubsub's retries,
    identify, the DHT's lookups and our own pinger would silently undo an explicit disconnect or
    a dead-peer drop (measured: a peer disconnected on purpose was reconnected by a background
    ``new_stream``). Those background dials are refused; ``Mesh.dial`` and ``Mesh.open_stream``
    mark their own with ``_ALLOW_DIAL``. While the swarm shuts down every dial is refused: one cut
    short by the final cancel left a half-registered connection whose socket stayed open, and
    the remote kept it as a live zombie.
    """
    dial_peer = network.dial_peer

    async def guarded_dial_peer(peer_id):
        if stopping():
            raise SwarmException("the mesh is shutting down")
        if not _ALLOW_DIAL.get():
            raise SwarmException(f"not connected to {peer_id} (background dials are refused)")
        return await dial_peer(peer_id)

    network.dial_peer = guarded_dial_peer


async def _close_quietly(network) -> None:
    try:
        await network.close()
    except Exception:  # shutting down: a failed close must not mask why we stopped
        log.warning("closing the libp2p network failed", exc_info=True)


def _parse_id(peer_id: str) -> ID:
    try:
        return ID.from_base58(peer_id)
    except Exception as exc:
        raise MeshError(f"not a peer ID: {peer_id!r}") from exc
