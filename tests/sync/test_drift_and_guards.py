"""Drift repair, the publisher's own host-local values, and the guards a publish passes first.

On the in-memory network of test_reconciler; the Unit watch polls every few ms here (the agent's
default is seconds), so drift is noticed as soon as the test makes it.
"""

from __future__ import annotations

import pytest
import trio

from tests.settings.conftest import new_peer_id
from tests.sync.test_reconciler import cluster, config, digest_of, until
from unit_p2p.errors import PublishRefused, UnitUnreachable, UnknownRevision
from unit_p2p.sync import applier
from unit_p2p.sync.revision import Revision


@pytest.fixture(autouse=True)
def fast_watch(monkeypatch):
    monkeypatch.setattr(applier, "UNIT_POLL_INTERVAL", 0.02)
    monkeypatch.setattr(applier, "UNIT_RETRY_INTERVAL", 0.02)


def report_of(publisher, revision, peer) -> str | None:
    """What ``peer`` last reported to ``publisher`` about ``revision``."""
    return publisher.rec.convergence.reports.get(revision, {}).get(peer.peer_id, (None,))[0]


def report_drift(*nodes) -> None:
    for node in nodes:
        node.rec.drift.action = "report"


async def test_a_unit_emptied_or_edited_by_hand_gets_the_head_back(tmp_path):
    async with cluster(tmp_path) as (_, (a, b, c)):
        with trio.fail_after(10):
            result = await a.rec.publish(config(1), wait=True, timeout=5)
            assert result.converged
            c.unit.config = {"listeners": {}, "routes": [], "applications": {}}  # reinstalled
            await until(lambda: c.unit.config == config(1))
            b.unit.config = config(9)  # edited by hand
            await until(lambda: b.unit.config == config(1))
            for node in (b, c):  # counted once the repair's read-back is done
                await until(lambda n=node: n.metrics.drift_repairs.labels("ok")._value.get())
        for node in (b, c):
            assert node.metrics.drift_repairs.labels("ok")._value.get() == 1
            assert node.metrics.drifted._value.get() == 0
            local = node.rec.status()["local"]
            assert local["drift"] is None and local["in_sync"] is True
        assert c.rec.head.revision == result.revision  # a repair is not a new revision


async def test_under_report_a_drifted_host_is_left_alone_and_counts_as_failed(tmp_path):
    async with cluster(tmp_path) as (_, (a, b, c)):
        report_drift(a, b, c)
        with trio.fail_after(10):
            result = await a.rec.publish(config(1), wait=True, timeout=5)
            assert result.converged
            c.unit.config = config(7)
            await until(lambda: c.rec.status()["local"]["drift"] is not None)
            # the report travels to the publisher; a wait ends at once (nobody is pending)
            await until(lambda: report_of(a, result.revision, c) == "failed")
            drifted = await a.rec.wait_revision(result.revision, timeout=5)
            assert list(drifted.failed) == [c.peer_id]
            assert drifted.failed[c.peer_id].startswith("drift: ")
            assert c.unit.config == config(7)
            assert c.metrics.drifted._value.get() == 1
            assert c.rec.status()["local"]["in_sync"] is False
            c.unit.config = config(1)  # put back by hand: applied again
            await until(lambda: report_of(a, result.revision, c) == "applied")
            again = await a.rec.wait_revision(result.revision, timeout=5)
        assert again.converged and c.peer_id in again.applied


async def test_the_publisher_keeps_its_own_values_at_the_excluded_pointers(tmp_path):
    async with cluster(tmp_path, exclusions=("/listeners",)) as (_, (a, b, c)):
        mine = {"127.0.0.1:9000": {"pass": "routes"}}
        a.unit.config = {**config(0), "listeners": mine}
        shared = {k: v for k, v in config(1).items() if k != "listeners"}
        with trio.fail_after(10):
            result = await a.rec.publish(shared, wait=True, timeout=5)
        assert result.converged and result.changed
        assert a.unit.config == {**shared, "listeners": mine}
        for node in (b, c):  # and every other host keeps its own, as always
            assert node.unit.config == {**shared, "listeners": config(0)["listeners"]}


async def test_a_config_above_max_config_bytes_is_refused_before_anything_changes(tmp_path):
    async with cluster(tmp_path) as (_, (a, _b, _c)):
        a.rec.settings = a.rec.settings.replace(max_config_bytes=200)
        big = {**config(1), "settings": {"http": {"server_version": False}},
               "applications": {f"app{i}": {"type": "python"} for i in range(20)}}
        with trio.fail_after(5), pytest.raises(PublishRefused) as err:
            await a.rec.publish(big)
        assert err.value.reason == "too_large" and "max_config_bytes" in str(err.value)
        assert a.unit.config == config(0) and a.rec.head is None


