"""A 1.5 MB configuration (20,000 routes) through Unit's unix control socket, on real agents.

The agents' emulated Units cut answers larger than the socket's send buffer, as Unit 1.35 does
(the printed 20,000-route configuration is 2.7 MB, so every whole read comes back short): the
agents must recognise the short answers, read the configuration in pieces and converge.
"""

from __future__ import annotations

import json

import pytest
import trio

from tests.agent.harness import BASE_CONFIG, running_fleet

pytestmark = pytest.mark.slow

ROUTES = 20000


def big_config() -> dict:
    table = [{"match": {"uri": f"/api/v1/items/{i:05d}/*", "method": "GET"},
              "action": {"return": 200 + i % 3}} for i in range(ROUTES)]
    return dict(BASE_CONFIG, routes=[*table, *BASE_CONFIG["routes"]])


async def test_a_big_config_converges_through_cut_unix_answers(tmp_path) -> None:
    config = big_config()
    assert len(json.dumps(config, separators=(",", ":"))) > 1_500_000
    async with running_fleet(tmp_path, 3, extra_args=["--no-mdns", "--unit-timeout", "60"]) as f:
        with trio.fail_after(600):
            result = await f[0].call("publish", config=config, wait=True, timeout=540,
                                     http_timeout=590)
        assert result["converged"], result
        with trio.fail_after(120):
            await f.wait_converged(result["digest"])
        for a in f:
            assert a.emulator.config == config
            with trio.fail_after(30):
                status = await a.call("status", http_timeout=20)
            assert status["local"]["in_sync"] is True, status
            assert not status["local"].get("unit_error"), status
        # The Units did cut answers: the agents read the configuration in pieces.
        assert sum(a.emulator.cut_answers for a in f) > 0
