"""``unit-p2p demo``: a real mesh of N agent processes on loopback, each with an emulated Unit.

What it shows, end to end: N agents (separate processes, Noise-encrypted libp2p between them,
each trusting exactly the others) start with the same routes but their own listener port (the
``/listeners`` exclusion keeps that part host-local). Node 0's Unit gets a new config, node 0
publishes, and every node pulls it, applies it to its own Unit and reports back. The demo exits 0
once every node holds the published digest, and prints a JSON summary as its last line.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio

from unit_p2p.fleet import Fleet, free_ports

# The demo's agents: no mDNS (loopback), the listeners stay host-local (each node has its own
# port), and a shorter announce interval than the default so a missed announcement is repaired
# while the demo still waits.
DEMO_AGENT_ARGS = ("--no-mdns", "--exclude", "/listeners", "--announce-interval", "5")
START_TIMEOUT = 30.0


def initial_config(listen_port: int, version: str) -> dict:
    return {
        "listeners": {f"127.0.0.1:{listen_port}": {"pass": "routes"}},
        "routes": [
            {"match": {"uri": "/version"}, "action": {"return": 200}},
            {"match": {"uri": "/old"}, "action": {"return": 301, "location": f"/{version}"}},
        ],
        "applications": {},
    }


def say(text: str) -> None:
    print(text, flush=True)


async def demo(n: int, timeout: float, topology: str, workdir: Path) -> int:
    ports = free_ports(n)  # Unit's own listeners, one per node (the agents get theirs)
    say(f"starting {n} emulated Units and {n} agents on loopback ({topology}) in {workdir}")
    async with trio.open_nursery() as nursery:
        fleet = Fleet(workdir, nursery, n, mesh="demo", agent_args=DEMO_AGENT_ARGS)
        fleet.topology(topology)
        try:
            for a, port in zip(fleet, ports, strict=True):
                await fleet.start_unit(a, initial_config(port, "v1"))
            try:
                with trio.fail_after(START_TIMEOUT):
                    await fleet.start(units=False)
            except trio.TooSlowError:
                raise RuntimeError(f"the agents did not come up within {START_TIMEOUT:.0f} s; "
                                   f"logs in {workdir}/a*/agent.log") from None
            say(f"all {n} agents up; node 0 is {fleet[0].peer_id}")

            new = initial_config(ports[0], "v2")
            new["routes"].insert(0, {"match": {"uri": "/hello"},
                                     "action": {"return": 200}})
            say("node 0: applying a new config to its Unit and publishing it")
            started = time.monotonic()
            result = await fleet[0].call("publish", config=new, wait=True, timeout=timeout,
                                         http_timeout=timeout + 10)
            elapsed_ms = (time.monotonic() - started) * 1000
            say(f"published {result['revision']} digest {result['digest']}")

            converged = 0
            for a in fleet:
                status = await a.call("status")
                head = status.get("head") or {}
                ok = head.get("digest") == result["digest"] and status["local"]["in_sync"]
                converged += ok
                unit_cfg = await a.unit.get("/config")
                listener = next(iter(unit_cfg.get("listeners", {})), "-")
                say(f"  node {a.index}  {'applied' if ok else 'NOT applied'}  "
                    f"head {head.get('revision', 'none')}  routes {len(unit_cfg['routes'])}  "
                    f"own listener {listener}")
            summary = {"nodes": n, "converged": converged, "revision": result["revision"],
                       "digest": result["digest"],
                       "publish_to_all_applied_ms": round(elapsed_ms, 1)}
            if converged != n:
                failed = result["peers"]["failed"]
                pending = result["peers"]["pending"]
                say(f"not converged within {timeout:.0f} s: failed={failed} pending={pending}")
            else:
                say(f"all {n} nodes converged in {elapsed_ms:.0f} ms")
            say(json.dumps(summary))
            return 0 if converged == n else 1
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(fleet.stop, 10.0)
            nursery.cancel_scope.cancel()


def run_demo(nodes: int, *, timeout: float = 60.0, topology: str = "mesh",
             keep_dir: Path | None = None) -> int:
    if nodes < 2:
        print("unit-p2p demo: --nodes must be at least 2", file=sys.stderr)
        return 2
    workdir = keep_dir or Path(tempfile.mkdtemp(prefix="unit-p2p-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return trio.run(demo, nodes, timeout, topology, workdir)
    except RuntimeError as exc:
        print(f"unit-p2p demo: {exc}", file=sys.stderr)
        print(json.dumps({"nodes": nodes, "converged": 0, "revision": None, "digest": None,
                          "publish_to_all_applied_ms": None, "error": str(exc)[:200]}))
        return 1
    finally:
        if keep_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
