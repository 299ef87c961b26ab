"""Fault tests on separate hosts: one agent per network namespace, each with
its own IP and its own emulated Unit, on bridges the test builds and removes itself.

Every wait is bounded; where the agent offers no event, its status is polled against a deadline.
The measured figures are printed (run with ``-s`` to see them) as ``MEASURED <name> ...``.
"""

from __future__ import annotations

import os
import random
import signal
from contextlib import asynccontextmanager

import pytest
import trio

from tests.netns.hosts import HostFleet, poll
from unit_p2p.sync.revision import Revision

pytestmark = [pytest.mark.netns, pytest.mark.slow]

# Generous bounds: the machine these run on may be heavily loaded; the real times are printed.
START_BOUND = 90
BOUND = 90


def config(tag: str, routes: int = 3) -> dict:
    return {"listeners": {},
            "routes": [{"match": {"uri": f"/{tag}/{i}"}, "action": {"return": 200}}
                       for i in range(routes)],
            "applications": {}}


#: the agent's warning when liveness gives up on a peer
DROP_LINE = "pings; dropping its connection"


def measured(name: str, **values) -> None:
    print(f"MEASURED {name} " + " ".join(f"{k}={v}" for k, v in values.items()), flush=True)


def elapsed(since: float) -> float:
    return round(trio.current_time() - since, 2)


@asynccontextmanager
async def hosts(tmp_path, network, *, extra_args=("--no-mdns",), topology: str | None = "full"):
    """Start one agent (and its Unit) per host; on failure print every agent's log tail.

    ``topology``: "full" (every agent knows every other's address), "mesh" or "star" (as
    Fleet.topology), None (no bootstrap list)."""
    async with trio.open_nursery() as nursery:
        fleet = HostFleet(tmp_path, nursery, network)
        if topology == "full":
            fleet.bootstrap_all()
        elif topology:
            fleet.topology(topology)
        for a in fleet:
            a.extra_args = list(extra_args)
        try:
            with trio.fail_after(START_BOUND):
                await fleet.start()
            yield fleet
        except BaseException:
            for a in fleet:
                print(f"----- agent {a.index} ({a.host.ip}) log tail -----\n{a.log_tail()}")
            raise
        finally:
            fleet.stop()
            nursery.cancel_scope.cancel()


async def peer_connected(observer, peer_id: str) -> bool | None:
    for p in (await observer.call("peers"))["peers"]:
        if p["peer_id"] == peer_id:
            return p["connected"]
    return None


# --- (a) partition 3/3 and heal -------------------------------------------------------------


async def test_split_three_three_heals_to_the_higher_revision(tmp_path, make_network):
    net = make_network([0, 0, 0, 1, 1, 1])
    # Every host knows every other's address, as the Ansible role writes them.
    async with hosts(tmp_path, net, topology="full") as f:
        left, right = f.agents[:3], f.agents[3:]
        with trio.fail_after(BOUND):
            await f.wait_connected(5)
            base = await f[0].call("publish", config=config("base"), wait=True, timeout=60,
                                   http_timeout=75)
        assert base["converged"], f"{base['peers']}"
        # Nothing failed yet, so any liveness drop so far hit a healthy link. Reported, not
        # asserted: on a 2-core box at load 30-50 a few still happen with 5 s ping timeouts
        # (with 2 s timeouts it was dozens a minute); the partition and heal below must work
        # regardless.
        healthy_drops = sum(a.log_tail(10**8).count(DROP_LINE) for a in f)

        await net.split()
        cut = trio.current_time()
        with trio.fail_after(BOUND):
            await f.wait_connected(2)  # each half dropped the other (liveness), kept its own
        noticed = elapsed(cut)

        with trio.fail_after(BOUND):
            sides = {}
            for name, agents, origin in (("left", left, f[0]), ("right", right, f[3])):
                sides[name] = await origin.call("publish", config=config(name), http_timeout=30)
                await f.wait_converged(sides[name]["digest"], agents)
            # both sides really diverged before the heal
            assert await f.converged_on(sides["left"]["digest"], left)
            assert await f.converged_on(sides["right"]["digest"], right)
        winner_name = max(sides, key=lambda s: Revision.parse(sides[s]["revision"]))
        winner = sides[winner_name]
        assert sides["left"]["revision"] != sides["right"]["revision"]

        await net.join()
        healed = trio.current_time()
        with trio.fail_after(BOUND):
            await f.wait_converged(winner["digest"])
        heal_to_converged = elapsed(healed)
        with trio.fail_after(BOUND):
            for a in f:
                status = await a.call("status")
                assert status["head"]["revision"] == winner["revision"]
                assert await a.unit.get("/config") == config(winner_name)
        measured("split_3_3", healthy_drops_before_split=healthy_drops,
                 partition_noticed_s=noticed, heal_to_converged_s=heal_to_converged,
                 winner=winner_name, revisions=f"{sides['left']['revision'][:12]}|"
                 f"{sides['right']['revision'][:12]}")


