"""A cut answer from Unit (Unit 1.35 on a unix socket, for a big config) is not an outage and not
a rejected revision: the apply is tried again and Unit is reported reachable."""

from __future__ import annotations

import trio

from tests.sync.fakes import FakeUnit
from tests.sync.test_reconciler import cluster, config
from unit_p2p.errors import UnitShortAnswer


class CutsAnswers(FakeUnit):
    """Cuts its next answers to reads, as Unit 1.35 does on a unix socket for big configs."""

    short = 0

    async def get(self, path="/config"):
        if self.short:
            self.short -= 1
            raise UnitShortAnswer("Unit sent 212992 of 1500000 bytes", path=path,
                                  received=212992, expected=1500000)
        return await super().get(path)


async def test_a_cut_answer_before_the_put_is_retried_and_never_called_unreachable(tmp_path):
    async with cluster(tmp_path) as (_, (a, b, _c)):
        b.unit.__class__ = CutsAnswers
        # The watch read Unit when the cluster started and waits seconds for the next read:
        # the next read is the apply's read of the current config.
        b.unit.short = 1
        with trio.fail_after(15):
            result = await a.rec.publish(config(1), wait=True, timeout=12)
        assert result.converged and b.unit.config == config(1)
        assert b.rec.status()["local"]["unit"] == "reachable"
        assert b.metrics.applies_count("failed") == 0 and b.unit.short == 0
