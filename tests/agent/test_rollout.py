"""Staged rollouts with real agent processes, each with an emulated Unit that serves its listener,
and a health gate that GETs a URL through it.

Each host keeps its own listener (``/listeners`` is excluded), so the emulators on one loopback do
not fight over a port; the routes are the mesh's. Wave order is the publisher, then the others by
peer ID, so the test knows before the agents start which host is in which wave and gives each its
gate. Every wait is bounded; convergence is awaited by polling the agents' own status.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from contextlib import asynccontextmanager

import pytest
import trio

from tests.agent.harness import Fleet
from tests.mesh.helpers import new_keypair, peer_id_of, start_node
from unit_p2p.fleet import free_ports
from unit_p2p.sync import wire
from unit_p2p.sync.revision import Document, Head
from unit_p2p.sync.waves import sign_wave

pytestmark = pytest.mark.slow

BASE_ROUTES = [{"match": {"uri": "/healthz"}, "action": {"return": 200}},
               {"action": {"return": 204}}]
# what the staged revision serves: /broken answers 500 (the second wave's gate checks it)
STAGED_ROUTES = [{"match": {"uri": "/broken"}, "action": {"return": 500}},
                 {"action": {"return": 200}}]


def site(routes) -> dict:
    return {"routes": routes, "applications": {}}


def full(port: int, routes) -> dict:
    return {"listeners": {f"127.0.0.1:{port}": {"pass": "routes"}}, "routes": routes,
            "applications": {}}


@asynccontextmanager
async def gated_fleet(tmp_path, n: int, gates: dict[int, tuple[str, ...]], trusted_extra=()):
    """``n`` agents in wave order (agent 0 publishes); ``gates[i]``: agent i's gate flags."""
    async with trio.open_nursery() as nursery:
        f = Fleet(tmp_path, nursery, n)
        f.topology("mesh")
        # wave order: agent 0, then by peer ID; reorder so that f[i] is the i-th in that order
        f.agents[1:] = sorted(f.agents[1:], key=lambda a: a.peer_id)
        ports = free_ports(n, 33000, 34000)
        for i, a in enumerate(f):
            a.http_port = ports[i]
            a.trusted += list(trusted_extra)
            path, *flags = gates.get(i, ("/healthz",))
            a.extra_args = ["--no-mdns", "--exclude", "/listeners",
                            "--health-url", f"http://127.0.0.1:{ports[i]}{path}",
                            "--health-attempts", "1", *flags]
        try:
            with f.log_tails_on_failure(6000):
                with trio.fail_after(90):
                    for a in f:
                        await f.start_unit(a, full(a.http_port, BASE_ROUTES))
                        a.start()
                    for a in f:
                        await a.wait_ready()
                yield f
        finally:
            f.stop()
            nursery.cancel_scope.cancel()


async def cli(agent, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "unit_p2p", *args, "--api", agent.api]
    return await trio.to_thread.run_sync(lambda: subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout))


async def publish_base(f) -> dict:
    base = await f[0].call("publish", config=site(BASE_ROUTES), http_timeout=60)
    await f.wait_converged(base["digest"])
    return base


async def until(check):
    """Poll ``check()`` (the agents' own state, in other processes) until it is truthy."""
    while not (value := await check()):  # noqa: ASYNC110 - polls other processes
        await trio.sleep(0.1)
    return value


async def routes_of(agent) -> list:
    return (await agent.unit.get("/config"))["routes"]


async def test_a_second_wave_failing_its_gate_halts_and_auto_revert_restores_the_first(
        tmp_path):
    async with gated_fleet(tmp_path, 3, {1: ("/broken",)}) as f:
        publisher, second, third = f
        with trio.fail_after(240):
            base = await publish_base(f)
            config_file = tmp_path / "staged.json"
            config_file.write_text(json.dumps(site(STAGED_ROUTES)))
            done = await cli(publisher, "publish", "--config-file", str(config_file),
                             "--stages", "1,2,100%", "--max-failures", "0", "--auto-revert",
                             "--wait", "--timeout", "60", "--json")
            assert done.returncode == 1, done.stderr  # halted, not complete
            result = json.loads(done.stdout)
            rollout = result["rollout"]
            assert (rollout["state"], rollout["wave"]) == ("halted", 2), rollout
            assert rollout["waves"][0]["applied"] == [publisher.peer_id]
            why = rollout["waves"][1]["failed"][second.peer_id]
            assert "health_gate: GET" in why and "answered 500" in why, why
            assert not rollout["waves"][2]["open"] and rollout["waves"][2]["applied"] == []
            # the revert: the previous config published again (the wait ends after it, so its
            # answer names it), everywhere
            reverted = rollout["reverted_by"]
            assert reverted, rollout
            assert (await publisher.call("rollout", result["revision"]))["reverted_by"] == reverted

            async def all_reverted():
                return all([(await a.call("status"))["head"]["revision"] == reverted
                            for a in f])
            await until(all_reverted)
            for a in f:
                assert await a.unit.get("/config") == full(a.http_port, BASE_ROUTES)
            # the third wave never applied the staged revision; the second did, then went back
            # (a host records its history just after it takes the head)
            async def history(agent):
                async def recorded():
                    listing = [r["revision"] for r in (await agent.call("revisions"))["revisions"]]
                    return listing if listing[0] == reverted else None
                return await until(recorded)
            assert await history(third) == [reverted, base["revision"]]
            assert await history(second) == [reverted, result["revision"], base["revision"]]
            # any host shows the rollout, wave by wave (the CLI's table)
            shown = await cli(third, "rollout", "status")
            assert shown.returncode == 0, shown.stderr
            assert "halted  wave 2 of 3" in shown.stdout and "answered 500" in shown.stdout


