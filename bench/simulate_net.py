"""The simulator's in-memory network: a fleet of real reconcilers in one trio loop.

Everything above the ``MeshLike``/``UnitLike`` interfaces is the agent's own code (the
reconciler, the state store on a tmpfs, revisions, the wire codec, Ed25519 signatures, the trust
policy and metrics); everything below it is modelled here:

- links: a bounded-degree random graph like the one discovery builds (each host dials until it
  has ``peer_target`` connections; inbound connections are accepted up to ``max_degree``), or a
  star (every host connected to host 0 only, as agents that bootstrap from one address and run
  no DHT end up), each link with its own one-way latency drawn once from a distribution, plus
  per-message jitter;
- gossip: gossipsub's delivery along each host's mesh (degree D/Dlo/Dhi from the agent's own
  ``GossipParams``), forwarded once per message id to every mesh peer and every peer the host
  pruned from its mesh (the agent's QuietGossipSub) but the forwarder and the origin,
  duplicates dropped by a seen-set, handed to the host's reader with the peer that relayed it
  (the forwarder); every heartbeat IHAVE lazy gossip to non-mesh peers and IWANT for what a peer
  missed (so a lost mesh transmission is recovered the way gossipsub recovers it);
- the gossip mesh kept as py-libp2p 0.8.1 keeps it (``mesh_heartbeat``, ``handle_graft``,
  ``handle_prune``, ``on_peer_subscribed``): each host's mesh is its own (the peers it forwards
  to); a host whose mesh is below Dlo grafts connected peers it is not backing off from up to
  D, at its heartbeat and as soon as a new peer's subscription arrives; a GRAFT is accepted
  unless the sender is in the receiver's backoff (then PRUNE back); a mesh above Dhi is pruned
  to D at random at the heartbeat; a pruned host backs off the pruner for ``prune_back_off``
  seconds. GRAFT and PRUNE ride the peers' pubsub stream: counted, never lost (TCP would
  resend them), one one-way latency late;
- streams: request/response pipes; opening one costs a round trip (a dial two more when the peer
  is not connected), each payload one one-way latency;
- loss: every transmission on a link (gossip, IHAVE/IWANT, each stream payload) is lost with
  probability ``loss``; a lost stream payload resets the stream (py-libp2p rides TCP, so loss
  there shows up as a reset connection or a timeout, never as a silently missing frame);
- time: trio's MockClock with autojump, so simulated seconds cost only the CPU the code needs.
  The model gives hosts infinite CPU: simulated times are network time, never CPU time.

Every transmission is counted here, at the network layer, by kind (``gossip:announce``,
``heads:announce``, ``pull:pull``, ``pull:served``, ``ihave``, ...: the stream protocol's short
name and the wire message's type), with its payload bytes, per sending and receiving host.
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import itertools
import logging
import math
import random
import re
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel

from unit_p2p.errors import MeshError, WireError
from unit_p2p.mesh import PeerInfo

log = logging.getLogger("bench.simulate")

#: stream protocol id -> short kind name (the last path element before the version)
_PROTO_RE = re.compile(r"/([a-z-]+)/[0-9.]+$")
_TYPE_RE = re.compile(rb'"type":"([a-z_]+)"')
#: bytes of one message id in IHAVE/IWANT (py-libp2p: origin peer id bytes + 8-byte seqno)
MSG_ID_BYTES = 46
#: bytes of a GRAFT/PRUNE control frame (topic + framing)
CONTROL_BYTES = 64
#: the host every other host connects to in the star topology
HUB = 0


def kind_of(prefix: str, data: bytes) -> str:
    m = _TYPE_RE.search(data, 0, 200)
    return f"{prefix}:{m.group(1).decode() if m else 'data'}"


def proto_name(protocol: str) -> str:
    m = _PROTO_RE.search(protocol)
    return m.group(1) if m else protocol


# --- latency ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    """One-way link latency in seconds, drawn once per link; ``jitter`` is a per-message
    fraction on top. Spec: ``const:MS``, ``uniform:LO_MS:HI_MS`` or ``lognormal:MEDIAN_MS:SIGMA``
    (optionally ``,jitter=F``)."""

    kind: str
    a: float
    b: float = 0.0
    jitter: float = 0.1

    @classmethod
    def parse(cls, spec: str) -> Latency:
        main, _, extra = spec.partition(",")
        parts = main.split(":")
        jitter = 0.1
        if extra:
            key, _, value = extra.partition("=")
            if key != "jitter":
                raise ValueError(f"unknown latency option {key!r}")
            jitter = float(value)
        try:
            if parts[0] == "const" and len(parts) == 2:
                return cls("const", float(parts[1]) / 1000, 0.0, jitter)
            if parts[0] == "uniform" and len(parts) == 3:
                return cls("uniform", float(parts[1]) / 1000, float(parts[2]) / 1000, jitter)
            if parts[0] == "lognormal" and len(parts) == 3:
                return cls("lognormal", float(parts[1]) / 1000, float(parts[2]), jitter)
        except ValueError:
            pass
        raise ValueError(
            f"latency spec {spec!r}: const:MS, uniform:LO:HI or lognormal:MEDIAN:SIGMA")

    def draw(self, rng: random.Random) -> float:
        if self.kind == "const":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        return self.a * math.exp(rng.gauss(0.0, self.b))

    def __str__(self) -> str:
        ms = {"const": f"{self.a * 1000:g}", "uniform": f"{self.a * 1000:g}:{self.b * 1000:g}",
              "lognormal": f"{self.a * 1000:g}:{self.b:g}"}[self.kind]
        return f"{self.kind}:{ms},jitter={self.jitter:g}"


# --- the event queue ----------------------------------------------------------------------------


class Scheduler:
    """Timed callbacks run by one task: a message in flight costs a heap entry, not a task.

    Times are rounded up to ``tick`` (1 ms), so all that falls due in one tick runs in one pass
    of trio's loop instead of one pass per message; order within a tick is the order sent.
    """

    def __init__(self, tick: float = 0.001) -> None:
        self.tick = tick
        self._heap: list[tuple[float, int, Callable, tuple]] = []
        self._seq = itertools.count()
        #: the time of the batch being run (callbacks read it instead of asking trio)
        self.batch_time: float | None = None
        self._wakeup = trio.Event()

    def at(self, when: float, fn: Callable, *args: Any) -> None:
        when = math.ceil(when / self.tick) * self.tick
        if not self._heap or when < self._heap[0][0]:
            self._wakeup.set()
        heapq.heappush(self._heap, (when, next(self._seq), fn, args))

    def now(self) -> float:
        return self.batch_time if self.batch_time is not None else trio.current_time()

    async def run(self, check: Callable[[], None] | None = None) -> None:
        """Run callbacks as they fall due; ``check()`` every 10,000 of them (it may raise)."""
        heap = self._heap
        done = 0
        while True:
            if not heap:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            now = trio.current_time()
            if heap[0][0] > now:
                with trio.move_on_at(heap[0][0]):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            self.batch_time = now
            try:
                while heap and heap[0][0] <= now:
                    _, _, fn, args = heapq.heappop(heap)
                    fn(*args)
                    done += 1
                    if check is not None and done % 10000 == 0:
                        check()
            finally:
                self.batch_time = None
            await trio.lowlevel.checkpoint()


# --- counters -----------------------------------------------------------------------------------


class Traffic:
    """Messages and bytes by kind, and per host sent/received (indexed by host number)."""

    def __init__(self) -> None:
        self.msgs: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.lost: Counter[str] = Counter()
        self.sent: list[int] = []
        self.recv: list[int] = []
        self.streams: Counter[str] = Counter()
        self.dials = 0
        self.gossip_duplicates = 0

    def grow(self, n: int) -> None:
        self.sent.extend([0] * (n - len(self.sent)))
        self.recv.extend([0] * (n - len(self.recv)))

    def snapshot(self) -> dict:
        return {"msgs": Counter(self.msgs), "bytes": Counter(self.bytes),
                "lost": Counter(self.lost), "sent": list(self.sent), "recv": list(self.recv),
                "streams": Counter(self.streams), "dials": self.dials,
                "gossip_duplicates": self.gossip_duplicates}


# --- streams ------------------------------------------------------------------------------------


class _Pipe:
    """One direction of a stream: payloads and EOF arrive by the scheduler, in order."""

    __slots__ = ("buf", "eof", "event", "reset")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self.event = trio.Event()

    def feed(self, data: bytes) -> None:
        self.buf += data
        self.event.set()

    def feed_eof(self) -> None:
        self.eof = True
        self.event.set()

    def feed_reset(self) -> None:
        self.reset = True
        self.event.set()


class SimStream:
    """The mesh Stream's interface (send_all, close_write, receive_all, close, reset)."""

    def __init__(self, net: SimNet, me: int, peer: int, kind: str, inbox: _Pipe, outbox: _Pipe):
        self.net, self.me, self.peer_idx, self.kind = net, me, peer, kind
        self.peer_id = net.ids[peer]
        self._in, self._out = inbox, outbox
        self._closed = False
        net.open_streams[me].add(self)

    async def send_all(self, data: bytes) -> None:
        if self._closed or self._in.reset:
            raise MeshError("stream closed")
        data = bytes(data)
        kind = kind_of(self.kind, data)
        when = self.net.transmit(self.me, self.peer_idx, kind, len(data), data)
        if when is None:
            self.net.sched.at(trio.current_time() + self.net.link_latency(self.me, self.peer_idx),
                              self._out.feed_reset)
            raise MeshError("stream reset (lost payload)")
        self.net.sched.at(when, self._out.feed, data)

    async def close_write(self) -> None:
        if not self._closed:
            self.net.sched.at(self.net.arrival(self.me, self.peer_idx), self._out.feed_eof)

    async def receive_all(self, max_bytes: int, timeout: float) -> bytes:
        with trio.fail_after(timeout):
            while True:
                pipe = self._in
                if pipe.reset:
                    raise MeshError("stream reset")
                if len(pipe.buf) > max_bytes:
                    raise WireError("too_large", f"over {max_bytes}")
                if pipe.eof:
                    return bytes(pipe.buf)
                await pipe.event.wait()
                pipe.event = trio.Event()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.net.open_streams[self.me].discard(self)

    async def reset(self) -> None:
        if not self._closed:
            self.net.sched.at(self.net.arrival(self.me, self.peer_idx), self._out.feed_reset)
        await self.close()


