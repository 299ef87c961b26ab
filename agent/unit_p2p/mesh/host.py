"""Build the libp2p host with every unsafe py-libp2p 0.8.1 default replaced.

- Security: Noise only, wrapped in the trust check (``new_host()`` would also offer TLS, secio
  and *plaintext*; a default node accepted plaintext and secio dialers).
- Muxer: yamux only (mplex resets a stream whose reader pauses > 5 s while telling the writer the
  write succeeded).
- Transport: TCP only, built explicitly, so nothing is derived from the listen addresses.
- ``max_connections_per_peer=1``: otherwise every dial pays the 250 ms happy-eyeballs delay
  (measured: 5-9 ms per dial with it).
- ``RetryConfig(max_retries=0)``: one dial = one attempt; discovery owns backoff.
- Muxer-level liveness pings (``PingingYamux``): liveness.py probes with yamux PING frames,
  and py-libp2p's own RTT ping every 30 s per connection is off (the probes measure the RTT).
- Receive credit as go-yamux gives it: a WINDOW_UPDATE once half the window has been read, not
  one after every read (``credit_read_bytes``).
- No mDNS/bootstrap/UPnP inside the host: discovery.py runs its own, off the trio loop.
- Listening is verified: the TCP listener sets SO_REUSEPORT, so a second daemon on a taken port
  "starts" with no addresses and is unreachable. ``probe_ports`` binds each fixed port first
  WITHOUT SO_REUSEPORT (a port held by anyone, including another libp2p listener, then fails
  with EADDRINUSE), and ``check_listening`` fails loudly if the host ended up with no address
  for a requested listen address.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable, Sequence

import multiaddr
import trio
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.basic_host import BasicHost
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStore
from libp2p.rcmgr.manager import new_resource_manager
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import (
    FLAG_ACK,
    FLAG_SYN,
    HEADER_SIZE,
    TYPE_PING,
    YAMUX_HEADER_FORMAT,
    Yamux,
    YamuxStream,
)
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.transport.manager import TransportManager
from libp2p.transport.tcp.tcp import TCP
from libp2p.transport.upgrader import TransportUpgrader

from ..errors import MeshError
from ..settings import check_listen_addr
from .trust import TrustedNoise, TrustPolicy

#: seconds for one outbound dial (TCP connect + Noise + yamux)
DIAL_TIMEOUT = 5.0
#: seconds for a stream's protocol negotiation
NEGOTIATE_TIMEOUT = 10


def parse_listen(addrs: Sequence[str]) -> list[multiaddr.Multiaddr]:
    """``settings.listen`` as multiaddrs, or MeshError naming the bad one. Settings has checked
    them already; a Mesh built from hand-made Settings gets the same check here."""
    if not addrs:
        raise MeshError("no listen address configured")
    out = []
    for text in addrs:
        try:
            out.append(multiaddr.Multiaddr(check_listen_addr(text)))
        except ValueError as exc:
            raise MeshError(f"listen address: {exc}") from exc
    return out


def host_port(ma: multiaddr.Multiaddr) -> tuple[str, int, int]:
    """(ip, port, address family) of an /ip4|ip6/.../tcp/... multiaddr."""
    for proto, family in (("ip4", socket.AF_INET), ("ip6", socket.AF_INET6)):
        try:
            ip = ma.value_for_protocol(proto)
        except Exception:
            ip = None
        if ip:
            return str(ip), int(ma.value_for_protocol("tcp")), family
    raise MeshError(f"not an IP/TCP address: {ma}")


def probe_ports(addrs: Sequence[multiaddr.Multiaddr]) -> None:
    """Fail loudly if a fixed listen port is already in use (see module doc)."""
    for ma in addrs:
        ip, port, family = host_port(ma)
        if port == 0:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # SO_REUSEADDR only skips TIME_WAIT leftovers of our own previous run; unlike
            # SO_REUSEPORT it does not let two live listeners share the port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((ip, port))
                sock.listen(1)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise MeshError(
                        f"cannot listen on {ma}: port {port} is already in use"
                    ) from exc
                raise MeshError(f"cannot listen on {ma}: {exc.strerror or exc}") from exc


def check_listening(host: BasicHost, wanted: Sequence[multiaddr.Multiaddr]) -> list[str]:
    """Return the full listen multiaddrs (with /p2p/) or raise MeshError."""
    actual = host.get_transport_addrs()
    if not actual:
        raise MeshError(f"libp2p is not listening on any of {[str(a) for a in wanted]}")
    for ma in wanted:
        ip, port, _ = host_port(ma)
        if not any(host_port(a)[0] == ip and (port == 0 or host_port(a)[1] == port)
                   for a in actual):
            raise MeshError(f"libp2p did not start listening on {ma}")
    peer = host.get_id().to_base58()
    return [f"{a}/p2p/{peer}" for a in actual]


class PingingYamux(Yamux):
    """Yamux whose PING frames are the liveness probe.

    A yamux PING is one 12-byte header each way, answered by the peer's muxer itself (every
    yamux speaks it, go's and js's too). The ``/ipfs/ping/1.0.0`` stream it replaces cost four
    Noise frames a ping (py-libp2p's yamux answers each 32-byte ping and pong with a window
    update) and a dozen task steps on each side: at idle, pings were almost half an agent's CPU.
    py-libp2p's own RTT loop (a PING every 30 s, never acting on a missing answer) is off:
    ``ping`` records the same smoothed RTT the muxer's flow control reads.
    """

    #: called when the peer pinged us (we are sending the answer): the link works
    on_pinged: Callable[[], None] | None = None

    async def _measure_rtt_loop(self) -> None:
        return None

    async def ping(self) -> float:
        """Send a PING and wait for its answer (the caller bounds the wait); the RTT, seconds.

        The muxer's reader sets ``_ping_event`` on any PING answer; one probe per connection
        is in flight at a time (one pinger per peer, one connection per peer)."""
        if self.event_shutting_down.is_set():
            raise ConnectionError("yamux connection is closing")
        self._ping_id = (self._ping_id + 1) & 0xFFFFFFFF
        self._ping_event = answered = trio.Event()
        await self._write_frame(
            struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_PING, FLAG_SYN, 0, self._ping_id))
        self._ping_sent_time = sent = trio.current_time()
        await answered.wait()
        return trio.current_time() - sent

    async def _write_frame(self, data: bytes) -> None:
        # The reader answers a peer's PING with a PING|ACK through here; it has no other hook.
        if (self.on_pinged is not None and len(data) == HEADER_SIZE and data[1] == TYPE_PING
                and struct.unpack_from("!H", data, 2)[0] & FLAG_ACK):
            self.on_pinged()
        await super()._write_frame(data)


async def credit_read_bytes(stream: YamuxStream, *, bytes_read: int = 0) -> None:
    """Give the peer back the receive window our reads freed, go-yamux's way: once the freed
    bytes reach half the window, in one WINDOW_UPDATE.

    py-libp2p 0.8.1 sends a WINDOW_UPDATE after every read that returned data (its "release on
    read", on by default, and a "partial slack" rule that fires on any read below the
    threshold): one more Noise frame written, and one read and handled by the peer, for every
    gossip message, report and stream body received. Those were an eighth of a busy agent's CPU
    (py-spy, 50 agents publishing). go-yamux and js-yamux credit at half the window, so a
    sender never waits on us for less than half a window in flight; its window is not grown
    (256 KiB is ample for our streams: a document of MiBs streams at loopback speed with it).
    """
    async with stream.window_lock:
        stream._pending_recv_release += bytes_read
        freed = stream._pending_recv_release
        if freed < stream.target_recv_window // 2:
            return
        stream._pending_recv_release = 0
        stream.recv_window += freed
    await stream.send_window_update(freed, skip_lock=True)


_library_credit = YamuxStream._auto_tune_and_send_window_update


async def _credit(stream: YamuxStream, *, bytes_read: int = 0) -> None:
    # Streams of our muxer only: a plain Yamux (a library user's host in this process, the test
    # suite's in-process peers built without build_host) keeps the library's rule.
    if isinstance(stream.conn, PingingYamux):
        await credit_read_bytes(stream, bytes_read=bytes_read)
    else:
        await _library_credit(stream, bytes_read=bytes_read)


def _install_credit_rule() -> None:
    """YamuxStream objects are built inside Yamux (no factory to override): the rule is chosen
    per stream by its connection's class (``_credit``)."""
    YamuxStream._auto_tune_and_send_window_update = _credit