# --- (b) SIGKILL while applying -------------------------------------------------------------

KILLS = 10
BIG_ROUTES = 1500  # ~100 KB of config: pull, PUT and read-back take long enough to be hit


async def test_sigkill_while_applying_never_leaves_a_partial_config(tmp_path, make_network):
    seed = int.from_bytes(os.urandom(4))
    rng = random.Random(seed)
    net = make_network([0, 0])
    async with hosts(tmp_path, net) as f:
        publisher, victim = f[0], f[1]
        with trio.fail_after(BOUND):
            await f.wait_connected(1)
            # How long one apply of a big config takes on the victim, publish to head, so the
            # kill points can be spread over the whole apply.
            old = config("k0", BIG_ROUTES)
            sent = trio.current_time()
            first = await publisher.call("publish", config=old, http_timeout=30)
            await f.wait_converged(first["digest"], [victim])
            window = trio.current_time() - sent
        outcomes = {"old": 0, "new": 0}
        phases: list[str] = []
        restarts: list[float] = []
        for k in range(1, KILLS + 1):
            new = config(f"k{k}", BIG_ROUTES)
            puts_before = victim.emulator.put_count
            delay = rng.uniform(0, window * 1.2)
            with trio.fail_after(BOUND):
                sent = trio.current_time()
                result = await publisher.call("publish", config=new, http_timeout=30)
            # The random kill point is the experiment itself, not a wait for an event.
            await trio.sleep_until(sent + delay)
            victim.kill(signal.SIGKILL)
            with trio.fail_after(BOUND):
                held = await victim.unit.get("/config")
            assert held in (old, new), f"kill {k}: Unit holds a config that is neither"
            outcome = "old" if held == old else "new"
            outcomes[outcome] += 1
            puts = victim.emulator.put_count - puts_before

            started = trio.current_time()
            victim.start()
            with trio.fail_after(BOUND):
                await victim.wait_ready()
                loaded = victim.log_tail(200_000)
                await f.wait_converged(result["digest"], [victim])
                assert await victim.unit.get("/config") == new
            restarts.append(elapsed(started))
            if outcome == "old":
                phase = "before-put" if puts == 0 else "put-refused-or-cut"
            else:
                phase = ("after-head-saved" if f"loaded head {result['revision']}" in loaded
                         else "after-put-before-head")
            phases.append(f"{delay:.2f}s:{phase}")
            old = new
        measured("sigkill_while_applying", kills=KILLS, partial_configs=0, seed=seed,
                 apply_window_s=round(window, 2), held_old=outcomes["old"],
                 held_new=outcomes["new"], restart_to_converged_max_s=max(restarts))
        print("kill points:", ", ".join(phases))


# --- (c) Unit down for a while --------------------------------------------------------------


