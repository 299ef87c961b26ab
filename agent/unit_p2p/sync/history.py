"""This host's history of heads: every revision it published or followed, newest last.

The store keeps the documents (the last ``keep_configs`` by digest); this log keeps what they
were: revision, origin, digest, size, when this host took it as its head, and whether it
published it. The wire carries no publish time, so ``published_at`` is known only for
revisions this host published; for the others ``applied_at`` (when this host applied it) is the
time there is.

Kept in ``<state_dir>/history.json`` (atomic writes, like the head), at most ``HISTORY_KEPT``
entries; an entry outlives its document when the store pruned that (``kept: false``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import trio

from unit_p2p.errors import UnknownRevision
from unit_p2p.fsutil import atomic_write
from unit_p2p.sync import changes, resources
from unit_p2p.sync.convergence import APPLIED, FAILED
from unit_p2p.sync.revision import DIGEST_RE, Document, Head, Revision

#: entries kept in history.json; documents are kept separately (keep_configs)
HISTORY_KEPT = 100

PUBLISHED = "published"
FOLLOWED = "followed"


@dataclass(frozen=True)
class Entry:
    revision: str
    digest: str
    size: int
    applied_at: float | None
    role: str  # PUBLISHED or FOLLOWED
    published_at: float | None = None  # only known for revisions this host published
    # how the fleet took it when a newer head replaced it here (reports live in memory only)
    fleet: dict | None = None
    # its certificates as status shows them (name, subject, issuer, validity, fingerprint)
    certificates: list | None = None

    @property
    def rev(self) -> Revision:
        return Revision.parse(self.revision)

    @classmethod
    def from_json(cls, raw: dict) -> Entry:
        Revision.parse(raw["revision"])
        if not DIGEST_RE.match(raw["digest"]) or raw.get("role") not in (PUBLISHED, FOLLOWED):
            raise ValueError("bad history entry")
        fleet = raw.get("fleet")
        certificates = raw.get("certificates")
        return cls(raw["revision"], raw["digest"], int(raw["size"]), raw.get("applied_at"),
                   raw["role"], raw.get("published_at"), fleet if isinstance(fleet, dict) else None,
                   certificates if isinstance(certificates, list) else None)


class History:
    """Blocking file operations: the reconciler calls them through ``trio.to_thread``."""

    def __init__(self, state_dir: Path, peer_id: str):
        self.path = Path(state_dir) / "history.json"
        self.peer_id = peer_id
        self.entries: list[Entry] = []

    def load(self, head: Head | None, applied_at: float | None) -> None:
        """Read the log; a state dir from before the log existed starts it with its head."""
        try:
            raw = json.loads(self.path.read_bytes())
            self.entries = [Entry.from_json(e) for e in raw["entries"]]
        except FileNotFoundError:
            self.entries = []
        except (ValueError, KeyError, TypeError):
            # An unreadable log loses the past, never the agent: the head is still known.
            self.entries = []
        if head is not None and (not self.entries
                                 or self.entries[-1].revision != str(head.revision)):
            self.record(head, applied_at)

    def record(self, head: Head, applied_at: float | None,
               fleet_before: dict | None = None, certificates: list | None = None) -> None:
        """``head`` became this host's head at ``applied_at``; ``fleet_before``: how the fleet
        took the head it replaces, kept with that entry; ``certificates``: the head's, as status
        shows them."""
        if self.entries and fleet_before is not None:
            self.entries[-1] = replace(self.entries[-1], fleet=fleet_before)
        mine = head.revision.origin == self.peer_id
        entry = Entry(str(head.revision), head.digest, head.size, applied_at,
                      PUBLISHED if mine else FOLLOWED, applied_at if mine else None,
                      certificates=certificates or None)
        # a restart may record the loaded head again: one entry per revision
        self.entries = [e for e in self.entries if e.revision != entry.revision] + [entry]
        del self.entries[:-HISTORY_KEPT]
        # Not fsynced: a restart resumes from the head (StateStore), and a history that lost its
        # last write to a power cut is read as it was (or as none, when unreadable).
        atomic_write(self.path, json.dumps(
            {"entries": [asdict(e) for e in self.entries]}, indent=1).encode(), durable=False)

    def find(self, spec: str | None) -> Entry:
        """The entry named by ``spec``: ``COUNTER@PEER_ID``, a bare ``COUNTER`` (when one entry
        has it), ``head``, or ``previous`` / None (the one before the head: a rollback's
        default). Raises UnknownRevision."""
        spec = "previous" if spec is None else str(spec)
        if spec in ("head", "previous"):
            index = -1 if spec == "head" else -2
            if len(self.entries) < -index:
                raise UnknownRevision("unknown_revision", "this host knows no revision "
                                      + ("yet" if spec == "head" else "before its head"))
            return self.entries[index]
        if spec.isdigit():
            found = [e for e in self.entries if e.revision.split("@")[0] == str(int(spec))]
            if len(found) > 1:
                raise UnknownRevision("unknown_revision", f"counter {spec} names "
                                      f"{len(found)} revisions here: give COUNTER@PEER_ID")
        else:
            found = [e for e in self.entries if e.revision == spec]
        if not found:
            raise UnknownRevision("unknown_revision",
                                  f"revision {spec[:120]} is not in this host's history")
        return found[0]

    def previous(self, entry: Entry) -> Entry | None:
        i = self.entries.index(entry)
        return self.entries[i - 1] if i > 0 else None

    def views(self) -> list[dict[str, Any]]:
        return [asdict(e) for e in self.entries]


class Revisions:
    """The history as the API shows it: each entry with what it changed against the one
    before it on this host, and how the fleet took it as far as this host heard."""

    def __init__(self, history: History, store: Any, convergence: Any, candidates: Any):
        self.history = history
        self.store = store
        self.convergence = convergence
        self.candidates = candidates
        # (previous digest, digest) -> summary: documents do not change under a digest
        self._summaries: dict[tuple[str | None, str], str] = {}

    async def kept(self, spec: str | None) -> tuple[Entry, Document]:
        """The entry named by ``spec`` and its kept document (with its resources' manifest).
        Raises UnknownRevision."""
        entry = self.history.find(spec)
        doc = await trio.to_thread.run_sync(self.store.load_document, entry.digest)
        if doc is None:
            raise UnknownRevision("unknown_revision", f"the document of revision "
                                  f"{entry.revision} is no longer kept here (keep_configs)")
        return entry, doc

    async def show(self, spec: str | None) -> dict[str, Any]:
        """One revision's entry with its document and the revision before it here."""
        entry, doc = await self.kept(spec)
        prev = self.history.previous(entry)
        return {**asdict(entry), "previous": prev.revision if prev else None, "config": doc.tree,
                "certificates": resources.certificate_views(doc.certificates),
                "js_modules": resources.js_module_views(doc.js_modules)}

    async def views(self) -> list[dict[str, Any]]:
        """Newest first."""
        entries = list(self.history.entries)
        pairs = [(entries[i - 1] if i else None, e) for i, e in enumerate(entries)]
        kept, summaries = await trio.to_thread.run_sync(self._summaries_of, pairs)
        out = []
        for prev, entry in reversed(pairs):
            view = asdict(entry)
            view["kept"] = entry.digest in kept
            view["previous"] = prev.revision if prev else None
            view["summary"] = summaries.get((prev.digest if prev else None, entry.digest))
            view["fleet"] = self._fleet(entry.rev) or entry.fleet
            out.append(view)
        return out

    def _summaries_of(self, pairs: list[tuple[Entry | None, Entry]]
                      ) -> tuple[set[str], dict[tuple[str | None, str], str]]:
        """The kept digests, and a summary per (previous, entry) whose documents are both
        kept (a document gone is unknown, not "nothing changed"). Each document is read once;
        summaries are cached, since nothing changes under a digest."""
        kept = {e.digest for _, e in pairs if self.store.has_document(e.digest)}
        docs: dict[str, Document | None] = {}

        def load(digest: str) -> Document | None:
            if digest not in docs:
                docs[digest] = self.store.load_document(digest)
            return docs[digest]

        for prev, entry in pairs:
            key = (prev.digest if prev else None, entry.digest)
            if key in self._summaries or not {d for d in key if d} <= kept:
                continue
            new, old = load(entry.digest), load(prev.digest) if prev else None
            if new is not None and (prev is None or old is not None):
                self._summaries[key] = _summary(old, new)
        return kept, self._summaries

    def head_fleet(self) -> dict | None:
        """How the fleet took this host's head so far (kept when a newer head replaces it)."""
        entries = self.history.entries
        return self._fleet(entries[-1].rev) if entries else None

    def _fleet(self, revision: Revision) -> dict | None:
        """Counts from the reports this host holds (in memory, so after a restart only what
        History kept for the revisions a newer head replaced). Reports
        travel to the publisher; a follower counts the heads and reports it heard."""
        reports = self.convergence.reports.get(revision)
        if reports is None:
            return None
        peers = set(self.convergence.targets()) | set(reports)
        counts = {"applied": 0, "failed": 0, "pending": 0, "moved_on": 0}
        failed = {}
        for peer in peers | {self.convergence.peer_id}:
            status, reason = reports.get(peer, (None, None))
            if status == APPLIED:
                counts["applied"] += 1
            elif status == FAILED:
                counts["failed"] += 1
                failed[peer] = reason or FAILED
            elif peer != self.convergence.peer_id:
                head = self.candidates.peer_heads.get(peer)
                # on a newer revision and never said anything about this one
                later = head is not None and head.revision > revision
                counts["moved_on" if later else "pending"] += 1
        return {**counts, "failed_peers": failed}


def _summary(old: Document | None, new: Document) -> str:
    """The config's summary (changes.summary), and the bundles and modules added, removed or
    changed (by content): ``routes ~1, certificates ~1``."""
    text = changes.summary(old.tree if old else None, new.tree)
    if old is None:
        return text
    parts = []
    for kind in resources.KINDS:
        a = {n: e["digest"] for n, e in old.members.get(kind, {}).items()}
        b = {n: e["digest"] for n, e in new.members.get(kind, {}).items()}
        signs = [f"{sign}{n}" for sign, n in (
            ("+", len(b.keys() - a.keys())), ("-", len(a.keys() - b.keys())),
            ("~", sum(1 for k in a.keys() & b.keys() if a[k] != b[k]))) if n]
        if signs:
            parts.append(f"{kind} {' '.join(signs)}")
    if not parts:
        return text
    return ", ".join(parts) if text == "same config" else f"{text}, {', '.join(parts)}"
