"""A peer near a publisher forwards the reports of its whole pull subtree at once: those must not
trip the per-peer limit that bounds everything else it sends."""

from __future__ import annotations

from unit_p2p.metrics import Metrics
from unit_p2p.sync import wire
from unit_p2p.sync.admission import RATE_BURST, Admission
from unit_p2p.sync.revision import Revision

ORIGIN = "12D3KooWKp3JpYh1RhD1VvHQt1bDxHbZ3mJ5YvbD1Y4m2rR1cBqU"
FORWARDER = "12D3KooWQKCrZ79jkQMfsoU5ovWfPhJW7rs6datPP4aWu62ZJuMs"


class TrustAll:
    def is_trusted(self, peer_id: str) -> bool:
        return True


def report(counter: int) -> bytes:
    return wire.encode(wire.Report("m", Revision(counter, ORIGIN), "sha256:" + "a" * 64,
                                   "applied", None, FORWARDER))


async def test_a_subtree_of_reports_passes_where_other_messages_are_limited():
    metrics = Metrics()
    admission = Admission("m", TrustAll(), metrics, 10 ** 6)
    reports = [admission.message(FORWARDER, report(i), "notify") for i in range(500)]
    assert all(isinstance(r, wire.Report) for r in reports)
    assert metrics.rejected_counts() == {}
    nohead = wire.encode(wire.NoHead("m"))
    others = [admission.message(FORWARDER, nohead, "notify") for _ in range(int(RATE_BURST) + 20)]
    refused = others.count(None)
    assert refused >= 19 and metrics.rejected_counts() == {"rate_limited": refused}