def _build_yamux_as(upgrader: TransportUpgrader, cls: type[Yamux]) -> None:
    """Make the upgrader build ``cls`` for yamux connections.

    py-libp2p 0.8.1's ``MuxerMultistream.new_conn`` builds a plain ``Yamux`` whenever yamux is
    negotiated, whatever class was registered for it; this is the same method building ours
    (yamux is the only muxer we offer, so the negotiated protocol is yamux).
    """
    muxers = upgrader.muxer_multistream

    async def new_conn(conn, peer_id: ID):
        protocol, _ = await muxers._selector.select(
            conn, conn.is_initiator, muxers.negotiate_timeout)
        muxed = cls(conn, peer_id, is_initiator=conn.is_initiator)
        return muxers._annotate_connection(muxed, conn, protocol)

    muxers.new_conn = new_conn


def connection_config() -> ConnectionConfig:
    return ConnectionConfig(
        max_connections_per_peer=1,
        # Our discovery decides whom to dial (auto-connector disabled below) and the pruner must
        # never trim a fleet (hundreds of agents at most).
        max_connections=1024,
        min_connections=0,
        low_watermark=0,
        high_watermark=1024,
        dial_timeout=DIAL_TIMEOUT,
        inbound_upgrade_timeout=DIAL_TIMEOUT,
        outbound_upgrade_timeout=DIAL_TIMEOUT,
        inbound_stream_protocol_negotiation_timeout=NEGOTIATE_TIMEOUT,
        outbound_stream_protocol_negotiation_timeout=NEGOTIATE_TIMEOUT,
    )


