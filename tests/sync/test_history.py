"""History, rollback and the blank / shrink publish guards, on the in-memory network of
test_reconciler."""

from __future__ import annotations

import dataclasses
import json

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from tests.sync.test_reconciler import Node, cluster, config, until
from unit_p2p.errors import PublishRefused, UnknownRevision
from unit_p2p.sync import changes
from unit_p2p.sync.history import HISTORY_KEPT, History
from unit_p2p.sync.revision import Head, Revision

BIG = {
    "listeners": {f"*:{8000 + i}": {"pass": "routes"} for i in range(4)},
    "routes": [{"match": {"uri": f"/{i}"}, "action": {"return": 200}} for i in range(4)],
    "applications": {f"app{i}": {"type": "python", "module": "wsgi"} for i in range(4)},
}


def without(section: str, keep: int) -> dict:
    """BIG with only the first ``keep`` items of ``section``."""
    out = json.loads(json.dumps(BIG))
    value = out[section]
    out[section] = value[:keep] if isinstance(value, list) else dict(list(value.items())[:keep])
    return out


async def test_history_lists_published_and_followed_revisions_with_what_changed(tmp_path):
    async with cluster(tmp_path) as (_, (a, b, _c)):
        with trio.fail_after(10):
            r1 = await a.rec.publish(config(1), wait=True, timeout=5)
            second = config(2)
            second["applications"] = {"api": {"type": "python", "module": "wsgi"}}
            r2 = await b.rec.publish(second, wait=True, timeout=5)
            assert r1.converged and r2.converged
            a_views = await a.rec.revisions.views()
            b_views = await b.rec.revisions.views()
        assert [v["revision"] for v in a_views] == [str(r2.revision), str(r1.revision)]
        newest, oldest = a_views
        assert newest["role"] == "followed" and newest["published_at"] is None
        assert oldest["role"] == "published" and oldest["published_at"] is not None
        assert newest["digest"] == r2.digest and newest["size"] == r2.size and newest["kept"]
        assert newest["previous"] == str(r1.revision)
        assert newest["summary"] == "routes ~1, applications +1"
        assert oldest["summary"].startswith("first known: listeners 1, routes 1")
        # the publisher heard every host's report
        assert b_views[0]["role"] == "published"
        assert b_views[0]["fleet"]["applied"] == 3 and b_views[0]["fleet"]["failed"] == 0
        assert b_views[0]["fleet"]["pending"] == 0


async def test_history_survives_a_restart_and_starts_from_an_older_state_dir(tmp_path):
    async with cluster(tmp_path, n=1) as (_, (a,)):
        with trio.fail_after(10):
            r1 = await a.rec.publish(config(1))
            r2 = await a.rec.publish(config(2))
    again = Node(a.mesh.net, tmp_path, "n0", a.keys, [a.peer_id], unit=a.unit)
    with trio.fail_after(10):
        await again.rec.load()
    assert [e.revision for e in again.rec.history.entries] == [str(r1.revision),
                                                               str(r2.revision)]
    # how the fleet took a replaced head outlives the reports, which are kept in memory only
    with trio.fail_after(10):
        views = await again.rec.revisions.views()
    assert views[1]["fleet"] == {"applied": 1, "failed": 0, "pending": 0, "moved_on": 0,
                                 "failed_peers": {}}
    assert views[0]["fleet"] is None
    # a state dir from before the history existed: its head is the first entry
    (tmp_path / "n0" / "history.json").unlink()
    older = Node(a.mesh.net, tmp_path, "n0", a.keys, [a.peer_id], unit=a.unit)
    with trio.fail_after(10):
        await older.rec.load()
    assert [e.revision for e in older.rec.history.entries] == [str(r2.revision)]


def test_the_history_keeps_a_bounded_number_of_entries(tmp_path):
    peer = ID.from_pubkey(create_new_key_pair().public_key).to_base58()
    history = History(tmp_path, peer)
    for n in range(1, HISTORY_KEPT + 6):
        history.record(Head(Revision(n, peer), "sha256:" + "0" * 64, 2, b""), float(n))
    assert len(history.entries) == HISTORY_KEPT
    assert history.entries[0].revision == f"6@{peer}"
    reread = History(tmp_path, peer)
    reread.load(None, None)
    assert reread.entries == history.entries


async def test_rollback_publishes_the_previous_document_as_a_new_revision(tmp_path):
    async with cluster(tmp_path) as (_, (a, b, c)):
        with trio.fail_after(10):
            r1 = await a.rec.publish(config(1), wait=True, timeout=5)
            r2 = await b.rec.publish(config(2), wait=True, timeout=5)
            # any host can roll back: c followed both
            target, back = await c.rec.rollback(wait=True, timeout=5)
        assert target == str(r1.revision)
        assert back.converged and back.changed
        assert back.revision.counter == r2.revision.counter + 1
        assert back.revision.origin == c.peer_id
        assert back.digest == r1.digest
        assert all(n.unit.config == config(1) for n in (a, b, c))
        views = await a.rec.revisions.views()
        assert [v["revision"] for v in views][:2] == [str(back.revision), str(r2.revision)]
        assert views[0]["summary"] == "routes ~1"
        # to a named revision, with a dry run first
        with trio.fail_after(10):
            _, dry = await a.rec.rollback(str(r2.revision), dry_run=True)
            assert dry.changed and dry.revision is None and a.unit.config == config(1)
            _, again = await a.rec.rollback(str(r2.revision.counter), wait=True, timeout=5)
        assert again.digest == r2.digest and all(n.unit.config == config(2) for n in (a, b, c))


