"""Reports: ``report`` ("agent P applied / failed to apply revision R") and ``reports`` (many
about one revision, forwarded towards its origin as one message), and how a list of reports is
packed into as few ``reports`` messages as their bounds allow."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

from unit_p2p.errors import WireError
from unit_p2p.sync.revision import Revision
from unit_p2p.sync.wire import fields
from unit_p2p.sync.wire.fields import BaseMessage

#: a ``reports`` batch: about 340 "applied" entries (a failed one carries its reason, up to 512)
MAX_REPORTS_BYTES = 32 * 1024
MAX_REPORTS_ENTRIES = 512


@dataclass(frozen=True)
class Report(BaseMessage):
    mesh: str
    revision: Revision
    digest: str
    status: str  # "applied" | "failed"
    reason: str | None
    peer: str  # the agent this report is about (the sender may be forwarding it)

    TYPE = "report"
    FIELDS = frozenset({"mesh", "revision", "digest", "status", "reason", "peer"})

    def to_obj(self) -> dict:
        return {"mesh": self.mesh, "revision": str(self.revision), "digest": self.digest,
                "status": self.status, "reason": self.reason, "peer": self.peer}

    @classmethod
    def from_obj(cls, obj: dict) -> Report:
        status = obj["status"]
        if status not in ("applied", "failed"):
            raise WireError("schema", "status must be applied or failed")
        reason = fields.reason(obj)
        if (status == "failed") != (reason is not None):
            raise WireError("schema", "a failed report needs a reason, an applied one has none")
        return cls(fields.mesh(obj), fields.revision(obj), fields.digest(obj), status, reason,
                   fields.peer(obj, "peer"))


@dataclass(frozen=True)
class Reports(BaseMessage):
    """Reports about one revision (and digest), from any agents: a batch a peer forwards towards
    the origin. Entries are ``Report``s, encoded by Report's own codec without the fields they
    share (``SHARED``), so a field added to Report travels in batches too."""

    mesh: str
    revision: Revision
    digest: str
    reports: tuple[Report, ...]

    TYPE = "reports"
    SHARED: ClassVar[frozenset[str]] = frozenset({"mesh", "revision", "digest"})
    FIELDS = SHARED | {"reports"}
    MAX_BYTES = MAX_REPORTS_BYTES

    def to_obj(self) -> dict:
        return {"mesh": self.mesh, "revision": str(self.revision), "digest": self.digest,
                "reports": [_entry(r) for r in self.reports]}

    @classmethod
    def from_obj(cls, obj: dict) -> Reports:
        mesh, revision, digest = fields.mesh(obj), fields.revision(obj), fields.digest(obj)
        entries = obj["reports"]
        if type(entries) is not list or not 1 <= len(entries) <= MAX_REPORTS_ENTRIES:
            raise WireError("schema", f"reports must be a list of 1 to {MAX_REPORTS_ENTRIES}")
        keys = Report.FIELDS - cls.SHARED
        reports, peers = [], set()
        for entry in entries:
            if type(entry) is not dict or set(entry) != keys:
                raise WireError("schema", f"a reports entry must have exactly {sorted(keys)}")
            report = Report.from_obj({**entry, "mesh": mesh, "revision": str(revision),
                                      "digest": digest})
            if report.peer in peers:
                raise WireError("schema", "two reports about one peer")
            peers.add(report.peer)
            reports.append(report)
        return cls(mesh, revision, digest, tuple(reports))


def _entry(report: Report) -> dict:
    return {k: v for k, v in report.to_obj().items() if k not in Reports.SHARED}


def pack_reports(reports: list[Report]) -> list[Reports]:
    """``reports`` as few ``Reports`` messages as their bounds allow: one per revision and digest
    (in first-seen order), split where one would pass MAX_REPORTS_BYTES or MAX_REPORTS_ENTRIES.
    A later report about the same peer replaces an earlier one."""
    groups: dict[tuple[str, Revision, str], dict[str, Report]] = {}
    for r in reports:
        groups.setdefault((r.mesh, r.revision, r.digest), {})[r.peer] = r
    out = []
    for (mesh, revision, digest), by_peer in groups.items():
        room = MAX_REPORTS_BYTES - len(Reports(mesh, revision, digest, ()).encoded())
        batch: list[Report] = []
        used = 0
        for r in by_peer.values():
            size = len(json.dumps(_entry(r), separators=(",", ":"), ensure_ascii=True)) + 1
            if batch and (used + size > room or len(batch) == MAX_REPORTS_ENTRIES):
                out.append(Reports(mesh, revision, digest, tuple(batch)))
                batch, used = [], 0
            batch.append(r)
            used += size
        out.append(Reports(mesh, revision, digest, tuple(batch)))
    return out
