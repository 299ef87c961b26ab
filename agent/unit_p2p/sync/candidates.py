"""What peers propose: revisions newer than our head and who holds them, and peers' heads.

Plain bookkeeping, no I/O: the reconciler feeds it admitted heads, the fetcher reads holders,
spread reads peers' heads to decide whom to tell.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import trio

from unit_p2p.sync.revision import Document, Head, Revision

#: first and longest wait before fetching a revision again that nobody could serve
RETRY_FIRST = 2.0
RETRY_MAX = 60.0


@dataclass
class Candidate:
    head: Head
    holders: set[str] = field(default_factory=set)
    seen_at: float = field(default_factory=time.monotonic)
    holder_added: trio.Event = field(default_factory=trio.Event)
    #: failed fetches in a row, and the trio time before which it is not tried again
    failures: int = 0
    not_before: float = 0.0
    #: the document, when it came with the head (a broadcast): nothing to pull
    document: Document | None = None
    #: the peer that relayed the broadcast to us first: our parent in its spread tree
    relayed_by: str | None = None
    #: the document goes on from here already: it came in gossip (our gossipsub sent it on to
    #: every peer it reaches, the pruned ones too) or we flood it on (Spread.reflood)
    passed_on: bool = False

    def add_holder(self, peer: str) -> None:
        if peer not in self.holders:
            # Someone new says it holds the document: worth trying again at once.
            self.not_before = 0.0
        self.holders.add(peer)
        self.holder_added.set()

    def back_off(self) -> float:
        """Nobody could serve it: seconds until the next try, doubling from RETRY_FIRST up to
        RETRY_MAX, so a document no holder can serve is not pulled every few seconds forever."""
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** self.failures)
        self.failures += 1
        self.not_before = trio.current_time() + delay
        return delay

    async def wait_holder(self) -> None:
        await self.holder_added.wait()
        self.holder_added = trio.Event()


class Candidates:
    def __init__(self) -> None:
        self.by_revision: dict[Revision, Candidate] = {}
        #: revisions this host failed to apply, by reason: not retried until something changes
        self.failed: dict[Revision, str] = {}
        #: the last head each peer told us about (None: the peer has no revision yet)
        self.peer_heads: dict[str, Head | None] = {}
        #: the largest revision counter seen anywhere; the next publish counts from it
        self.max_seen = 0

    def __bool__(self) -> bool:
        return bool(self.by_revision)

    def note_peer(self, peer: str, head: Head | None) -> None:
        self.peer_heads[peer] = head
        if head is not None:
            self.max_seen = max(self.max_seen, head.revision.counter)

    def peer_revision(self, peer: str) -> Revision | None:
        head = self.peer_heads.get(peer)
        return head.revision if head is not None else None

    def propose(self, peer: str, head: Head) -> Candidate | None:
        """Record that ``peer`` holds ``head``; None if the same revision was already proposed
        with another digest (only the origin can sign one, so the origin equivocated)."""
        rev = head.revision
        cand = self.by_revision.get(rev)
        if cand is None:
            cand = self.by_revision[rev] = Candidate(head)
        elif cand.head.digest != head.digest:
            return None
        cand.add_holder(peer)
        return cand

    def get(self, revision: Revision) -> Candidate | None:
        return self.by_revision.get(revision)

    def best(self, mine: Revision | None) -> Candidate | None:
        """The newest candidate above ``mine`` (older ones are dropped)."""
        if mine is not None:
            for rev in [r for r in self.by_revision if r <= mine]:
                del self.by_revision[rev]
        if not self.by_revision:
            return None
        return self.by_revision[max(self.by_revision)]

    def drop(self, revision: Revision) -> None:
        self.by_revision.pop(revision, None)

    def give_up(self, revision: Revision, reason: str) -> None:
        self.by_revision.pop(revision, None)
        self.failed[revision] = reason

    def pending(self) -> list[Revision]:
        return sorted(self.by_revision)
