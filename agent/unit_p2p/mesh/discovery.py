"""How agents find each other: mDNS on the LAN, a bootstrap list, and a DHT rendezvous.

All three only *find* peers; ``Dialer.dial`` (the mesh) connects, and the trust check refuses
whoever is not allowed. None of py-libp2p's own discovery services is used:

- its mDNS joins multicast on ALL interfaces, blocks the trio loop ~1.5 s in
  ``register_service`` (~0.25 s at stop), calls back on zeroconf's thread and never dials;
- its bootstrap gives up on a peer after 3 failures (redial every 10 s) and the swarm's
  auto-connector waits 60 s after a disconnect (a restarted peer came back after 63 s);
- its DHT ``find_providers`` answers from the local provider store as soon as it holds any
  record, so a node that provides the key itself never looks further.
"""

from __future__ import annotations

import hashlib
import logging
import random
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import multiaddr
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from ..errors import MeshError
from ..shutdown import cleanup_scope

log = logging.getLogger(__name__)


class Dialer(Protocol):
    """What discovery needs from the mesh."""

    own_peer_id: str

    def is_connected(self, peer_id: str) -> bool: ...

    def is_trusted(self, peer_id: str) -> bool: ...

    def connected_peers(self) -> list[str]: ...

    def dial_budget(self) -> int: ...

    def was_lost(self, peer_id: str) -> bool: ...

    async def wait_peer_change(self, peer_id: str) -> None: ...

    def note_discovered(self, peer_id: str, addrs: Sequence[str], source: str) -> None: ...

    async def dial(self, peer_id: str, addrs: Sequence[str]) -> None: ...


def split_p2p(addr: str) -> tuple[str, str]:
    """``/ip4/.../tcp/N/p2p/ID`` -> (peer id, transport part). MeshError if it has no /p2p/."""
    try:
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
    except Exception as exc:
        raise MeshError(f"{addr!r} is not a multiaddr ending in /p2p/<peer id>: {exc}") from exc
    transport = [str(a) for a in info.addrs]
    return info.peer_id.to_base58(), transport[0] if transport else ""


def strip_p2p(addr: str) -> str:
    return addr.split("/p2p/", 1)[0]


# -- bootstrap -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.25
    factor: float = 2.0
    cap: float = 10.0
    jitter: float = 0.2

    def delays(self):
        delay = self.initial
        while True:
            yield delay * random.uniform(1 - self.jitter, 1 + self.jitter)
            delay = min(delay * self.factor, self.cap)


class Bootstrap:
    """Keep a connection to every bootstrap peer, forever, with capped exponential backoff.

    A peer that disconnects is redialled at once, then 0.25 s, 0.5 s, ... up to 10 s apart, so
    a restarted peer is back within ~10 s of listening again (py-libp2p's own: 4.6-63 s).
    """

    def __init__(self, dialer: Dialer, addrs: Sequence[str], backoff: Backoff = Backoff()):
        self._dialer = dialer
        self._backoff = backoff
        self.targets: dict[str, list[str]] = {}
        for addr in addrs:
            peer, transport = split_p2p(addr)
            if peer == dialer.own_peer_id:
                continue  # the fleet-wide list includes this agent itself
            self.targets.setdefault(peer, []).append(transport)

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for peer, addrs in self.targets.items():
                self._dialer.note_discovered(peer, addrs, "bootstrap")
                nursery.start_soon(self._keep, peer, addrs)
            task_status.started()

    async def _keep(self, peer: str, addrs: list[str]) -> None:
        if not self._dialer.is_trusted(peer):
            log.warning("bootstrap peer %s is not in trusted_peers; not dialing it", peer)
            return
        delays = self._backoff.delays()
        while True:
            if self._dialer.is_connected(peer):
                await self._dialer.wait_peer_change(peer)
                delays = self._backoff.delays()
                continue
            try:
                await self._dialer.dial(peer, addrs)
                delays = self._backoff.delays()
            except MeshError as exc:
                delay = next(delays)
                log.debug("bootstrap %s: %s; retry in %.2f s", peer, exc, delay)
                await trio.sleep(delay)


# -- mDNS ------------------------------------------------------------------------------------

