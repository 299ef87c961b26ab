"""Drift between Unit and the head, with real agent processes and emulated Units: repaired by
default, reported (and never counted as applied) under ``on_drift: report``."""

from __future__ import annotations

import pytest
import trio

from tests.agent.harness import running_fleet
from tests.agent.test_convergence import config

pytestmark = pytest.mark.slow

EMPTY = {"listeners": {}, "routes": [], "applications": {}}


async def until_unit_holds(agent, expected) -> None:
    while await agent.unit.get("/config") != expected:  # noqa: ASYNC110 - another process
        await trio.sleep(0.1)


async def test_a_unit_reinstalled_empty_gets_the_mesh_config_back(tmp_path):
    async with running_fleet(tmp_path, 3, extra_args=["--no-mdns"]) as f:
        with trio.fail_after(60):
            result = await f[0].call("publish", config=config(1), wait=True, timeout=30,
                                     http_timeout=40)
            assert result["converged"]
            await f[2].unit.put("/config", EMPTY)  # what a reinstalled Unit holds
            await until_unit_holds(f[2], config(1))
            await f[1].unit.put("/config", config(8))  # edited by hand
            await until_unit_holds(f[1], config(1))
            status = await f[2].call("status")
        assert status["local"]["drift"] is None and status["local"]["in_sync"]
        assert status["head"]["revision"] == result["revision"]
        assert "unit_p2p_drift_repairs_total{result=\"ok\"} 1.0" in await f[2].call("metrics")


async def test_under_report_a_drifted_host_is_reported_failed_and_left_alone(tmp_path):
    async with running_fleet(tmp_path, 3, extra_args=["--no-mdns", "--on-drift", "report"]) as f:
        with trio.fail_after(60):
            result = await f[0].call("publish", config=config(1), wait=True, timeout=30,
                                     http_timeout=40)
            assert result["converged"]
            await f[1].unit.put("/config", config(8))
            while (await f[1].call("status"))["local"]["drift"] is None:  # noqa: ASYNC110
                await trio.sleep(0.1)
            waited = await f[0].call("wait", result["revision"], timeout=10, http_timeout=20)
            while f[1].peer_id not in waited["peers"]["failed"]:
                waited = await f[0].call("wait", result["revision"], timeout=1, http_timeout=20)
        assert waited["peers"]["failed"][f[1].peer_id].startswith("drift: ")
        assert not waited["converged"]
        assert await f[1].unit.get("/config") == config(8)