async def test_publishing_an_older_revisions_config_needs_force(tmp_path):
    async with cluster(tmp_path) as (_, (a, b, c)):
        report_drift(a, b, c)
        with trio.fail_after(10):
            await a.rec.publish(config(1), wait=True, timeout=5)
            second = await a.rec.publish(config(2), wait=True, timeout=5)
            assert second.converged
            b.unit.config = config(1)  # e.g. Unit restarted from a stale state dir
            await until(lambda: b.rec.status()["local"]["drift"] is not None)
            with pytest.raises(PublishRefused) as err:
                await b.rec.publish()
            assert err.value.reason == "stale_config"
            assert b.rec.head.revision == second.revision
            forced = await b.rec.publish(force=True, wait=True, timeout=5)
        assert forced.changed and forced.revision > second.revision
        assert c.unit.config == config(1)


async def test_a_host_behind_the_mesh_cannot_publish_its_config_without_force(tmp_path):
    async with cluster(tmp_path) as (_, (a, b, _c)):
        with trio.fail_after(10):
            await a.rec.publish(config(1), wait=True, timeout=5)
            b.unit.reject_next = 1  # b cannot apply the next revision
            second = await a.rec.publish(config(2), wait=True, timeout=5)
            assert b.peer_id in second.failed
            with pytest.raises(PublishRefused) as err:
                await b.rec.publish()
            assert err.value.reason == "behind_mesh" and str(second.revision.counter) in str(
                err.value)
            forced = await b.rec.publish(force=True)
        assert forced.revision > second.revision


async def test_a_failed_read_back_restores_the_old_config_and_is_a_failed_apply(tmp_path):
    async with cluster(tmp_path) as (_, (a, b, _c)):
        with trio.fail_after(10):
            first = await a.rec.publish(config(1), wait=True, timeout=5)
            # b takes the next PUT, then its read-back times out
            b.unit.read_errors_after_put = [UnitUnreachable("timed out reading the answer")]
            second = await a.rec.publish(config(2), wait=True, timeout=5)
        reason = second.failed[b.peer_id]
        assert reason.startswith("verify_failed: ") and "previous config was restored" in reason
        assert b.unit.config == config(1) and b.rec.head.revision == first.revision
        last = b.rec.status()["last_error"]
        assert last["reason"] == "verify_failed" and last["revision"] == str(second.revision)


async def test_failure_reasons_name_their_reason_once_and_a_later_apply_clears_them(tmp_path):
    async with cluster(tmp_path) as (_, (a, b, _c)):
        with trio.fail_after(10):
            b.unit.reject_next = 1
            first = await a.rec.publish(config(1), wait=True, timeout=5)
            reason = first.failed[b.peer_id]
            assert reason.startswith("unit_rejected: Unit 400") and reason.count(
                "unit_rejected") == 1
            assert b.rec.status()["last_error"]["reason"] == "unit_rejected"
            second = await a.rec.publish(config(2), wait=True, timeout=5)
        assert second.converged
        assert b.rec.status()["last_error"] is None
        assert b.rec.store.load_last_error() is None  # and not back after a restart


async def test_in_sync_is_false_while_unit_is_unreachable(tmp_path):
    async with cluster(tmp_path) as (_, (a, _b, _c)):
        with trio.fail_after(10):
            await a.rec.publish(config(1), wait=True, timeout=5)
            assert a.rec.status()["local"]["in_sync"] is True
            a.unit.down = True
            await until(lambda: a.rec.status()["local"]["unit"] == "unreachable")
        assert a.rec.status()["local"]["in_sync"] is False
        assert a.rec.status()["local"]["digest"] == digest_of(config(1))  # last known, kept


async def test_a_peer_that_refuses_a_revision_as_too_large_tells_the_publisher(tmp_path):
    async with cluster(tmp_path) as (_, (a, b, c)):
        c.rec.admission.max_config_bytes = 100  # c's own, smaller cap
        big = {**config(1), "applications": {f"app{i}": {"type": "python"} for i in range(5)}}
        with trio.fail_after(10):
            result = await a.rec.publish(big, wait=True, timeout=5)
        assert list(result.failed) == [c.peer_id] and not result.pending
        assert result.failed[c.peer_id].endswith("bytes, max_config_bytes here is 100")
        assert c.unit.config == config(0) and c.rejected("too_large") >= 1
        assert b.unit.config == big




async def test_a_wait_on_a_revision_nobody_announced_is_refused(tmp_path):
    async with cluster(tmp_path) as (_, (a, _b, _c)):
        with trio.fail_after(10):
            result = await a.rec.publish(config(1), wait=True, timeout=5)
            again = await a.rec.wait_revision(result.revision, timeout=1)
            assert again.converged
            never = Revision(result.revision.counter + 5, a.peer_id)
            with pytest.raises(UnknownRevision):
                await a.rec.wait_revision(never, timeout=1)


async def test_peers_lists_allowlisted_peers_never_seen(tmp_path):
    async with cluster(tmp_path) as (_, (a, b, _c)):
        ghost = new_peer_id()
        a.rec.settings = a.rec.settings.replace(
            trusted_peers=(*a.rec.settings.trusted_peers, ghost))
        views = {v["peer_id"]: v for v in a.rec.peer_views()}
    assert views[ghost] == {"peer_id": ghost, "seen": False, "connected": False,
                            "trusted": True, "addrs": [], "head": None, "report": None}
    assert views[b.peer_id]["seen"] is True and a.peer_id not in views
