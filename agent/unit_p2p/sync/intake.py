"""Intake: what an admitted message from a peer means for this host.

Admission (sync/admission.py) says whether a message may be believed; this module says what it
changes: which heads become candidates to apply (not a counter jump, not behind our head, not
failed here, not held by a staged rollout, not an equivocation), who holds which revision,
what a report counts for (only one about a trusted agent; forwarded towards the origin when it
came as a notify), and when the apply loop should look again (``host.wake_apply``). It does no
I/O of its own: the one entry is ``merge``, called with the bytes of a gossip message or a
notify stream.
"""

from __future__ import annotations

from typing import Protocol

from unit_p2p.sync import wire
from unit_p2p.sync.admission import Admission, TrustLike
from unit_p2p.sync.candidates import Candidates
from unit_p2p.sync.convergence import APPLIED, FAILED, Convergence
from unit_p2p.sync.revision import Document, Head
from unit_p2p.sync.rollout import Rollouts
from unit_p2p.sync.spread import GOSSIP, NOTIFY, Spread

#: the most a revision's counter may exceed the largest counter seen (a publish adds 1): the top of
#: the wire's range (10^18 - 1) is then more than 10^8 publishes away whatever peers announce
MAX_COUNTER_STEP = 1 << 32


class IntakeHost(Protocol):
    """What the intake reads of the reconciler, and the one call it makes on it."""

    peer_id: str
    head: Head | None
    trust: TrustLike
    admission: Admission
    candidates: Candidates
    convergence: Convergence
    spread: Spread
    rollouts: Rollouts

    def wake_apply(self) -> None: ...


class Intake:
    def __init__(self, host: IntakeHost):
        self.host = host

    async def merge(self, peer: str, data: bytes, protocol: str,
                    via: str | None = None) -> None:
        """``data`` came from ``peer`` over ``protocol`` (``GOSSIP``: ``peer`` is its verified
        origin, ``via`` the peer that relayed it to us; ``NOTIFY``: ``peer`` sent it)."""
        host = self.host
        msg = host.admission.message(peer, data, protocol)
        if isinstance(msg, wire.Announce):
            self._consider(peer, msg.head)
        elif isinstance(msg, wire.Broadcast):
            # From its origin (gossip, or the origin's own push) it is the origin's head; pushed
            # by another peer, that peer holds it. Either way the document is here.
            doc = host.admission.document(peer, msg)
            if doc is not None:
                self._consider(peer, msg.head, holds_only=peer != msg.head.revision.origin,
                               document=doc, via=via if protocol == GOSSIP else peer,
                               gossiped=protocol == GOSSIP,
                               flood=msg.flood and protocol == NOTIFY)
        elif isinstance(msg, wire.Have):
            self._consider(peer, msg.head, holds_only=True)
        elif isinstance(msg, wire.NoHead):
            host.candidates.note_peer(peer, None)
            host.spread.behind(peer)
        elif isinstance(msg, wire.Report):
            self._report(peer, (msg,), protocol)
        elif isinstance(msg, wire.Reports):
            self._report(peer, msg.reports, protocol)
        elif isinstance(msg, wire.Wave):
            host.rollouts.on_wave(peer, msg)
        elif msg is not None:
            host.admission.refuse(peer, "unexpected", f"{type(msg).__name__} is not valid here")

    def _report(self, sender: str, reports: tuple[wire.Report, ...], protocol: str) -> None:
        # A trusted sender may forward other agents' reports (towards the origin), but only
        # a report about a trusted agent counts.
        host = self.host
        for report in reports:
            if not host.trust.is_trusted(report.peer):
                host.admission.refuse(sender, "untrusted_peer",
                                      f"report about {report.peer}, not a trusted peer")
                continue
            host.convergence.record(report.peer, report.revision, report.status, report.reason)
            host.rollouts.reported(report.peer, report)
            if report.peer == sender:
                # applied or failed, it has the revision: nothing to tell it about that one
                host.spread.holds(sender, report.revision)
            if report.revision.origin != host.peer_id and protocol == NOTIFY:
                host.spread.forward(report, sender)

    def _consider(self, peer: str, head: Head, holds_only: bool = False,
                  document: Document | None = None, via: str | None = None,
                  gossiped: bool = False, flood: bool = False) -> None:
        """``peer`` announced ``head`` as its own head, or (``holds_only``) as a document it
        holds: then it is a holder, and nothing is known about its own head. ``document``: the
        head's verified document, when it came along (``gossiped``: in gossip); ``via``: the
        peer that relayed it (it holds the document too); ``flood``: its pusher's gossip reaches
        nobody."""
        host = self.host
        candidates = host.candidates
        rev = head.revision
        if rev.counter > candidates.max_seen + MAX_COUNTER_STEP:
            # Counters only ever grow, so one revision near the top of the wire's range would
            # stop every later publish (it could not count past it). No honest mesh jumps this
            # far: refused, as if it were never said.
            host.admission.refuse(peer, "counter_jump",
                                  f"revision {rev} jumps over {MAX_COUNTER_STEP} counters")
            return
        why = host.admission.refusal(peer, head)
        if why == "too_large" and rev not in candidates.failed and (
                host.head is None or rev > host.head.revision):
            # A genuine revision this host will never take: say so to its publisher once,
            # instead of leaving this host pending in the publisher's wait.
            reason = (f"too_large: {head.size} bytes, max_config_bytes here is "
                      f"{host.admission.max_config_bytes}")
            candidates.give_up(rev, reason)
            host.spread.send_report(rev, head.digest, FAILED, reason)
        if why is not None:
            return
        if holds_only:
            host.spread.holds(peer, rev)
        else:
            candidates.note_peer(peer, head)
            host.convergence.record(peer, rev, APPLIED, None, implied=True)
        if via is not None and via != host.peer_id:
            host.spread.holds(via, rev)
        mine = host.head.revision if host.head else None
        if mine is not None and rev <= mine:
            if rev < mine and not holds_only:
                # A peer behind us (or a replay): tell it where the mesh is, apply nothing.
                host.admission.refuse(peer, "stale_revision", f"revision {rev}", quiet=True)
                host.spread.behind(peer)
            return
        if rev in candidates.failed or host.rollouts.holds(peer, head):
            return
        cand = candidates.propose(peer, head)
        if cand is None:
            host.admission.refuse(peer, "equivocation",
                                  f"revision {rev} announced with two digests")
            return
        if document is not None and cand.document is None:
            cand.document = document
            cand.passed_on = gossiped or flood
            if via is not None and via != host.peer_id:
                cand.relayed_by = via
                cand.add_holder(via)
            if flood:
                host.spread.reflood(head, document)
        host.wake_apply()
