"""``unit-p2p demo``: a real mesh of N agent processes on loopback, each with an emulated Unit.

What it shows, end to end: N agents (separate processes, Noise-encrypted libp2p between them,
each trusting exactly the others) start with the same routes but their own listener port (the
``/listeners`` exclusion keeps that part host-local). Node 0's Unit gets a new config, node 0
publishes, and every node pulls it, applies it to its own Unit and reports back. The demo exits 0
once every node holds the published digest, and prints a JSON summary as its last line.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from unit_p2p.api.client import AgentUnreachable
from unit_p2p.errors import ApiError
from unit_p2p.unit.client import AsyncUnitClient


@dataclass
class Node:
    index: int
    dir: Path
    port: int
    peer_id: str
    unit_sock: Path
    api_sock: Path
    proc: subprocess.Popen | None = None
    unit: AsyncUnitClient = field(init=False)

    def __post_init__(self) -> None:
        self.unit = AsyncUnitClient(f"unix:{self.unit_sock}")

    @property
    def api(self) -> str:
        return f"unix:{self.api_sock}"

    @property
    def multiaddr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{self.peer_id}"


def free_ports(count: int, low: int = 20000, high: int = 32000) -> list[int]:
    """Free TCP ports below the kernel's ephemeral range (whose ports outgoing connections may
    take at any moment), checked by binding."""
    ports: list[int] = []
    for _ in range(count * 50):
        port = random.randrange(low, high)
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError("no free ports")


def initial_config(listen_port: int, version: str) -> dict:
    return {
        "listeners": {f"127.0.0.1:{listen_port}": {"pass": "routes"}},
        "routes": [
            {"match": {"uri": "/version"}, "action": {"return": 200}},
            {"match": {"uri": "/old"}, "action": {"return": 301, "location": f"/{version}"}},
        ],
        "applications": {},
    }


def agent_command(node: Node, nodes: list[Node], bootstrap: list[Node], mesh: str) -> list[str]:
    cmd = [sys.executable, "-m", "unit_p2p", "agent",
           "--mesh", mesh,
           "--listen", f"/ip4/127.0.0.1/tcp/{node.port}",
           "--unit", f"unix:{node.unit_sock}",
           "--api", node.api,
           "--state-dir", str(node.dir / "state"),
           "--key", str(node.dir / "identity.key"),
           "--no-mdns",
           "--exclude", "/listeners",
           "--announce-interval", "5",
           "--trust", "allowlist"]
    for other in nodes:
        if other is not node:
            cmd += ["--trusted-peer", other.peer_id]
    for b in bootstrap:
        cmd += ["--bootstrap", b.multiaddr]
    return cmd


def bootstrap_peers(i: int, nodes: list[Node], topology: str) -> list[Node]:
    if topology == "star":
        return [] if i == 0 else [nodes[0]]
    # each node knows the two before it: a connected random-ish mesh, no hub
    return [nodes[j] for j in {(i - 1) % len(nodes), (i - 2) % len(nodes)} if j != i]


async def _api(node: Node, method: str, *args, **kwargs):
    from unit_p2p.api.client import ApiClient

    def call():
        with ApiClient(node.api, timeout=kwargs.pop("http_timeout", 10.0)) as client:
            return getattr(client, method)(*args, **kwargs)

    return await trio.to_thread.run_sync(call, abandon_on_cancel=True)


async def wait_ready(node: Node, deadline: float) -> None:
    while True:
        if node.proc and node.proc.poll() is not None:
            log = (node.dir / "agent.log").read_text()[-2000:]
            raise RuntimeError(f"node {node.index} exited with {node.proc.returncode}:\n{log}")
        try:
            await _api(node, "healthz", http_timeout=2.0)
            return
        except (AgentUnreachable, ApiError):
            if trio.current_time() > deadline:
                raise RuntimeError(f"node {node.index} did not come up") from None
            await trio.sleep(0.1)


def spawn(cmd: list[str], log_path: Path, env: dict) -> subprocess.Popen:
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def say(text: str) -> None:
    print(text, flush=True)


async def demo(n: int, timeout: float, topology: str, workdir: Path) -> int:
    from unit_p2p.identity import load_or_create_identity, peer_id_of
    from unit_p2p.unit.emulator import UnitEmulator

    mesh = f"demo-{os.getpid()}"
    ports = free_ports(2 * n)
    nodes = []
    for i in range(n):
        d = workdir / f"node{i}"
        d.mkdir(parents=True)
        peer_id = peer_id_of(load_or_create_identity(d / "identity.key", create=True))
        nodes.append(Node(i, d, ports[i], peer_id, d / "unit.sock", d / "api.sock"))

    say(f"starting {n} emulated Units and {n} agents on loopback ({topology}) in {workdir}")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    async with trio.open_nursery() as nursery:
        emulators = []
        for node in nodes:
            emu = UnitEmulator(f"unix:{node.unit_sock}")
            await nursery.start(emu.serve)
            emulators.append(emu)
        for node, port in zip(nodes, ports[n:], strict=True):
            await node.unit.put(
                "/config", initial_config(port, "v1"))
        try:
            for i, node in enumerate(nodes):
                cmd = agent_command(node, nodes, bootstrap_peers(i, nodes, topology), mesh)
                node.proc = spawn(cmd, node.dir / "agent.log", env)
            deadline = trio.current_time() + 30
            for node in nodes:
                await wait_ready(node, deadline)
            say(f"all {n} agents up; node 0 is {nodes[0].peer_id}")

            new = initial_config(ports[n], "v2")
            new["routes"].insert(0, {"match": {"uri": "/hello"},
                                     "action": {"return": 200}})
            say("node 0: applying a new config to its Unit and publishing it")
            started = time.monotonic()
            result = await _api(nodes[0], "publish", config=new, wait=True, timeout=timeout,
                                http_timeout=timeout + 10)
            elapsed_ms = (time.monotonic() - started) * 1000
            say(f"published {result['revision']} digest {result['digest']}")

            converged = 0
            for node in nodes:
                status = await _api(node, "status")
                head = status.get("head") or {}
                ok = head.get("digest") == result["digest"] and status["local"]["in_sync"]
                converged += ok
                unit_cfg = await node.unit.get("/config")
                listener = next(iter(unit_cfg.get("listeners", {})), "-")
                say(f"  node {node.index}  {'applied' if ok else 'NOT applied'}  "
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
            for node in nodes:
                if node.proc and node.proc.poll() is None:
                    node.proc.send_signal(signal.SIGTERM)
            for node in nodes:
                if node.proc:
                    try:
                        await trio.to_thread.run_sync(node.proc.wait, 10)
                    except subprocess.TimeoutExpired:
                        node.proc.kill()
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
