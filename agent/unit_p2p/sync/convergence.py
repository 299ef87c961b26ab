"""Where a revision stands in the mesh: each peer's report, and a publisher's wait on them.

Reports ("applied" / "failed: reason") are kept per revision for the last ``REPORTS_KEPT``
revisions. A publisher's wait tallies the peers it waits for (every trusted peer it knows of)
into applied / failed / pending and returns the moment nobody it waits for is pending.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from unit_p2p.sync.resources import CERTIFICATES, JS_MODULES, certificate_views, js_module_views
from unit_p2p.sync.revision import Head, Revision

#: revisions whose reports are kept for publishers' waits
REPORTS_KEPT = 64

APPLIED = "applied"
FAILED = "failed"


@dataclass
class PublishResult:
    changed: bool
    revision: Revision | None
    digest: str
    size: int
    converged: bool = False
    applied: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    before: Any = None
    after: Any = None
    #: a staged rollout's state (sync/rollout.py ``Rollouts.view``), None for a plain publish
    rollout: dict | None = None
    #: the revision's envelope members (certificates, js_modules manifests), if any
    resources: dict = field(default_factory=dict)

    def to_json(self, with_diff: bool) -> dict:
        out = {
            "changed": self.changed,
            "revision": str(self.revision) if self.revision else None,
            "digest": self.digest,
            "size": self.size,
            "converged": self.converged,
            "peers": {"applied": self.applied, "failed": self.failed, "pending": self.pending},
            "certificates": certificate_views(self.resources.get(CERTIFICATES, {})),
            "js_modules": js_module_views(self.resources.get(JS_MODULES, {})),
        }
        if self.rollout is not None:
            out["rollout"] = self.rollout
        if with_diff:
            out["before"] = self.before
            out["after"] = self.after
        return out


class Convergence:
    def __init__(self, peer_id: str, targets: Callable[[], Iterable[str]]):
        """``targets()`` lists the peers a publisher waits for (this host excluded)."""
        self.peer_id = peer_id
        self._targets = targets
        self.reports: OrderedDict[Revision, dict[str, tuple[str, str | None]]] = OrderedDict()
        self._changed = trio.Event()

    def changed(self) -> None:
        """Something a wait may be waiting for changed (a report, a peer went away)."""
        self._changed.set()
        self._changed = trio.Event()

    def record(self, peer: str, revision: Revision, status: str, reason: str | None, *,
               implied: bool = False) -> None:
        """``implied``: an "applied" read from the peer's head, not a report of its own; it
        never overrides a failure the peer reported for that revision (a drifted host still
        holds the head, but its Unit does not run it)."""
        per_rev = self.reports.get(revision)
        if per_rev is None:
            per_rev = self.reports[revision] = {}
            while len(self.reports) > REPORTS_KEPT:
                self.reports.popitem(last=False)
        if implied and per_rev.get(peer, (None,))[0] == FAILED:
            return
        per_rev[peer] = (status, reason)
        self.changed()

    def last_report(self, peer: str) -> dict | None:
        for rev in reversed(self.reports):
            entry = self.reports[rev].get(peer)
            if entry is not None:
                return {"revision": str(rev), "status": entry[0], "reason": entry[1]}
        return None

    def targets(self) -> list[str]:
        known = set(self._targets())
        known.discard(self.peer_id)
        return sorted(known)

    def tally(self, result: PublishResult, mine: Revision | None,
              peer_heads: Mapping[str, Head | None]) -> None:
        rev = result.revision
        assert rev is not None
        applied, failed, pending = ([self.peer_id] if mine == rev else []), {}, []
        reports = self.reports.get(rev, {})
        # A peer that reported is waited for even if we knew nothing of it before.
        for peer in sorted((set(self.targets()) | set(reports)) - {self.peer_id}):
            status, reason = reports.get(peer, (None, None))
            peer_head = peer_heads.get(peer)
            if status == APPLIED:
                applied.append(peer)
            elif status == FAILED:
                failed[peer] = reason or FAILED
            elif peer_head is not None and peer_head.revision > rev:
                failed[peer] = f"superseded by {peer_head.revision}"
            else:
                pending.append(peer)
        result.applied, result.failed, result.pending = applied, failed, pending

    async def wait(self, result: PublishResult, *, wait: bool, timeout: float,
                   min_peers: int | None, require_all: bool,
                   mine: Callable[[], Revision | None],
                   peer_heads: Mapping[str, Head | None]) -> None:
        """Tally ``result``; with ``wait``, until nobody is pending (or ``min_peers`` applied)
        or ``timeout``. Sets ``result.converged``."""

        def done() -> bool:
            self.tally(result, mine(), peer_heads)
            if require_all or min_peers is None:
                return not result.pending
            # min_peers counts other peers; the publisher is in ``applied`` too
            return len(result.applied) - 1 >= min_peers

        finished = done()
        if wait and not finished:
            with trio.move_on_after(timeout):
                while not done():
                    await self._changed.wait()
            finished = done()
        result.converged = finished and not result.failed and (
            not require_all or not result.pending)