async def test_a_relaying_peer_cannot_widen_a_wave(tmp_path):
    relay_keys, outsider_keys = new_keypair(), new_keypair()
    relay_id = peer_id_of(relay_keys)
    async with gated_fleet(tmp_path, 3, {1: ("/broken",)}, trusted_extra=[relay_id]) as f, \
            trio.open_nursery() as nursery:
        publisher, _second, third = f
        with trio.fail_after(240):
            await publish_base(f)
            # explicit waves: the relay is a trusted peer the publisher knows of
            result = await publisher.call("publish", config=site(STAGED_ROUTES),
                                          stages=[[publisher.peer_id], [_second.peer_id],
                                                  "100%"],
                                          max_failures=0, wait=True, timeout=60,
                                          http_timeout=90)
            assert result["rollout"]["state"] == "halted", result["rollout"]
            rev = result["revision"]
            state = result["rollout"]
            # a trusted peer that relays, and tries to open the third wave
            relay = await start_node(nursery, keypair=relay_keys, mesh=third.mesh)
            await relay.mesh.connect(third.multiaddr)
            before = (await third.call("status"))["counters"]["rejected"]
            from unit_p2p.sync.revision import Revision

            revision = Revision.parse(rev)
            genuine = sign_wave(relay_keys.private_key, third.mesh, revision, result["digest"],
                                "halted", 2, state["seq"], relay_id, None)
            # altered: the signed "halted at wave 2" turned into "wave 3 open"
            altered = wire.Wave(third.mesh, revision, result["digest"], "open", 3,
                                state["seq"] + 1, None, relay_id, genuine.signature)
            # forged: signed by a key nobody trusts
            forged = sign_wave(outsider_keys.private_key, third.mesh, revision, result["digest"],
                               "complete", 3, state["seq"] + 1, peer_id_of(outsider_keys), None)
            # a widened plan: the same revision with another document (the relay cannot sign it
            # as the origin)
            widened = Document.from_config(site(STAGED_ROUTES), ()).with_members(rollout={
                "waves": [[publisher.peer_id, third.peer_id], ["*"]], "max_failures": 0,
                "auto_revert": False})
            head = Head(revision, widened.digest, widened.size, genuine.signature)
            for msg in (altered, forged, wire.Announce(third.mesh, head)):
                stream = await relay.mesh.open_stream(third.peer_id, wire.PROTO_NOTIFY)
                await stream.send_all(wire.encode(msg))
                await stream.close_write()
                await stream.close()
            counts = before
            while not (counts.get("bad_signature", 0) >= before.get("bad_signature", 0) + 2
                       and counts.get("untrusted_signer", 0) >= 1):
                await trio.sleep(0.1)
                counts = (await third.call("status"))["counters"]["rejected"]
            view = await third.call("rollout", rev)
            assert (view["state"], view["wave"]) == ("halted", 2)
            assert not view["waves"][2]["open"]
            assert await routes_of(third) == BASE_ROUTES
        nursery.cancel_scope.cancel()  # the relay's mesh


async def test_killing_the_publisher_mid_rollout_leaves_complete_configs_and_another_host_resumes(
        tmp_path):
    # the second wave's gate takes a while (8 tries a second apart): the publisher dies in it
    slow = ("/healthz", "--health-attempts", "8", "--health-interval", "1")
    async with gated_fleet(tmp_path, 3, {1: slow}) as f:
        publisher, second, third = f
        with trio.fail_after(240):
            await publish_base(f)
            result = await publisher.call("publish", config=site(STAGED_ROUTES),
                                          stages=[1, 2, "100%"], http_timeout=60)
            rev = result["revision"]
            # killed once the hosts know the second wave is open (killed between deciding and
            # telling, the rollout would stay at wave 1, waiting for the dead publisher's gate)
            async def second_wave_open():
                return all([(await a.call("rollout", rev))["wave"] >= 2 for a in f])
            await until(second_wave_open)
            publisher.kill(signal.SIGKILL)
            # every host holds a complete config, old or new, never a mix
            for a in f:
                config = await a.unit.get("/config")
                assert config in (full(a.http_port, BASE_ROUTES),
                                  full(a.http_port, STAGED_ROUTES)), config
            # where it stands is visible from any host
            view = await third.call("rollout", rev)
            assert (view["state"], view["wave"]) == ("open", 2), view
            assert await routes_of(third) == BASE_ROUTES
            # another trusted host resumes it: its driver asks the second wave directly
            resumed = await cli(third, "rollout", "resume", rev)
            assert resumed.returncode == 0, resumed.stderr
            async def complete():
                view = await third.call("rollout", rev)
                return view if view["state"] == "complete" else None
            view = await until(complete)
            assert view["moved_by"] == third.peer_id
            assert view["waves"][1]["applied"] == [second.peer_id]
            assert view["waves"][2]["applied"] == [third.peer_id]
            for a in (second, third):
                assert await routes_of(a) == STAGED_ROUTES