SERVICE_TYPE = "_p2p._udp.local."
#: TXT key carrying a hash of the mesh name, so agents skip other meshes' and other apps' peers
MESH_TXT_KEY = b"unitp2p"


def mesh_tag(mesh: str) -> bytes:
    return hashlib.sha256(f"unit-p2p/mesh/{mesh}".encode()).hexdigest()[:16].encode()


def _local_ipv4s() -> list[str]:
    import ifaddr  # zeroconf's own dependency

    ips = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                ips.append(ip.ip)
    return ips


class Mdns:
    """libp2p-spec mDNS (``_p2p._udp.local.``, TXT ``dnsaddr=<multiaddr>/p2p/<id>``).

    Zeroconf is bound only to the IPv4 addresses we listen on (all interfaces only when we
    listen on 0.0.0.0). Every blocking zeroconf call runs in a worker thread; discoveries arrive
    on zeroconf's thread and are handed to trio through a memory channel.
    """

    def __init__(self, dialer: Dialer, mesh: str, listen_addrs: Sequence[str]):
        self._dialer = dialer
        self._tag = mesh_tag(mesh)
        self._addrs = [strip_p2p(a) for a in listen_addrs]
        self.interfaces, self.advertised = self._plan(self._addrs)
        # Spec: the service instance name is a random label, not the peer ID.
        self.instance = f"{secrets.token_hex(16)}.{SERVICE_TYPE}"
        self.registered = trio.Event()
        self.stats = {"found": 0, "foreign": 0}

    @staticmethod
    def _plan(addrs: Sequence[str]) -> tuple[list[str] | None, list[str]]:
        interfaces: list[str] = []
        advertised: list[str] = []
        wildcard = False
        for addr in addrs:
            ma = multiaddr.Multiaddr(addr)
            try:
                ip = ma.value_for_protocol("ip4")
            except Exception:
                ip = None
            if not ip:
                log.info("mDNS: skipping non-IPv4 listen address %s", addr)
                continue
            port = ma.value_for_protocol("tcp")
            if ip == "0.0.0.0":
                wildcard = True
                advertised += [f"/ip4/{a}/tcp/{port}" for a in _local_ipv4s()]
            else:
                interfaces.append(ip)
                advertised.append(f"/ip4/{ip}/tcp/{port}")
        if not advertised:
            raise MeshError("mDNS needs at least one IPv4 listen address")
        return (None if wildcard else sorted(set(interfaces))), advertised

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from zeroconf import InterfaceChoice, IPVersion, ServiceBrowser, ServiceInfo, Zeroconf

        token = trio.lowlevel.current_trio_token()
        send, receive = trio.open_memory_channel[tuple[str, str]](256)
        own = self.instance
        stats = self.stats

        class Listener:
            # Called on zeroconf's thread: only hand the name over, never block it on trio.
            def _hand_over(self, type_: str, name: str) -> None:
                if name == own:
                    return
                try:
                    trio.from_thread.run_sync(send.send_nowait, (type_, name), trio_token=token)
                except trio.WouldBlock:
                    stats["dropped"] = stats.get("dropped", 0) + 1
                except trio.RunFinishedError:
                    pass

            def add_service(self, zc, type_, name):
                self._hand_over(type_, name)

            def update_service(self, zc, type_, name):
                self._hand_over(type_, name)

            def remove_service(self, zc, type_, name):
                pass  # the connection (and liveness pings) say whether a peer is gone

        peer_id = self._dialer.own_peer_id
        properties = {MESH_TXT_KEY: self._tag}
        for i, addr in enumerate(self.advertised):
            key = b"dnsaddr" if i == 0 else f"dnsaddr{i + 1}".encode()
            properties[key] = f"{addr}/p2p/{peer_id}".encode()
        first = multiaddr.Multiaddr(self.advertised[0])
        info = ServiceInfo(
            SERVICE_TYPE,
            self.instance,
            port=int(first.value_for_protocol("tcp")),
            properties=properties,
            server=f"{self.instance.split('.')[0]}.local.",
            addresses=[socket.inet_aton(first.value_for_protocol("ip4"))],
        )
        interfaces = InterfaceChoice.All if self.interfaces is None else self.interfaces

        def start() -> tuple[Zeroconf, ServiceBrowser]:
            zc = Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
            return zc, ServiceBrowser(zc, SERVICE_TYPE, listener=Listener())

        zc, browser = await trio.to_thread.run_sync(start)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._register, zc, info)
                task_status.started()
                async for type_, name in receive:
                    nursery.start_soon(self._resolve, zc, type_, name)
        finally:
            with cleanup_scope():
                await trio.to_thread.run_sync(self._stop, zc, browser, info)

    async def _register(self, zc, info) -> None:
        # register_service probes and announces for ~1.5 s: a worker thread pays for it.
        await trio.to_thread.run_sync(zc.register_service, info)
        self.registered.set()

    @staticmethod
    def _stop(zc, browser, info) -> None:
        browser.cancel()
        try:
            zc.unregister_service(info)
        finally:
            zc.close()

    async def _resolve(self, zc, type_: str, name: str) -> None:
        info = await trio.to_thread.run_sync(zc.get_service_info, type_, name, 3000)
        if info is None:
            return
        props = info.properties or {}
        if props.get(MESH_TXT_KEY) != self._tag:
            self.stats["foreign"] += 1
            return
        found: dict[str, list[str]] = {}
        for key, value in props.items():
            if not key.startswith(b"dnsaddr") or not value:
                continue
            try:
                peer, transport = split_p2p(value.decode())
            except (MeshError, UnicodeDecodeError):
                continue
            found.setdefault(peer, []).append(transport)
        for peer, addrs in found.items():
            if peer == self._dialer.own_peer_id:
                continue
            self.stats["found"] += 1
            self._dialer.note_discovered(peer, addrs, "mdns")
            if (self._dialer.is_trusted(peer) and not self._dialer.is_connected(peer)
                    and (self._dialer.dial_budget() > 0 or self._dialer.was_lost(peer))):
                try:
                    await self._dialer.dial(peer, addrs)
                except MeshError as exc:
                    log.info("mDNS peer %s not reachable: %s", peer, exc)


