"""Reports travel towards a publisher batched: a host sends the reports about one revision (its
own, its pull subtree's) as a few ``reports`` messages, not one message each, without holding
back the last one; the batch has its own strict size bound, every entry is judged on its own
(trust), and the per-sender report budget is charged per entry."""

from __future__ import annotations

import json

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from tests.sync.test_reconciler import cluster, config
from unit_p2p.errors import WireError
from unit_p2p.metrics import Metrics
from unit_p2p.sync import spread as spread_mod
from unit_p2p.sync import wire
from unit_p2p.sync.admission import REPORT_BURST, Admission
from unit_p2p.sync.candidates import Candidates
from unit_p2p.sync.revision import Revision
from unit_p2p.sync.spread import REPORT_LINGER, Spread

DIGEST = "sha256:" + "a" * 64
PEERS = [ID.from_pubkey(create_new_key_pair(bytes([i % 256, i // 256]) + b"k" * 30)
                        .public_key).to_base58() for i in range(700)]
ORIGIN, PARENT, ME = PEERS[:3]
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
REV = Revision(5, ORIGIN)


def report(peer: str, status: str = "applied", reason: str | None = None) -> wire.Report:
    return wire.Report("m", REV, DIGEST, status, reason, peer)


# --- the wire message --------------------------------------------------------------------------


def test_a_batch_round_trips_and_packs_within_its_bounds():
    reports = [report(p) for p in PEERS[3:]] + [report(PEERS[3], "failed", "x" * 512)]
    packed = wire.pack_reports(reports)
    assert 1 < len(packed) <= 3
    for msg in packed:
        data = wire.encode(msg)
        assert len(data) <= wire.MAX_REPORTS_BYTES
        assert len(msg.reports) <= wire.MAX_REPORTS_ENTRIES
        assert wire.decode(data) == msg
    entries = {r.peer: r for msg in packed for r in msg.reports}
    assert len(entries) == len(PEERS) - 3  # one entry per peer, none lost
    assert entries[PEERS[3]].reason == "x" * 512  # the later report about a peer wins


def _batch(**change) -> bytes:
    obj = json.loads(wire.encode(wire.Reports("m", REV, DIGEST, (report(PEERS[5]),))))
    obj.update(change)
    return json.dumps(obj, separators=(",", ":")).encode()


@pytest.mark.parametrize("data, reason", [
    (_batch(reports=[]), "schema"),
    (_batch(reports={}), "schema"),
    (_batch(reports=["x"]), "schema"),
    (_batch(reports=[{"peer": PEERS[5], "status": "applied", "reason": None, "extra": 1}]),
     "schema"),
    (_batch(reports=[{"peer": PEERS[5], "status": "applied"}]), "schema"),
    (_batch(reports=[{"peer": PEERS[5], "status": "failed", "reason": None}]), "schema"),
    (_batch(reports=[{"peer": PEERS[5], "status": "applied", "reason": None}] * 2), "schema"),
    (_batch(reports=[{"peer": f"{'A' * 13}{B58[i // 58]}{B58[i % 58]}", "status": "applied",
                      "reason": None} for i in range(wire.MAX_REPORTS_ENTRIES + 1)]), "schema"),
    (_batch(reports=[{"peer": p, "status": "failed", "reason": "x" * 500}
                     for p in PEERS[3:3 + 70]]), "too_large"),
])
def test_a_batch_is_decoded_strictly(data, reason):
    with pytest.raises(WireError) as err:
        wire.decode(data)
    assert err.value.reason == reason


# --- batching on a host ------------------------------------------------------------------------


class Trusted:
    def __init__(self, untrusted=()):
        self.untrusted = set(untrusted)

    def is_trusted(self, peer_id: str) -> bool:
        return peer_id not in self.untrusted


class RecordingMesh:
    """Connected to the parent only; every push is recorded with its trio time."""

    peer_id = ME

    def __init__(self):
        self.pushes: list[tuple[float, str, wire.Message]] = []

    def connected_peers(self):
        return [PARENT]

    async def send_message(self, peer, protocol, data):
        self.pushes.append((trio.current_time(), peer, wire.decode(data)))


async def test_a_subtree_of_reports_leaves_as_a_few_messages_and_the_last_at_once(
        autojump_clock):
    mesh = RecordingMesh()
    async with trio.open_nursery() as nursery:
        spread = Spread("m", mesh, Trusted(), Candidates(), Metrics(), lambda: None,
                        None, lambda fn, *a: nursery.start_soon(fn, *a), {REV: PARENT})
        t0 = trio.current_time()
        spread.send_report(REV, DIGEST, "applied", None)  # our own: leaves at once
        await trio.sleep(0.001)  # let its push leave
        # 400 reports of our subtree arrive over 0.5 s, from our children
        subtree = PEERS[3:403]
        for i, peer in enumerate(subtree):
            spread.forward(report(peer), PEERS[403 + i % 5])
            await trio.sleep(0.5 / len(subtree))
        await trio.sleep(5)  # quiet: everything has left
        t_last = trio.current_time()
        spread.forward(report(PEERS[600]), PEERS[403])  # the publish's last report
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert {peer for _, peer, _ in mesh.pushes} == {PARENT}
    assert mesh.pushes[0][0] == t0 and mesh.pushes[-1][0] == t_last  # never held back
    sent = [r.peer for _, _, msg in mesh.pushes for r in msg.reports]
    assert sorted(sent) == sorted([ME, *subtree, PEERS[600]])
    # one message per REPORT_LINGER at most while the subtree's reports arrive, not 400
    assert len(mesh.pushes) <= 2 + 0.5 / REPORT_LINGER + 2, len(mesh.pushes)


async def test_a_batch_that_cannot_be_pushed_is_gossiped_once(autojump_clock, monkeypatch):
    mesh = RecordingMesh()
    gossiped: list[bytes] = []

    async def fail(peer, protocol, data):
        raise spread_mod.MeshError("unreachable")

    async def publish(data):
        gossiped.append(data)

    mesh.send_message, mesh.publish = fail, publish
    async with trio.open_nursery() as nursery:
        spread = Spread("m", mesh, Trusted(), Candidates(), Metrics(), lambda: None,
                        None, lambda fn, *a: nursery.start_soon(fn, *a), {REV: PARENT})
        for peer in PEERS[3:50]:
            spread.forward(report(peer), PARENT if peer == PEERS[3] else None)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert len(gossiped) == 1
    assert len(wire.decode(gossiped[0]).reports) == 47


# --- admission and the publisher ---------------------------------------------------------------


async def test_the_report_budget_is_charged_per_entry(autojump_clock):
    # the mock clock stands still while the batches are decoded: on a loaded machine the real
    # one refilled the bucket meanwhile, enough for the last batch to pass
    metrics = Metrics()
    admission = Admission("m", Trusted(), metrics, 10 ** 6)
    batch = wire.encode(wire.pack_reports([report(p) for p in PEERS[3:303]])[0])
    count = len(wire.decode(batch).reports)
    results = [admission.message(PARENT, batch, "notify") for _ in range(int(REPORT_BURST //
                                                                            count) + 1)]
    assert all(isinstance(r, wire.Reports) for r in results[:-1])
    assert results[-1] is None and metrics.rejected_counts() == {"rate_limited": 1}


async def test_a_gossiped_batch_about_an_untrusted_peer_goes_no_further():
    metrics = Metrics()
    admission = Admission("m", Trusted(untrusted={PEERS[7]}), metrics, 10 ** 6)
    batch = wire.encode(wire.Reports("m", REV, DIGEST, (report(PEERS[6]), report(PEERS[7]))))
    assert not admission.gossip(PARENT, batch)
    assert metrics.rejected_counts() == {"untrusted_peer": 1}


async def test_the_publisher_counts_the_trusted_entries_of_a_batch(tmp_path):
    async with cluster(tmp_path, n=3, extra_untrusted=1) as (_, nodes):
        a, b, c, stranger = nodes
        with trio.fail_after(10):
            result = await a.rec.publish(config(1), wait=True, timeout=5)
            assert result.converged
            rev = result.revision
            batch = wire.Reports(a.settings.mesh, rev, result.digest, (
                wire.Report(a.settings.mesh, rev, result.digest, "failed", "unit_rejected: no",
                            c.peer_id),
                wire.Report(a.settings.mesh, rev, result.digest, "applied", None,
                            stranger.peer_id)))
            before = a.rejected("untrusted_peer")  # the stranger's own attempts
            await a.rec.intake.merge(b.peer_id, wire.encode(batch), "notify")
            assert a.rejected("untrusted_peer") == before + 1
            later = await a.rec.wait_revision(rev, timeout=1)
        assert later.failed == {c.peer_id: "unit_rejected: no"}  # the reason travelled
        assert stranger.peer_id not in later.applied + later.pending
