"""Who may talk to this agent, decided in exactly one place.

``TrustPolicy.is_trusted`` is the only trust decision in the agent. The connection layer asks it
right after the Noise handshake (``TrustedNoise``), the stream guard asks it again for every
inbound stream, the gossip validator asks it about each message's verified origin, and the sync
layer asks it before it believes anything a peer says.

py-libp2p 0.8.1 has no peer-ID allowlist (``ConnectionConfig.allow_list`` filters IPs only), so
the check is a thin subclass of the Noise transport: after ``secure_inbound``/``secure_outbound``
the remote peer ID is authenticated, and an untrusted one is closed before the muxer is
negotiated. The swarm never registers that connection, so no notifee, handler or pubsub state
ever sees it (measured, docs/libp2p.md: refused peers were never registered, the allowed one
connected in 7-12 ms).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable

from libp2p.abc import IRawConnection, ISecureConn
from libp2p.crypto.keys import KeyPair, PrivateKey
from libp2p.peer.id import ID
from libp2p.security.exceptions import HandshakeFailure
from libp2p.security.noise.transport import Transport as NoiseTransport

from ..errors import SettingsError
from ..settings import TRUST_MODES, check_peer_id

log = logging.getLogger(__name__)

class TrustPolicy:
    """The allowlist (or "any") and the counters of what it refused."""

    def __init__(self, mode: str, trusted: Iterable[str], own_peer_id: str,
                 on_refused: Callable[[str, int], None] | None = None):
        """``on_refused(reason, n)`` is told of every refusal counted here (the agent's
        /metrics counter of refusals)."""
        if mode not in TRUST_MODES:
            raise SettingsError(f"must be one of {', '.join(TRUST_MODES)}", key="trust")
        trusted_ids: set[str] = set()
        for entry in trusted:
            try:
                trusted_ids.add(check_peer_id(entry))
            except ValueError as exc:
                raise SettingsError(str(exc), key="trusted_peers") from exc
        self.mode = mode
        self.own_peer_id = check_peer_id(own_peer_id)
        self._trusted = frozenset(trusted_ids)
        #: refusals by reason: untrusted_connection, untrusted_stream, untrusted_announcement, ...
        self.rejected: collections.Counter[str] = collections.Counter()
        self.on_refused = on_refused

    @property
    def trusted(self) -> frozenset[str]:
        return self._trusted

    def is_trusted(self, peer_id: str) -> bool:
        if peer_id == self.own_peer_id:
            return True
        if self.mode == "any":
            return True
        return peer_id in self._trusted

    def reject(self, reason: str, peer_id: str, what: str = "") -> None:
        """Count (and log once per event) one refusal."""
        self.count(reason)
        log.warning("refused %s from untrusted peer %s%s", reason, peer_id,
                    f" ({what})" if what else "")


    def count(self, reason: str, n: int = 1) -> None:
        """Count a refusal of the mesh layer without logging it."""
        self.rejected[reason] += n
        if self.on_refused is not None:
            self.on_refused(reason, n)


class TrustedNoise(NoiseTransport):
    """Noise XX, then the trust check on the authenticated remote peer ID.

    ``on_rejected(peer_id)`` lets the mesh list refused peers (connected=False, trusted=False).
    """

    def __init__(
        self,
        libp2p_keypair: KeyPair,
        noise_privkey: PrivateKey,
        trust: TrustPolicy,
        on_rejected: Callable[[str], None] | None = None,
    ):
        super().__init__(libp2p_keypair, noise_privkey=noise_privkey)
        self._trust = trust
        self._on_rejected = on_rejected

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        return await self._admit(await super().secure_inbound(conn), "inbound")

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        return await self._admit(await super().secure_outbound(conn, peer_id), "outbound")

    async def _admit(self, secure_conn: ISecureConn, direction: str) -> ISecureConn:
        remote = secure_conn.get_remote_peer().to_base58()
        if self._trust.is_trusted(remote):
            return secure_conn
        self._trust.reject("untrusted_connection", remote, direction)
        if self._on_rejected is not None:
            self._on_rejected(remote)
        try:
            await secure_conn.close()
        except Exception:  # the socket may already be gone; the refusal stands either way
            log.debug("closing refused connection failed", exc_info=True)
        # HandshakeFailure is what the upgrader turns into SecurityUpgradeFailure: the swarm
        # then drops the raw connection without registering a peer.
        raise HandshakeFailure(f"peer {remote} is not trusted")