async def test_unit_down_is_reported_and_caught_up(tmp_path, make_network):
    net = make_network([0, 0])
    async with hosts(tmp_path, net) as f:
        publisher, host = f[0], f[1]
        with trio.fail_after(BOUND):
            await f.wait_connected(1)
            await host.emulator.stop_listening()
            down = trio.current_time()

            async def reported_unreachable():
                return (await host.call("status"))["local"]["unit"] == "unreachable"

            await poll(reported_unreachable)
            noticed = elapsed(down)
            result = await publisher.call("publish", config=config("while-down"),
                                          http_timeout=30)

            async def knows_but_cannot_apply():
                status = await host.call("status")
                return (result["revision"] in status["pending"]
                        and (status["last_error"] or {}).get("reason") == "unit_unreachable")

            await poll(knows_but_cannot_apply)
            health = await host.call("healthz")
            status = await host.call("status")
        assert host.proc.poll() is None, "the agent must keep running while Unit is down"
        assert health["ok"] is True and health["unit"] == "unreachable"
        assert status["head"] is None

        with trio.fail_after(BOUND):
            await host.emulator.start_listening()
            back = trio.current_time()
            await f.wait_converged(result["digest"], [host])
            catch_up = elapsed(back)
            assert await host.unit.get("/config") == config("while-down")
            status = await host.call("status")
        assert status["local"]["unit"] == "reachable" and status["local"]["in_sync"]
        measured("unit_down", unreachable_reported_s=noticed, catch_up_after_unit_back_s=catch_up)


# --- (d) a peer vanishes without closing ----------------------------------------------------


async def test_vanished_peer_is_dropped_and_comes_back(tmp_path, make_network):
    net = make_network([0, 0, 0])
    async with hosts(tmp_path, net) as f:
        gone, others = f[2], f.agents[:2]
        with trio.fail_after(BOUND):
            await f.wait_connected(2)
        await net.cut(gone.index)
        cut = trio.current_time()
        drops = {}

        async def watch(observer):
            async def dropped():
                return await peer_connected(observer, gone.peer_id) is False

            await poll(dropped)
            drops[observer.index] = elapsed(cut)

        with trio.fail_after(BOUND):
            async with trio.open_nursery() as nursery:
                for a in others:
                    nursery.start_soon(watch, a)
            assert await f.connected_counts(others) == [1, 1]
            # the survivors still work together while it is away
            result = await f[0].call("publish", config=config("while-cut"), wait=True,
                                     timeout=30, require_all=False, min_peers=1,
                                     http_timeout=45)
            assert f[1].peer_id in result["peers"]["applied"]
            assert gone.peer_id in result["peers"]["pending"]

        await net.heal(gone.index)
        healed = trio.current_time()
        with trio.fail_after(BOUND):
            await f.wait_connected(2)
            reconnected = elapsed(healed)
            await f.wait_converged(result["digest"])
            caught_up = elapsed(healed)
        measured("vanished_peer", dropped_after_s=max(drops.values()),
                 per_observer=drops, reconnected_after_heal_s=reconnected,
                 converged_after_heal_s=caught_up)


# --- (e) mDNS across the bridge -------------------------------------------------------------


async def test_mdns_discovery_across_the_bridge(tmp_path, make_network):
    net = make_network([0, 0, 0])
    # no bootstrap list and no DHT: only multicast DNS on the bridge can introduce them
    async with hosts(tmp_path, net, extra_args=["--mdns", "--no-dht"], topology=None) as f:
        assert all(a.bootstrap == [] for a in f)
        ready = trio.current_time()
        with trio.fail_after(BOUND):
            await f.wait_connected(2)
            discovered = elapsed(ready)
            for a in f:
                for p in (await a.call("peers"))["peers"]:
                    assert p["connected"] and p["trusted"]
                    assert any(addr.startswith("/ip4/10.213.0.") for addr in p["addrs"]), p
            result = await f[1].call("publish", config=config("mdns"), wait=True, timeout=45,
                                     http_timeout=60)
        assert result["converged"], result
        measured("mdns_discovery", all_connected_after_ready_s=discovered)

