"""May this be believed? The checks every inbound message and head passes before anything acts.

A message is believed only from a trusted peer, within that peer's rate, decoded strictly and
for this mesh; a head only when its origin is trusted, its size under the cap and its origin
signature verifies. Every refusal of the sync layer is counted and logged here, in one place
(``refuse``), under a short reason that is also the ``/metrics`` label.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import Protocol

import trio

from unit_p2p.errors import BadDocument, WireError
from unit_p2p.metrics import Metrics
from unit_p2p.sync import wire
from unit_p2p.sync.revision import Document, Head, Revision, verify_revision
from unit_p2p.sync.waves import wave_refusal

log = logging.getLogger("unit_p2p.sync.admission")

#: verified signed heads remembered, so re-announcements of one head are checked once
VERIFIED_KEPT = 64
#: documents of broadcasts verified by the gossip validator, kept for their delivery
DOCUMENTS_KEPT = 8
# per-peer token bucket for inbound announcements, heads and pushes
RATE_PER_S = 20.0
RATE_BURST = 60.0
# and one for reports: a peer near a publisher forwards the reports of its whole subtree of the
# pull tree (hundreds in a fleet of thousands) within a second or two of a publish
REPORT_RATE_PER_S = 500.0
REPORT_BURST = 5000.0
#: a refusal of one (peer, reason) is logged at most once per this many seconds
LOG_EVERY = 10.0
#: bound on the per-peer tables (buckets, log stamps): a flood of fresh peer IDs cannot grow them
_TABLE_MAX = 4096


class TrustLike(Protocol):
    def is_trusted(self, peer_id: str) -> bool: ...


class _TokenBucket:
    # trio's clock, not the wall clock: under a simulator's mock clock rates are exact too.
    def __init__(self, rate: float = RATE_PER_S, burst: float = RATE_BURST) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.stamp = trio.current_time()

    def take(self, cost: float = 1.0) -> bool:
        now = trio.current_time()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True


class Admission:
    def __init__(self, mesh_name: str, trust: TrustLike, metrics: Metrics,
                 max_config_bytes: int):
        self.mesh_name = mesh_name
        self.trust = trust
        self.metrics = metrics
        self.max_config_bytes = max_config_bytes
        self._buckets: dict[str, _TokenBucket] = {}
        self._report_buckets: dict[str, _TokenBucket] = {}
        self._last_log: dict[tuple[str, str], float] = {}
        #: heads whose origin signature verified (revision, digest, signature), oldest first
        self._verified: OrderedDict[tuple[Revision, str, bytes], None] = OrderedDict()
        #: documents of broadcasts verified here, by digest (gossip is validated, then
        #: delivered: the document is parsed once, not twice)
        self._documents: OrderedDict[str, Document] = OrderedDict()

    def refuse(self, peer: str, reason: str, detail: str, *, quiet: bool = False) -> None:
        """Count a refused message, stream or revision; log it (rate-limited per peer and
        reason) unless ``quiet`` (refusals that are normal traffic, such as a stale replay)."""
        self.metrics.refused(reason)
        if quiet:
            return
        now = trio.current_time()
        key = (peer, reason)
        if now - self._last_log.get(key, -math.inf) >= LOG_EVERY:
            self._last_log[key] = now
            if len(self._last_log) > _TABLE_MAX:
                self._last_log.clear()
            log.warning("rejected from peer=%s reason=%s: %s", peer, reason, detail)

    def within_rate(self, peer: str, reports: int = 0) -> bool:
        """``reports``: a message carrying this many reports, taken from the peer's report
        bucket (one token per report, apart from its other messages)."""
        table = self._report_buckets if reports else self._buckets
        bucket = table.get(peer)
        if bucket is None:
            if len(table) > _TABLE_MAX:
                table.clear()
            bucket = table[peer] = (_TokenBucket(REPORT_RATE_PER_S, REPORT_BURST) if reports
                                    else _TokenBucket())
        if bucket.take(reports or 1):
            return True
        self.refuse(peer, "rate_limited", "too many reports" if reports else "too many messages")
        return False

    def message(self, peer: str, data: bytes, protocol: str) -> wire.Message | None:
        """The decoded message if ``peer`` may say it here, else None (refusal counted).
        Counts the message as received by ``protocol``, by kind (``invalid``: refused before
        its kind was known)."""
        msg = self._admit(peer, data)
        self.metrics.message(protocol, msg.TYPE if msg is not None else "invalid", "received")
        return msg

    def _admit(self, peer: str, data: bytes) -> wire.Message | None:
        if not self.trust.is_trusted(peer):
            self.refuse(peer, "untrusted_peer", "message from a peer not on the trusted list")
            return None
        try:
            msg = wire.decode(data)  # a few KiB at most (wire.MAX_ANY_BYTES): cheap
        except WireError as exc:
            if self.within_rate(peer):
                self.refuse(peer, exc.reason, exc.detail)
            return None
        if not self.within_rate(peer, reports=_report_count(msg)):
            return None
        mesh = getattr(msg, "mesh", self.mesh_name)
        if mesh != self.mesh_name:
            self.refuse(peer, "wrong_mesh", f"message for mesh {mesh!r}")
            return None
        return msg

    def gossip(self, origin: str, data: bytes) -> bool:
        """May this gossip message be delivered here and relayed further? Checked by gossipsub's
        validator before it forwards anything, so a bad announcement (schema, mesh, origin
        signature, untrusted origin) goes no further than the first hop. Refusals are counted;
        the rate limit is left to delivery (``message``), where it is per sender."""
        try:
            msg = wire.decode(data)
        except WireError as exc:
            self.refuse(origin, exc.reason, f"gossip: {exc.detail}")
            return False
        mesh = getattr(msg, "mesh", self.mesh_name)
        if mesh != self.mesh_name:
            self.refuse(origin, "wrong_mesh", f"gossip for mesh {mesh!r}")
            return False
        if isinstance(msg, wire.Announce):
            return self.head(origin, msg.head)
        if isinstance(msg, wire.Broadcast):
            # The document too: a relayer forwards only what it could apply itself.
            return self.head(origin, msg.head) and self.document(origin, msg) is not None
        if isinstance(msg, wire.Report | wire.Reports):
            about = [msg.peer] if isinstance(msg, wire.Report) else [r.peer for r in msg.reports]
            untrusted = [p for p in about if not self.trust.is_trusted(p)]
            if untrusted:
                self.refuse(origin, "untrusted_peer", f"gossiped report about {untrusted[0]}")
                return False
            return True
        if isinstance(msg, wire.NoHead):
            return True
        if isinstance(msg, wire.Wave):
            # a forged or altered wave goes no further than the first hop either
            why = wave_refusal(self.mesh_name, msg, self.trust)
            if why is not None:
                self.refuse(origin, *why)
            return why is None
        self.refuse(origin, "unexpected", f"{type(msg).__name__} is not valid as gossip")
        return False

    def document(self, peer: str, msg: wire.Broadcast) -> Document | None:
        """The broadcast's document, verified against its head's digest; None (refusal counted)
        when it does not match. Runs on the trio loop: at most MAX_INLINE_BYTES of JSON, about
        a millisecond to parse and hash, and each document once."""
        doc = self._documents.get(msg.head.digest)
        if doc is not None and doc.data == msg.document:
            return doc
        try:
            doc = Document.from_bytes(msg.document, msg.head.digest)
        except BadDocument as exc:
            self.refuse(peer, exc.reason, f"broadcast of {msg.head.revision}: {exc.detail}")
            return None
        self._documents[msg.head.digest] = doc
        while len(self._documents) > DOCUMENTS_KEPT:
            self._documents.popitem(last=False)
        return doc

    def head(self, peer: str, head: Head) -> bool:
        """True when ``head`` may be considered (see ``refusal``)."""
        return self.refusal(peer, head) is None

    def refusal(self, peer: str, head: Head) -> str | None:
        """Why ``head`` may not be considered (counted and logged), or None: a trusted origin,
        the origin's signature, then the size cap. The size comes after the signature so that a
        ``too_large`` is known to be a genuine revision of its origin, which the reconciler can
        then report as failed instead of leaving its publisher waiting."""
        rev = head.revision
        if not self.trust.is_trusted(rev.origin):
            return self._refused(peer, "untrusted_origin",
                                 f"revision {rev} from an untrusted origin")
        key = (rev, head.digest, head.signature)
        if key in self._verified:
            # One signed head arrives many times (gossip copies, pushes, heads exchanges):
            # verify it once.
            self._verified.move_to_end(key)
        elif verify_revision(self.mesh_name, rev, head.digest, head.signature):
            self._verified[key] = None
            while len(self._verified) > VERIFIED_KEPT:
                self._verified.popitem(last=False)
        else:
            return self._refused(peer, "bad_signature",
                                 f"revision {rev}: origin signature does not verify")
        if head.size > self.max_config_bytes:
            return self._refused(peer, "too_large", f"revision {rev} is {head.size} bytes, "
                                 f"max_config_bytes here is {self.max_config_bytes}")
        return None

    def _refused(self, peer: str, reason: str, detail: str) -> str:
        self.refuse(peer, reason, detail)
        return reason


def _report_count(msg: wire.Message) -> int:
    """How many reports ``msg`` carries (0: it is not a report)."""
    if isinstance(msg, wire.Reports):
        return len(msg.reports)
    return 1 if isinstance(msg, wire.Report) else 0