# -- DHT rendezvous --------------------------------------------------------------------------


def rendezvous_key(mesh: str) -> bytes:
    """A sha2-256 multihash of the mesh name: the DHT key every agent of the mesh provides."""
    return bytes([0x12, 0x20]) + hashlib.sha256(f"unit-p2p/rendezvous/{mesh}".encode()).digest()


#: seconds between re-provides of the rendezvous key while the routing table is stable
PROVIDE_REFRESH = 600.0


class Rendezvous:
    """Kademlia rendezvous: provide the mesh key, look for other providers, dial them.

    The DHT runs in SERVER mode (client mode offers no protocol handler). py-libp2p does not feed
    the routing table from connections, so every round adds the connected trusted peers first.
    Lookups ask routing-table peers directly (GET_PROVIDERS) instead of
    ``KadDHT.find_providers``, which stops at the local store once we provide the key ourselves.

    Cost is kept proportional to change, not to fleet size: a round asks only the ``ask``
    routing-table peers closest to the key (the ones a provider stores its record with; each
    answer lists every provider with its signed peer record, which the DHT verifies), and rounds
    come quickly only while they find something. A round that finds nothing new doubles the
    pause up to ``idle_interval``, and on up to ``stable_interval`` while the set of connected
    peers is the same as at the round before and no peer we lost is still missing (then a
    round has nothing to repair: at idle it was a quarter of an agent's CPU, its own lookups
    and the ones it answers). A lost connection (``nudge``) or a newly found peer makes the
    next rounds quick again; a changed peer set caps the pause at ``idle_interval`` again.
    Measured at N=30 on loopback (2 cores): asking 20 peers every 5 s
    and providing on every growth kept both cores saturated for ~30 s while the fleet formed
    and ~0.8 of a core busy once it was idle.
    """

    def __init__(self, dialer: Dialer, dht, mesh: str, idle_interval: float = 60.0,
                 stable_interval: float = 300.0, query_timeout: float = 5.0, ask: int = 3):
        self._dialer = dialer
        self._dht = dht
        self.key = rendezvous_key(mesh)
        self.idle_interval = idle_interval
        self.stable_interval = max(stable_interval, idle_interval)
        self.query_timeout = query_timeout
        self.ask = ask
        self.rounds = 0
        self.found: set[str] = set()
        self._provided_at = -float("inf")
        self._provided_at_size = 0
        self._wake = trio.Event()

    def nudge(self) -> None:
        """Look again soon (a connection was lost: the peer may be back at a new address)."""
        self._wake.set()

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        # Quick first rounds so a fresh fleet meshes in seconds, then back off while quiet.
        delay = 0.5
        peers_before: set[str] | None = None
        while True:
            news = False
            try:
                news = await self.round()
            except MeshError as exc:
                log.info("DHT rendezvous round failed: %s", exc)
            peers = set(self._dialer.connected_peers())
            delay = 0.5 if news else min(delay * 2, self._cap(peers, peers_before))
            peers_before = peers
            with trio.move_on_after(delay):
                await self._wake.wait()
            if self._wake.is_set():
                self._wake = trio.Event()
                delay = 0.5

    def _cap(self, peers: set[str], peers_before: set[str] | None) -> float:
        """Longest pause before the next round: ``stable_interval`` only when nothing changed."""
        if not peers or peers != peers_before:
            return self.idle_interval
        if any(self._dialer.was_lost(peer) for peer in self.found):
            return self.idle_interval
        return self.stable_interval

    async def round(self) -> bool:
        """One lookup; True if it found a provider not seen before or connected to one."""
        self.rounds += 1
        rt = self._dht.routing_table
        for peer in self._dialer.connected_peers():
            await rt.add_peer(ID.from_base58(peer), skip_server_mode_check=True)
        if rt.size() == 0:
            return False
        # Provider records live for 48 h and lookups ask the peers closest to the key: provide
        # again when the routing table doubled (closer peers may have joined) or every
        # PROVIDE_REFRESH, not on every growth: while a fresh fleet meshed, providing each round
        # (a DHT walk plus up to 20 ADD_PROVIDER streams) was most of the CPU it burned.
        now = trio.current_time()
        if (now - self._provided_at >= PROVIDE_REFRESH
                or rt.size() >= 2 * self._provided_at_size):
            with trio.move_on_after(self.query_timeout):
                await self._dht.provider_store.provide(self.key)
            self._provided_at = now
            self._provided_at_size = rt.size()
        providers: dict[str, list[str]] = {}
        async with trio.open_nursery() as nursery:
            for peer_id in rt.find_local_closest_peers(self.key, self.ask):
                nursery.start_soon(self._ask, peer_id, providers)
        news = False
        fresh, lost = [], []
        for peer, addrs in providers.items():
            if peer == self._dialer.own_peer_id:
                continue
            if peer not in self.found:
                self.found.add(peer)
                news = True
            self._dialer.note_discovered(peer, addrs, "dht")
            if self._dialer.is_trusted(peer) and not self._dialer.is_connected(peer) and addrs:
                (lost if self._dialer.was_lost(peer) else fresh).append(peer)
        # Degree, not fleet size, bounds each agent's connections: new peers only while below
        # the target (random ones, so the mesh is a random graph), peers we lost always (a
        # healed partition must rejoin even when both sides are at the target).
        picked = lost + random.sample(fresh, min(len(fresh), self._dialer.dial_budget()))
        # Records of departed agents live for 48 h in py-libp2p: dial in parallel so one
        # unreachable provider (5 s dial timeout) does not stall the round. Only a dial that
        # worked is news: a departed peer must not keep the rounds quick.
        connected: list[str] = []
        async with trio.open_nursery() as nursery:
            for peer in picked:
                nursery.start_soon(self._dial, peer, providers[peer], connected)
        return news or bool(connected)

    async def _dial(self, peer: str, addrs: list[str], connected: list[str]) -> None:
        try:
            await self._dialer.dial(peer, addrs)
        except MeshError as exc:
            log.debug("DHT provider %s not reachable: %s", peer, exc)
        else:
            connected.append(peer)

    async def _ask(self, peer_id, providers: dict[str, list[str]]) -> None:
        with trio.move_on_after(self.query_timeout):
            found, _closer = await self._dht.provider_store._get_providers_from_peer_with_closers(
                peer_id, self.key
            )
            for info in found:
                addrs = [strip_p2p(str(a)) for a in info.addrs]
                providers.setdefault(info.peer_id.to_base58(), []).extend(addrs)
