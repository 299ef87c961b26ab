"""What the reconciler shows the local API: plain data (docs/api.md documents the JSON).

Kept apart from the decisions so the reconciler reads as the protocol; the reconciler inherits
these views and they only read its state.
"""

from __future__ import annotations

from typing import Any

from unit_p2p.metrics import Metrics
from unit_p2p.settings import Settings
from unit_p2p.sync.applier import Applier
from unit_p2p.sync.candidates import Candidates
from unit_p2p.sync.convergence import Convergence
from unit_p2p.sync.drift import Drift
from unit_p2p.sync.resources import certificate_views, js_module_views
from unit_p2p.sync.revision import Head


class ReconcilerViews:
    # the reconciler's state these views read
    peer_id: str
    mesh_name: str
    settings: Settings
    mesh: Any
    trust: Any
    metrics: Metrics
    head: Head | None
    head_unit_digest: str | None
    applied_at: float | None
    last_error: dict | None
    drift: Drift
    applier: Applier
    candidates: Candidates
    convergence: Convergence

    @property
    def unit_reachable(self) -> bool | None:
        return self.applier.reachable

    async def local_config(self) -> dict:
        """What the local Unit holds now, its digest (minus exclusions) and whether that is
        our head. Raises UnitError when Unit does not answer."""
        config, digest = await self.applier.read()
        return {"config": config, "digest": digest, "head": self._head_view(),
                "in_sync": bool(self.head and self.applier.expected_digest == digest)}

    def _head_view(self) -> dict | None:
        if self.head is None:
            return None
        head = self.head.to_json()
        head.pop("signature")
        head["applied_at"] = self.applied_at
        return head

    def status(self) -> dict:
        connected = self.mesh.connected_peers()
        peers = self.mesh.peers()
        applier = self.applier
        return {
            "peer_id": self.peer_id,
            "mesh": self.mesh_name,
            "head": self._head_view(),
            "local": {
                "unit": "reachable" if applier.reachable else "unreachable",
                "unit_error": applier.error,
                "digest": applier.local_digest,
                # a digest read before Unit went away says nothing about what it holds now
                "in_sync": bool(self.head and applier.in_sync),
                "on_drift": self.settings.on_drift,
                "drift": self.drift.view(),
            },
            "certificates": certificate_views(applier.expected.certificates
                                              if applier.expected else {}),
            "js_modules": js_module_views(applier.expected.js_modules
                                          if applier.expected else {}),
            "last_error": self.last_error,
            "pending": [str(r) for r in self.candidates.pending()],
            "peers": {
                "connected": len(connected),
                "known": len(peers),
                "trusted": sum(1 for p in peers if self.trust.is_trusted(p.peer_id)),
            },
            "counters": {
                "applied": self.metrics.applies_count("ok"),
                "apply_failed": self.metrics.applies_count("failed"),
                "pulls_served": self.metrics.pulls_served_count(),
                "rejected": self.metrics.rejected_counts(),
            },
        }

    def peer_views(self) -> list[dict]:
        """Every peer the mesh knows, then every allowlisted peer it never saw (``seen``
        false): a publisher's wait waits for those too, so the operator must see them."""
        out = []
        known = self.mesh.peers()
        for info in known:
            head = self.candidates.peer_heads.get(info.peer_id)
            out.append({
                "peer_id": info.peer_id,
                "seen": True,
                "connected": info.connected,
                "trusted": self.trust.is_trusted(info.peer_id),
                "addrs": list(info.addrs),
                "head": {"revision": str(head.revision), "digest": head.digest} if head else None,
                "report": self.convergence.last_report(info.peer_id),
            })
        seen = {info.peer_id for info in known} | {self.peer_id}
        for peer in sorted(set(self.settings.trusted_peers) - seen):
            out.append({"peer_id": peer, "seen": False, "connected": False, "trusted": True,
                        "addrs": [], "head": None, "report": None})
        return out