# --- Unit ---------------------------------------------------------------------------------------


class SimUnit:
    """A fast UnitLike: holds a config; every PUT of a config with a revision marker is recorded
    (the marker is the first route's URI, set by the simulator per publish)."""

    def __init__(self, net: SimNet, idx: int, config: dict):
        self.net, self.idx, self.config = net, idx, copy.deepcopy(config)

    async def get(self, path: str = "/config") -> Any:
        return copy.deepcopy(self.config)

    async def put(self, path: str, value: Any) -> Any:
        self.config = copy.deepcopy(value)
        self.net.on_unit_put(self.idx, marker_of(self.config))
        return {"success": "Reconfiguration done."}


def marker_of(config: Any) -> str | None:
    try:
        return config["routes"][0]["match"]["uri"]
    except (KeyError, IndexError, TypeError):
        return None


# --- one host's mesh ----------------------------------------------------------------------------


class SimMesh:
    """The MeshLike facade of one host over the simulated network."""

    def __init__(self, net: SimNet, idx: int):
        self.net, self.idx = net, idx
        self.peer_id = net.ids[idx]
        self.handlers: dict[str, Any] = {}
        self.message_handlers: dict[str, Any] = {}
        #: (peer, kind) of the message streams this host keeps open (mesh/notify.py)
        self._message_streams: set[tuple[int, str]] = set()
        self.events: Any = None

    def set_stream_handler(self, protocol: str, handler: Any) -> None:
        self.handlers[protocol] = handler

    def set_message_handler(self, protocol: str, handler: Any, *, max_bytes: int,
                            one_shot: str | None = None) -> None:
        self.message_handlers[protocol] = handler

    async def send_message(self, peer_id: str, protocol: str, data: bytes) -> None:
        """One message on the stream this host keeps to the peer: a payload, one one-way
        latency; the stream's opening (a round trip, a dial two more when not connected) is
        paid and counted once per connection, and a lost payload resets it."""
        net = self.net
        peer = net.index.get(peer_id)
        if peer is None or not net.reachable(self.idx, peer):
            raise MeshError(f"cannot reach {peer_id}")
        kind = proto_name(protocol)
        rtt = 2 * net.link_latency(self.idx, peer)
        if peer not in net.links[self.idx]:
            self._message_streams.discard((peer, kind))
            net.traffic.dials += 1
            await trio.sleep(2 * rtt)
            if not net.reachable(self.idx, peer):
                raise MeshError(f"dial to {peer_id} failed")
        host = net.hosts[peer]
        if host is None or protocol not in host.mesh.message_handlers:
            raise MeshError(f"{peer_id} does not speak {protocol}")
        if (peer, kind) not in self._message_streams:
            self._message_streams.add((peer, kind))
            net.traffic.streams[kind] += 1
            await trio.sleep(rtt)
        data = bytes(data)
        when = net.transmit(self.idx, peer, kind_of(kind, data), len(data), data)
        if when is None:
            self._message_streams.discard((peer, kind))
            raise MeshError("stream reset (lost payload)")
        net.sched.at(when, net.deliver_message, peer, protocol, self.idx, data)

    async def open_stream(self, peer_id: str, protocol: str) -> SimStream:
        net = self.net
        peer = net.index.get(peer_id)
        if peer is None or not net.reachable(self.idx, peer):
            raise MeshError(f"cannot reach {peer_id}")
        rtt = 2 * net.link_latency(self.idx, peer)
        if peer not in net.links[self.idx]:
            # a dial: TCP, Noise and yamux before the stream (the connection is not kept)
            net.traffic.dials += 1
            await trio.sleep(2 * rtt)
            if not net.reachable(self.idx, peer):
                raise MeshError(f"dial to {peer_id} failed")
        handler = net.hosts[peer].mesh.handlers.get(protocol) if net.hosts[peer] else None
        if handler is None:
            raise MeshError(f"{peer_id} does not speak {protocol}")
        kind = proto_name(protocol)
        net.traffic.streams[kind] += 1
        a_to_b, b_to_a = _Pipe(), _Pipe()
        mine = SimStream(net, self.idx, peer, kind, b_to_a, a_to_b)
        theirs = SimStream(net, peer, self.idx, kind, a_to_b, b_to_a)
        net.sched.at(trio.current_time() + rtt / 2, net.start_handler, peer, protocol, self.idx,
                     theirs)
        # multistream-select answers after a round trip
        await trio.sleep(rtt)
        return mine

    async def publish(self, data: bytes) -> None:
        self.net.gossip_publish(self.idx, bytes(data))

    def connected_peers(self) -> list[str]:
        ids = self.net.ids
        return sorted(ids[p] for p in self.net.links[self.idx])

    def gossip_mesh_peers(self) -> set[str]:
        ids = self.net.ids
        return {ids[p] for p in self.net.gmesh[self.idx]}

    def gossip_pruned_peers(self) -> set[str]:
        """Connected peers this host pruned from its gossip mesh (or whose GRAFT it refused) and
        that have not been in its mesh since: they wanted our gossip and get none from us."""
        ids, links = self.net.ids, self.net.links[self.idx]
        return {ids[p] for p in self.net.pruned[self.idx] if p in links}

    def gossip_peers(self) -> list[str]:
        return self.connected_peers()

    def is_connected(self, peer_id: str) -> bool:
        p = self.net.index.get(peer_id)
        return p is not None and p in self.net.links[self.idx]

    def peers(self) -> list[PeerInfo]:
        ids, links = self.net.ids, self.net.links[self.idx]
        return [PeerInfo(ids[p], [], p in links, True, None, None)
                for p in sorted(self.net.known[self.idx])]


