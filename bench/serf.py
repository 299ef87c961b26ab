"""HashiCorp Serf as the baseline: N ``serf agent`` processes on loopback, user events timed
from ``serf event`` to every agent's event handler.

The handler is a bash script that stamps ``$EPOCHREALTIME`` (no fork) before it reads the
payload, and appends ``<payload> <time>`` to one file per node: the time is when Serf ran the
handler, which is what a user's handler would see.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from bench.common import stop_processes
from unit_p2p.fleet import free_ports

HANDLER = """#!/bin/bash
t=$EPOCHREALTIME
read -r payload || true
printf '%s %s\\n' "$payload" "$t" >> "{events}/$SERF_SELF_NAME"
"""


class SerfMissing(RuntimeError):
    pass


def ensure_serf() -> str:
    """The ``serf`` binary; installs Debian's package when it is missing (needs root)."""
    path = shutil.which("serf")
    if path:
        return path
    print("serf not found: installing Debian's serf package", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "serf"],
                          env=env, capture_output=True, text=True)
    path = shutil.which("serf")
    if done.returncode != 0 or not path:
        raise SerfMissing(f"could not install serf (apt-get exit {done.returncode}): "
                          f"{(done.stderr or done.stdout)[-500:]}")
    return path


def serf_version(serf: str) -> str:
    out = subprocess.run([serf, "version"], capture_output=True, text=True, timeout=10).stdout
    pkg = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "serf"], capture_output=True,
                         text=True).stdout
    first = out.splitlines()[0] if out else "?"
    return f"{first} (Debian package {pkg})" if pkg else first


@dataclass
class SerfNode:
    index: int
    port: int
    rpc_port: int
    join: list[int] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return f"s{self.index}"

    @property
    def rpc(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"


class SerfCluster:
    def __init__(self, serf: str, workdir: Path, n: int, kind: str, rng: random.Random):
        self.serf = serf
        self.dir = workdir
        self.events = workdir / "events"
        self.events.mkdir()
        self.handler = workdir / "handler.sh"
        self.handler.write_text(HANDLER.format(events=self.events))
        self.handler.chmod(0o755)
        ports = free_ports(2 * n)
        self.nodes = [SerfNode(i, ports[i], ports[n + i]) for i in range(n)]
        for node in self.nodes[1:]:
            if kind == "star":
                node.join = [self.nodes[0].port]
            else:
                earlier = list(range(node.index))
                node.join = [self.nodes[j].port for j in
                             rng.sample(earlier, min(len(earlier), rng.choice((2, 3))))]

    def command(self, node: SerfNode) -> list[str]:
        cmd = [self.serf, "agent", f"-node={node.name}", f"-bind=127.0.0.1:{node.port}",
               f"-rpc-addr={node.rpc}", f"-event-handler=user:bench={self.handler}",
               "-log-level=warn"]
        # -retry-join: the nodes start together, and -join exits if its peer is not up yet
        return cmd + ["-retry-interval=1s"] + [f"-retry-join=127.0.0.1:{p}" for p in node.join]

    def start(self) -> None:
        for node in self.nodes:
            with open(self.dir / f"{node.name}.log", "wb") as log:
                node.proc = subprocess.Popen(self.command(node), stdout=log,
                                             stderr=subprocess.STDOUT)

    def stop(self) -> None:
        stop_processes([n.proc for n in self.nodes if n.proc])

    def alive_members(self, node: SerfNode) -> int | None:
        if node.proc and node.proc.poll() is not None:
            log = (self.dir / f"{node.name}.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"serf node {node.index} exited {node.proc.returncode}: {log}")
        done = subprocess.run([self.serf, "members", f"-rpc-addr={node.rpc}", "-status=alive"],
                              capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            return None
        return sum(1 for line in done.stdout.splitlines() if line.strip())

    async def wait_formed(self) -> None:
        """Until every node sees all N alive; bound the caller with fail_after."""
        n = len(self.nodes)
        limiter = trio.CapacityLimiter(4)
        pending = list(self.nodes)
        while pending:
            counts: dict[int, int | None] = {}

            async def one(node: SerfNode, counts=counts) -> None:
                counts[node.index] = await trio.to_thread.run_sync(
                    self.alive_members, node, limiter=limiter)

            async with trio.open_nursery() as nursery:
                for node in pending:
                    nursery.start_soon(one, node)
            pending = [nd for nd in pending if counts.get(nd.index) != n]
            if pending:
                await trio.sleep(0.5)

    def send_event(self, node: SerfNode, payload: str) -> None:
        done = subprocess.run([self.serf, "event", f"-rpc-addr={node.rpc}", "-coalesce=false",
                               "bench", payload], capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            raise RuntimeError(f"serf event failed: {done.stderr.strip() or done.stdout}")

    def deliveries(self, payload: str) -> dict[int, float]:
        """{node index: handler time} for one payload, first delivery per node."""
        out: dict[int, float] = {}
        for node in self.nodes:
            try:
                text = (self.events / node.name).read_text()
            except FileNotFoundError:
                continue
            for line in text.splitlines():
                got, _, stamp = line.rpartition(" ")
                if got == payload and node.index not in out:
                    out[node.index] = float(stamp)
        return out

    async def wait_delivered(self, payload: str, deadline_s: float) -> dict[int, float]:
        got: dict[int, float] = {}
        with trio.move_on_after(deadline_s):
            while True:
                got = self.deliveries(payload)
                if len(got) == len(self.nodes):
                    break
                await trio.sleep(0.05)
        return got


@asynccontextmanager
async def running_serf(serf: str, n: int, kind: str, *, seed: int,
                       start_timeout: float = 120.0) -> AsyncIterator[SerfCluster]:
    with tempfile.TemporaryDirectory(prefix=f"unit-p2p-bench-serf-{kind}-") as tmp:
        cluster = SerfCluster(serf, Path(tmp), n, kind, random.Random(seed))
        try:
            started = time.monotonic()
            cluster.start()
            with trio.fail_after(start_timeout):
                await cluster.wait_formed()
            cluster.formed_s = time.monotonic() - started
            yield cluster
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(cluster.stop)