def build_host(
    keypair: KeyPair,
    trust: TrustPolicy,
    on_rejected: Callable[[str], None] | None = None,
) -> BasicHost:
    """A host that is not yet running; ``Mesh.serve`` runs its network and listens."""
    # Built by hand, not via new_host/new_swarm: those would offer TLS, secio, plaintext and
    # mplex, and living in ``libp2p/__init__`` they would load every transport (lean_libp2p.py).
    noise = TrustedNoise(
        keypair, create_new_x25519_key_pair().private_key, trust, on_rejected
    )
    upgrader = TransportUpgrader(
        secure_transports_by_protocol={TProtocol(NOISE_PROTOCOL_ID): noise},
        muxer_transports_by_protocol={TProtocol(YAMUX_PROTOCOL_ID): PingingYamux},
    )
    _build_yamux_as(upgrader, PingingYamux)
    _install_credit_rule()
    peer_id = ID.from_pubkey(keypair.public_key)
    peerstore = PeerStore()
    peerstore.add_key_pair(peer_id, keypair)
    swarm = Swarm(
        peer_id,
        peerstore,
        upgrader,
        transports=[TCP()],
        retry_config=RetryConfig(max_retries=0),
        connection_config=connection_config(),
        transport_manager=TransportManager(),
    )
    # Same default limits new_swarm installs (per-peer stream and connection caps).
    swarm.set_resource_manager(new_resource_manager())
    # The swarm's auto-connector dials peerstore entries on its own schedule (and waits 60 s after
    # a disconnect); discovery.py owns dialing, so the connector's one entry point is a no-op.
    swarm.auto_connector.maybe_connect = _no_auto_connect
    return BasicHost(network=swarm, negotiate_timeout=NEGOTIATE_TIMEOUT)


async def _no_auto_connect() -> None:
    return None