# --- the network --------------------------------------------------------------------------------


@dataclass
class Topology:
    #: ``random`` (discovery's bounded-degree graph) or ``star`` (every host connects to ``HUB``)
    kind: str = "random"
    peer_target: int = 8
    max_degree: int = 16
    #: gossipsub mesh degree, low and high watermarks (the agent's GossipParams by default)
    d: int = 4
    d_lo: int = 3
    d_hi: int = 8
    d_lazy: int = 6
    heartbeat: float = 1.0
    #: heartbeats a message id stays in IHAVE gossip (gossipsub's gossip_window)
    gossip_window: int = 3
    #: seconds a pruned host waits before it grafts the pruner again (gossipsub's prune_back_off)
    prune_back_off: float = 10.0


@dataclass
class Host:
    idx: int
    mesh: SimMesh
    unit: SimUnit
    rec: Any
    scope: trio.CancelScope
    nursery: trio.Nursery | None = None
    inbox: Any = None


@dataclass
class GossipMsg:
    mid: int
    origin: int
    data: bytes
    kind: str
    hops: int = 0


@dataclass
class _HostGossip:
    seen: set = field(default_factory=set)
    #: (heartbeat number, message id) of recent messages, for IHAVE
    recent: deque = field(default_factory=deque)


class SimNet:
    def __init__(self, ids: list[str], *, latency: Latency, loss: float, topo: Topology,
                 rng: random.Random, cpu_per_msg: float = 0.0):
        self.ids = ids
        #: seconds of a host's (single) CPU each received message costs; 0: infinite CPU
        self.cpu_per_msg = cpu_per_msg
        self.busy = [0.0] * len(ids)
        self.index = {pid: i for i, pid in enumerate(ids)}
        self.latency, self.loss, self.topo, self.rng = latency, loss, topo, rng
        n = len(ids)
        self.sched = Scheduler()
        self.traffic = Traffic()
        self.traffic.grow(n)
        self.hosts: list[Host | None] = [None] * n
        self.links: list[set[int]] = [set() for _ in range(n)]
        self.known: list[set[int]] = [set() for _ in range(n)]
        #: each host's gossipsub mesh: the peers it forwards gossip to
        self.gmesh: list[set[int]] = [set() for _ in range(n)]
        #: per host, peer -> time until which it neither grafts that peer nor accepts its GRAFT
        self.backoff: list[dict[int, float]] = [{} for _ in range(n)]
        #: per host, the peers it pruned (or refused) and has not had in its mesh since
        self.pruned: list[set[int]] = [set() for _ in range(n)]
        self.gossip = [_HostGossip() for _ in range(n)]
        self.open_streams: list[set[SimStream]] = [set() for _ in range(n)]
        self._link_lat: dict[tuple[int, int], float] = {}
        self._last_arrival: dict[tuple[int, int], float] = {}
        self.cut: set[int] = set()  # hosts on the far side of a partition
        self.cut_links: set[tuple[int, int]] = set()
        self.messages: dict[int, GossipMsg] = {}
        self._mid = itertools.count(1)
        self.heartbeats = 0
        # what the simulator watches: revision marker per host applied, with the time
        self.applied: dict[str, dict[int, float]] = defaultdict(dict)
        self.on_apply: Callable[[int, str], None] | None = None
        # first hop count at which each host learned of the watched revision
        self.watch: bytes | None = None
        self.learn_hops: dict[int, int] = {}
        self.handler_errors: Counter[str] = Counter()

    # -- links -----------------------------------------------------------------------------------

    def live(self, i: int) -> bool:
        return self.hosts[i] is not None

    def reachable(self, a: int, b: int) -> bool:
        return a != b and self.live(a) and self.live(b) and ((a in self.cut) == (b in self.cut))

    def link_latency(self, a: int, b: int) -> float:
        key = (a, b) if a < b else (b, a)
        lat = self._link_lat.get(key)
        if lat is None:
            lat = self._link_lat[key] = self.latency.draw(self.rng)
        return lat

    def arrival(self, a: int, b: int, cost: float = 0.0) -> float:
        """When a payload sent now from a reaches b: the link's latency plus jitter, FIFO per
        link; with a CPU cost per message, also after b finished the messages before it."""
        lat = self.link_latency(a, b)
        when = self.sched.now() + lat * (1.0 + self.latency.jitter * self.rng.random())
        last = self._last_arrival.get((a, b), 0.0)
        if when < last:
            when = last
        self._last_arrival[(a, b)] = when
        if self.cpu_per_msg:
            when = max(when, self.busy[b]) + cost
            self.busy[b] = when
        return when

    def transmit(self, a: int, b: int, kind: str, nbytes: int, data: bytes | None = None,
                 lossless: bool = False) -> float | None:
        """Count one transmission; its arrival time, or None when it is lost."""
        t = self.traffic
        t.msgs[kind] += 1
        t.bytes[kind] += nbytes
        t.sent[a] += 1
        if not lossless and self.loss and self.rng.random() < self.loss:
            t.lost[kind] += 1
            return None
        t.recv[b] += 1
        if self.watch is not None and data is not None and b not in self.learn_hops \
                and self.watch in data:
            self.learn_hops[b] = self.learn_hops.get(a, 0) + 1
        return self.arrival(a, b, self.cpu_per_msg)

    def connect(self, a: int, b: int) -> None:
        if b in self.links[a] or not self.reachable(a, b):
            return
        self.links[a].add(b)
        self.links[b].add(a)
        self.known[a].add(b)
        self.known[b].add(a)
        for x, y in ((a, b), (b, a)):
            # each side's subscription reaches the other one latency later
            self.sched.at(self.sched.now() + self.link_latency(x, y), self._subscribed, y, x)
            host = self.hosts[x]
            if host is not None and host.nursery is not None:
                host.nursery.start_soon(host.rec.on_peer_connected, self.ids[y])

    def disconnect(self, a: int, b: int) -> None:
        if b not in self.links[a]:
            return
        self.links[a].discard(b)
        self.links[b].discard(a)
        for x, y in ((a, b), (b, a)):
            self.gmesh[x].discard(y)
            self.pruned[x].discard(y)
            for s in list(self.open_streams[x]):
                if s.peer_idx == y:
                    s._in.feed_reset()
            host = self.hosts[x]
            if host is not None and host.nursery is not None:
                host.nursery.start_soon(host.rec.on_peer_disconnected, self.ids[y])

    def reset_router(self, a: int) -> None:
        """Host ``a`` stopped: its gossipsub state goes with it (a restart starts empty)."""
        self.gmesh[a].clear()
        self.backoff[a].clear()
        self.pruned[a].clear()

    def dial_to_target(self, a: int, candidates: list[int]) -> None:
        """Discovery: dial random reachable hosts until ``peer_target`` connections; in the star,
        the hub is all a host knows (and a hub that starts is dialled by every host)."""
        topo = self.topo
        if topo.kind == "star":
            for b in (range(len(self.hosts)) if a == HUB else (HUB,)):
                self.connect(a, b)
            return
        self.rng.shuffle(candidates)
        for b in candidates:
            if len(self.links[a]) >= topo.peer_target:
                break
            if b != a and self.reachable(a, b) and len(self.links[b]) < topo.max_degree:
                self.connect(a, b)

    # -- gossip ----------------------------------------------------------------------------------

    def backed_off(self, a: int, p: int) -> bool:
        until = self.backoff[a].get(p)
        if until is None:
            return False
        if until > self.sched.now():
            return True
        del self.backoff[a][p]
        return False

    def back_off(self, a: int, p: int) -> None:
        until = self.sched.now() + self.topo.prune_back_off
        self.backoff[a][p] = max(until, self.backoff[a].get(p, until))

    def maintain_mesh(self, a: int) -> None:
        """gossipsub's mesh_heartbeat for host ``a``: below Dlo, graft connected peers not backed
        off from up to D; above Dhi, prune at random down to D (the pruned back off from us)."""
        topo, mesh = self.topo, self.gmesh[a]
        size = len(mesh)
        if size < topo.d_lo:
            options = [p for p in self.links[a] if p not in mesh and not self.backed_off(a, p)]
            if len(options) > topo.d - size:
                options = self.rng.sample(options, topo.d - size)
            for p in options:
                self._graft(a, p)
        elif size > topo.d_hi:
            for p in self.rng.sample(sorted(mesh), size - topo.d):
                mesh.discard(p)
                self.pruned[a].add(p)
                self._control(a, p, "prune", self._receive_prune)

    def _subscribed(self, peer: int, me: int) -> None:
        """``peer``'s subscription reached ``me``: gossipsub's on_peer_subscribed grafts it at
        once while the mesh is below Dlo (instead of at the next heartbeat)."""
        if self.hosts[me] is None or peer not in self.links[me] or peer in self.gmesh[me]:
            return
        if len(self.gmesh[me]) < self.topo.d_lo and not self.backed_off(me, peer):
            self._graft(me, peer)

    def _graft(self, a: int, p: int) -> None:
        self.gmesh[a].add(p)
        self.pruned[a].discard(p)
        self._control(a, p, "graft", self._receive_graft)

    def _control(self, a: int, b: int, kind: str, on_arrival: Callable) -> None:
        when = self.transmit(a, b, kind, CONTROL_BYTES, lossless=True)
        self.sched.at(when, on_arrival, a, b)

    def _receive_graft(self, frm: int, me: int) -> None:
        if self.hosts[me] is None or frm not in self.links[me]:
            return
        if self.backed_off(me, frm):
            # handle_graft: a GRAFT from a peer we back off from extends the backoff, PRUNE back
            self.back_off(me, frm)
            self.gmesh[me].discard(frm)
            self.pruned[me].add(frm)
            self._control(me, frm, "prune", self._receive_prune)
            return
        self.gmesh[me].add(frm)
        self.pruned[me].discard(frm)

    def _receive_prune(self, frm: int, me: int) -> None:
        if self.hosts[me] is None or frm not in self.links[me]:
            return
        self.gmesh[me].discard(frm)
        self.back_off(me, frm)

    def gossip_publish(self, origin: int, data: bytes) -> None:
        msg = GossipMsg(next(self._mid), origin, data, kind_of("gossip", data))
        self.messages[msg.mid] = msg
        g = self.gossip[origin]
        g.seen.add(msg.mid)
        g.recent.append((self.heartbeats, msg.mid))
        targets = set(self.gossip_targets(origin))
        if not self.gmesh[origin]:
            # the agent's QuietGossipSub: its own message with an empty mesh (a pruned leaf) goes
            # to every connected peer (flood publishing), not to nobody
            targets.update(self.links[origin])
        for p in sorted(targets):
            self._send_gossip(origin, p, msg, 0)

    def _send_gossip(self, a: int, b: int, msg: GossipMsg, hops: int) -> None:
        when = self.transmit(a, b, msg.kind, len(msg.data))
        if when is not None:
            self.sched.at(when, self._receive_gossip, a, b, msg, hops + 1)

    def _receive_gossip(self, frm: int, me: int, msg: GossipMsg, hops: int) -> None:
        host = self.hosts[me]
        if host is None or frm not in self.links[me]:
            return
        g = self.gossip[me]
        if msg.mid in g.seen:
            self.traffic.gossip_duplicates += 1
            return
        g.seen.add(msg.mid)
        g.recent.append((self.heartbeats, msg.mid))
        if self.watch is not None and me not in self.learn_hops and self.watch in msg.data:
            self.learn_hops[me] = hops
        host.inbox.send_nowait((self.ids[msg.origin], msg.data, self.ids[frm]))
        for p in self.gossip_targets(me):
            if p != frm and p != msg.origin:
                self._send_gossip(me, p, msg, hops)

    def gossip_targets(self, a: int) -> list[int]:
        """Where host ``a``'s gossipsub sends a message: its mesh and the connected peers it
        pruned from that mesh (the agent's QuietGossipSub)."""
        return sorted(self.gmesh[a] | (self.pruned[a] & self.links[a]))

    def heartbeat(self) -> None:
        """Every host's gossipsub heartbeat at once (phases do not matter at this resolution):
        keep the mesh within [Dlo, Dhi], then IHAVE the recent message ids to up to D_lazy
        non-mesh peers."""
        self.heartbeats += 1
        topo = self.topo
        horizon = self.heartbeats - topo.gossip_window
        for a, host in enumerate(self.hosts):
            if host is None:
                continue
            self.maintain_mesh(a)
            recent = self.gossip[a].recent
            while recent and recent[0][0] < horizon:
                recent.popleft()
            if not recent:
                continue
            ids = [mid for _, mid in recent]
            others = [p for p in self.links[a] if p not in self.gmesh[a]]
            count = max(topo.d_lazy, len(others) // 4)
            if len(others) > count:
                others = self.rng.sample(others, count)
            for p in others:
                when = self.transmit(a, p, "ihave", MSG_ID_BYTES * len(ids))
                if when is not None:
                    self.sched.at(when, self._receive_ihave, a, p, ids)
        self.sched.at(trio.current_time() + topo.heartbeat, self.heartbeat)

    def _receive_ihave(self, frm: int, me: int, ids: list[int]) -> None:
        if self.hosts[me] is None or frm not in self.links[me]:
            return
        seen = self.gossip[me].seen
        want = [mid for mid in ids if mid not in seen]
        if not want:
            return
        when = self.transmit(me, frm, "iwant", MSG_ID_BYTES * len(want))
        if when is not None:
            self.sched.at(when, self._receive_iwant, me, frm, want)

    def _receive_iwant(self, frm: int, me: int, ids: list[int]) -> None:
        if self.hosts[me] is None or frm not in self.links[me]:
            return
        for mid in ids:
            msg = self.messages.get(mid)
            if msg is not None:
                self._send_gossip(me, frm, msg, self.learn_hops.get(me, 0))

    # -- streams and Unit ------------------------------------------------------------------------

    def start_handler(self, peer: int, protocol: str, frm: int, stream: SimStream) -> None:
        host = self.hosts[peer]
        if host is None or host.nursery is None or not self.reachable(peer, frm):
            stream._out.feed_reset()
            return
        handler = host.mesh.handlers[protocol]
        host.nursery.start_soon(self._guarded, handler, self.ids[frm], stream)

    def deliver_message(self, peer: int, protocol: str, frm: int, data: bytes) -> None:
        host = self.hosts[peer]
        if host is None or host.nursery is None or not self.reachable(peer, frm):
            return
        host.nursery.start_soon(host.mesh.message_handlers[protocol], self.ids[frm], data)

    async def _guarded(self, handler: Any, peer_id: str, stream: SimStream) -> None:
        # like the mesh's guard: a handler's exception resets only its stream
        try:
            await handler(peer_id, stream)
        except (MeshError, WireError, trio.TooSlowError) as exc:
            self.handler_errors[type(exc).__name__] += 1
            await stream.reset()

    def on_unit_put(self, idx: int, marker: str | None) -> None:
        if marker is None:
            return
        per = self.applied[marker]
        if idx not in per:
            per[idx] = trio.current_time()
            if self.on_apply is not None:
                self.on_apply(idx, marker)


@contextmanager
def inline_threads():
    """Run ``trio.to_thread.run_sync`` work inline: a thread would let the mock clock jump
    while it runs (trio sees every task blocked), and the state store is on a tmpfs anyway."""
    real = trio.to_thread.run_sync

    async def run_sync(fn, *args, **kwargs):
        return fn(*args)

    trio.to_thread.run_sync = run_sync
    try:
        yield
    finally:
        trio.to_thread.run_sync = real


def derive_seed(seed: int, i: int) -> bytes:
    return hashlib.sha256(f"unit-p2p-sim/{seed}/{i}".encode()).digest()


def state_root() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() else Path("/tmp")
