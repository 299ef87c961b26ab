"""What an apply reads from Unit: only the host-local values while Unit holds the head, and a cut
answer (Unit 1.35 on a unix socket, for a big config) is neither an outage nor a rejected
revision. The Unit watch reads when a cluster starts and then waits seconds, so every read these
tests see is the apply's."""

from __future__ import annotations

import trio

from tests.sync.fakes import FakeUnit
from tests.sync.test_reconciler import cluster, config
from unit_p2p.errors import UnitShortAnswer


async def test_a_cut_answer_before_the_put_is_retried_and_never_called_unreachable(tmp_path):
    async with cluster(tmp_path) as (_, (a, b, _c)):
        b.unit.read_errors = [UnitShortAnswer("Unit sent 212992 of 1500000 bytes",
                                              received=212992, expected=1500000)]
        with trio.fail_after(15):
            result = await a.rec.publish(config(1), wait=True, timeout=12)
        assert result.converged and b.unit.config == config(1)
        assert b.rec.status()["local"]["unit"] == "reachable"
        assert b.metrics.applies_count("failed") == 0 and not b.unit.read_errors


async def test_an_apply_over_the_head_reads_only_the_host_local_values(tmp_path):
    async with cluster(tmp_path, exclusions=("/listeners",)) as (_, (a, b, _c)):
        shared = {k: v for k, v in config(1).items() if k != "listeners"}
        with trio.fail_after(10):
            await a.rec.publish(shared, wait=True, timeout=5)
            # b's own listeners change by hand: host-local, not drift, and must survive
            mine = {"127.0.0.1:9999": {"pass": "routes"}}
            b.unit.config["listeners"] = mine
            b.unit.reads.clear()
            second = {**shared, "routes": [{"action": {"return": 299}}]}
            result = await a.rec.publish(second, wait=True, timeout=5)
        assert result.converged
        assert b.unit.config == {**second, "listeners": mine}
        # the excluded value by its own path, then the read-back: one whole read, not two
        assert b.unit.reads == ["/config/listeners", "/config"]


class SlowPut(FakeUnit):
    """Takes its PUT only when the test lets it."""

    def __init__(self, config):
        super().__init__(config)
        self.go = trio.Event()
        self.putting = trio.Event()

    async def put(self, path, value):
        self.putting.set()
        await self.go.wait()
        return await super().put(path, value)


async def test_a_fetched_document_is_offered_before_this_host_applies_it(tmp_path):
    async with cluster(tmp_path) as (net, (a, b, c)):
        net.cut.add(frozenset((a.peer_id, c.peer_id)))  # c hears of it only from b
        net.gossip_enabled = False
        b.unit.__class__ = SlowPut
        b.unit.go, b.unit.putting = trio.Event(), trio.Event()
        with trio.fail_after(15):
            result = await a.rec.publish(config(1))
            await b.unit.putting.wait()
            # b's Unit has not taken it yet, but c already pulled it from b and applied it
            while c.unit.config != config(1):  # noqa: ASYNC110 - another fake's state
                await trio.sleep(0.01)
            waiting = await a.rec.wait_revision(result.revision, timeout=0.2)
            assert b.peer_id in waiting.pending  # b offered it: that is not "applied"
            b.unit.go.set()
            done = await a.rec.wait_revision(result.revision, timeout=10)
        assert done.converged and b.unit.config == config(1)
