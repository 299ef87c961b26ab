"""Real agent processes on loopback converge on one config.

Every wait is bounded; convergence is awaited by polling the agents' own status, never slept for.
"""

from __future__ import annotations

import collections
import signal

import pytest
import trio

from tests.agent.harness import BASE_CONFIG, running_fleet

pytestmark = pytest.mark.slow


def config(n: int) -> dict:
    return {"listeners": {}, "routes": [{"match": {"uri": f"/v{n}"}, "action": {"return": 200}}],
            "applications": {}}




async def test_publish_from_one_reaches_five_agents(tmp_path):
    async with running_fleet(tmp_path, 5, extra_args=["--no-mdns"]) as f:
        with trio.fail_after(60):
            result = await f[2].call("publish", config=config(1), wait=True, timeout=45,
                                     http_timeout=60)
        assert result["converged"], result
        assert len(result["peers"]["applied"]) == 5
        with trio.fail_after(30):
            await f.wait_converged(result["digest"])
            for a in f:
                assert await a.unit.get("/config") == config(1)
            again = await f[4].call("publish", wait=True, timeout=20, http_timeout=30)
        assert again["changed"] is False and again["revision"] == result["revision"]
        # The message counters see a publish at every layer, on both ends. (The first publish
        # may leave before gossipsub has a peer: the pushes carry it then, and gossip does not
        # send it later, as it has no IHAVE gossip; this one leaves once the mesh is up.)
        with trio.fail_after(30):
            # the sender's gossip mesh has a peer once it grafted one or was grafted
            while not await grafted(f[2]):  # noqa: ASYNC110 - polls another process
                await trio.sleep(0.2)
            result = await f[2].call("publish", config=config(2), wait=True, timeout=20,
                                     http_timeout=30)
            assert result["converged"], result
            sender = messages(await f[2].call("metrics", http_timeout=20))
            receiver = messages(await f[0].call("metrics", http_timeout=20))
        # a small config travels in the flood itself: a broadcast, no pull
        assert sender[("gossip", "broadcast", "sent")] >= 1
        assert sender[("gossipsub", "message", "sent")] >= 1
        assert receiver[("gossipsub", "message", "received")] >= 1
        assert receiver[("gossip", "broadcast", "received")] \
            + receiver[("notify", "broadcast", "received")] >= 1


async def grafted(agent) -> bool:
    counts = messages(await agent.call("metrics", http_timeout=20))
    return any(v for (proto, kind, _), v in counts.items()
               if (proto, kind) == ("gossipsub", "graft"))


def messages(metrics_text: str) -> dict[tuple[str, str, str], float]:
    """unit_p2p_messages_total samples by (protocol, kind, direction)."""
    import re

    out: dict[tuple[str, str, str], float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("unit_p2p_messages_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            out[(labels["protocol"], labels["kind"], labels["direction"])] = float(
                line.rsplit(" ", 1)[1])
    return collections.defaultdict(float, out)


async def test_star_topology_converges(tmp_path):
    # Every agent knows only agent 0; no mDNS, no DHT: the hub's direct pushes must carry it.
    async with running_fleet(tmp_path, 5, "star", extra_args=["--no-mdns", "--no-dht"]) as f:
        with trio.fail_after(60):
            result = await f[3].call("publish", config=config(2), wait=True, timeout=45,
                                     http_timeout=60)
            await f.wait_converged(result["digest"])
        assert result["converged"], result


async def test_killed_agent_catches_up_after_restart(tmp_path):
    async with running_fleet(tmp_path, 5, extra_args=["--no-mdns"]) as f:
        victim = f[4]
        victim.kill(signal.SIGKILL)
        with trio.fail_after(60):
            result = await f[0].call("publish", config=config(3), wait=True, timeout=5,
                                     http_timeout=20)
            assert victim.peer_id in result["peers"]["pending"]
            assert await victim.unit.get("/config") == BASE_CONFIG
            victim.start()
            await victim.wait_ready()
            await f.wait_converged(result["digest"])
        assert await victim.unit.get("/config") == config(3)


async def test_simultaneous_publishers_agree_on_one_winner(tmp_path):
    async with running_fleet(tmp_path, 5, extra_args=["--no-mdns"]) as f:
        results = {}

        async def publish(i, n):
            results[i] = await f[i].call("publish", config=config(n), http_timeout=20)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish, 0, 10)
                nursery.start_soon(publish, 3, 11)
            from unit_p2p.sync.revision import Revision

            winner = max(results.values(), key=lambda r: Revision.parse(r["revision"]))
            await f.wait_converged(winner["digest"])
            configs = [await a.unit.get("/config") for a in f]
        assert all(c == configs[0] for c in configs)


async def test_unit_rejection_on_one_node_is_reported_to_the_publisher(tmp_path):
    async with running_fleet(tmp_path, 5, extra_args=["--no-mdns"]) as f:
        bad = f[1]
        bad.emulator.fail_next_puts(1, status=500)
        with trio.fail_after(60):
            result = await f[0].call("publish", config=config(4), wait=True, timeout=30,
                                     http_timeout=45)
            assert not result["converged"]
            assert "unit_rejected" in result["peers"]["failed"][bad.peer_id]
            assert await bad.unit.get("/config") == BASE_CONFIG
            status = await bad.call("status")
        assert status["last_error"]["reason"] == "unit_rejected"
        assert status["head"] is None
        assert status["counters"]["apply_failed"] == 1


async def test_agent_started_before_its_unit_converges_when_unit_appears(tmp_path):
    async with running_fleet(tmp_path, 3, extra_args=["--no-mdns"], start=False) as f:
        late = f[2]
        with trio.fail_after(60):
            for a in f:
                if a is not late:
                    await f.start_unit(a)
                a.start()
            for a in f:
                await a.wait_ready()
            status = await late.call("status")
            assert status["local"]["unit"] == "unreachable"
            result = await f[0].call("publish", config=config(5), http_timeout=20)
            await f.wait_converged(result["digest"], agents=[f[0], f[1]])
            await f.start_unit(late)
            await f.wait_converged(result["digest"])
        assert await late.unit.get("/config") == config(5)


async def test_mdns_discovery_without_bootstrap(tmp_path):
    async with running_fleet(tmp_path, 3, extra_args=["--no-dht"], start=False) as f:
        for a in f:
            a.bootstrap = []
        with trio.fail_after(60):
            await f.start()
            while True:
                counts = [(await a.call("status"))["peers"]["connected"] for a in f]
                if all(c >= 2 for c in counts):
                    break
                await trio.sleep(0.2)
            result = await f[1].call("publish", config=config(6), wait=True, timeout=30,
                                     http_timeout=45)
        assert result["converged"], result