async def test_rollback_of_an_unknown_or_pruned_revision_is_refused(tmp_path):
    async with cluster(tmp_path, n=1) as (_, (a,)):
        with trio.fail_after(10):
            with pytest.raises(UnknownRevision, match="no revision before its head"):
                await a.rec.rollback()
            r1 = await a.rec.publish(config(1))
            with pytest.raises(UnknownRevision, match="not in this host's history"):
                await a.rec.rollback(f"99@{a.peer_id}")
            await a.rec.publish(config(2))
            # the document is gone from the store (keep_configs pruned it)
            for path in (tmp_path / "n0" / "configs").glob(f"{r1.digest[7:]}.json"):
                path.unlink()
            with pytest.raises(UnknownRevision, match="no longer kept"):
                await a.rec.rollback(str(r1.revision))
        assert a.unit.config == config(2)


async def test_a_blank_config_is_refused_unless_forced(tmp_path):
    async with cluster(tmp_path) as (_, (a, b, c)):
        with trio.fail_after(10):
            first = await a.rec.publish(BIG, wait=True, timeout=5)
            blank = {"listeners": {}, "routes": [], "applications": {}}
            for dry_run in (True, False):
                with pytest.raises(PublishRefused) as refused:
                    await a.rec.publish(blank, dry_run=dry_run)
                assert refused.value.reason == "blank_config"
                assert "remove all of the head's 4 listeners, 4 routes, 4 applications" in str(
                    refused.value)
            assert a.unit.config == BIG and a.rec.head.revision == first.revision
            # what Unit holds, published without a config, passes the same guard
            a.unit.config = blank
            with pytest.raises(PublishRefused, match="blank_config"):
                await a.rec.publish(force=False)
            forced = await a.rec.publish(blank, force=True, wait=True, timeout=5)
        assert forced.converged and all(n.unit.config == blank for n in (a, b, c))


@pytest.mark.parametrize("section", ["listeners", "routes", "applications"])
async def test_a_config_removing_most_of_a_section_is_refused_naming_what_goes(tmp_path,
                                                                                 section):
    async with cluster(tmp_path, n=2) as (_, (a, b)):
        with trio.fail_after(10):
            await a.rec.publish(BIG, wait=True, timeout=5)
            half = await a.rec.publish(without(section, 2), wait=True, timeout=5)
            assert half.converged  # half of them: the default share allows it
            await a.rec.publish(BIG, wait=True, timeout=5)
            with pytest.raises(PublishRefused) as refused:
                await a.rec.publish(without(section, 1))
            assert refused.value.reason == "shrink"
            assert f"remove 3 of 4 {section}" in refused.value.detail
            assert "50%" in refused.value.detail
            assert a.unit.config == BIG and b.unit.config == BIG
            forced = await a.rec.publish(without(section, 1), force=True, wait=True, timeout=5)
        assert forced.converged and b.unit.config == without(section, 1)


async def test_the_removed_share_is_a_setting(tmp_path):
    async with cluster(tmp_path, n=1) as (_, (a,)):
        a.rec.settings = dataclasses.replace(a.settings, max_removed_share=0.25)
        with trio.fail_after(10):
            await a.rec.publish(BIG)
            with pytest.raises(PublishRefused, match="remove 2 of 4 applications"):
                await a.rec.publish(without("applications", 2))
            await a.rec.publish(without("applications", 3))


async def test_a_rollback_passes_the_same_guards(tmp_path):
    async with cluster(tmp_path, n=1) as (_, (a,)):
        with trio.fail_after(10):
            await a.rec.publish(without("routes", 1))
            await a.rec.publish(BIG)
            with pytest.raises(PublishRefused, match="remove 3 of 4 routes"):
                await a.rec.rollback()
            _, back = await a.rec.rollback(force=True)
        assert back.changed and a.unit.config == without("routes", 1)
        await until(lambda: a.rec.head.digest == back.digest)


def test_summary_names_added_removed_and_changed_items():
    old = {"listeners": {"*:80": {"pass": "routes"}}, "routes": {"main": [], "api": []},
           "applications": {"a": {"type": "php"}}, "upstreams": {"u": {}}}
    new = {"listeners": {"*:80": {"pass": "routes/main"}, "*:81": {"pass": "routes"}},
           "routes": {"main": []}, "applications": {"a": {"type": "php"}},
           "settings": {"http": {}}}
    assert changes.summary(old, new) == "listeners +1 ~1, routes -1, upstreams -1"
    assert changes.summary(new, new) == "same config"
    assert changes.summary({"settings": {}}, {"settings": {"x": 1}}) == "changed: settings"
    assert changes.summary(None, {}) == "first known: empty"
    assert changes.is_blank({"settings": {"http": {}}})
    assert not changes.is_blank({"routes": [{"action": {"return": 200}}]})
