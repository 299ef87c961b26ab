"""N real agents on loopback, each with its own emulated Unit: the one launcher behind
``unit-p2p demo``, the process tests (``tests/agent/harness.py``) and the benchmarks
(``bench/common.py``).

Each agent is a separate ``python -m unit_p2p agent`` process with its own state dir, key and API
socket, talking real libp2p (TCP + Noise + yamux) to the others. The emulated Units run inside
the caller's trio loop (a nursery it passes in): real unix sockets, one process for all of them,
which matters on a small machine with many agents, and faults can be injected directly.

Only the flags that make a fleet (mesh, addresses, sockets, trust, bootstrap) are set here; what
a caller tunes (announce interval, log level, mDNS, exclusions) it passes as ``agent_args`` for
the whole fleet or ``AgentProc.extra_args`` for one agent (later flags win).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from unit_p2p.errors import AgentUnreachable, ApiError, UnitUnreachable
from unit_p2p.identity import load_or_create_identity, peer_id_of
from unit_p2p.unit.client import AsyncUnitClient
from unit_p2p.unit.emulator import UnitEmulator

# What each emulated Unit holds until the caller gives it something else.
BASE_CONFIG = {"listeners": {}, "routes": [{"action": {"return": 204}}], "applications": {}}
# How the agents are started; a what-if variant of the agent swaps the module (bench).
AGENT_COMMAND = (sys.executable, "-m", "unit_p2p", "agent")
UNIT_COMMAND = (sys.executable, "-m", "unit_p2p", "unit-emulator")


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


def spawn(cmd: list[str], log_path: Path, env: dict) -> subprocess.Popen:
    """Start ``cmd`` with stdout and stderr written to ``log_path`` (a restart starts it anew)."""
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def stop_processes(procs: Iterable[subprocess.Popen], grace: float = 15.0) -> None:
    """SIGTERM all at once (a graceful stop takes about a second each under load, so one by one
    would add up), then reap; SIGKILL whatever did not stop within ``grace``. Blocks."""
    running = [p for p in procs if p.poll() is None]
    for p in running:
        p.send_signal(signal.SIGTERM)
    until = time.monotonic() + grace
    for p in running:
        try:
            p.wait(max(0.1, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


@dataclass
class AgentProc:
    """One agent of a fleet: its files, its flags, its process and its emulated Unit."""

    index: int
    dir: Path
    port: int
    peer_id: str
    mesh: str
    agent_args: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)
    bootstrap: list[str] = field(default_factory=list)
    trusted: list[str] = field(default_factory=list)
    launcher: Sequence[str] = AGENT_COMMAND
    proc: subprocess.Popen | None = None
    emulator: UnitEmulator | None = None
    #: the emulated Unit as a process of its own (``Fleet.start_unit(process=True)``)
    unit_proc: subprocess.Popen | None = None

    @property
    def unit_sock(self) -> Path:
        return self.dir / "unit.sock"

    @property
    def api(self) -> str:
        return f"unix:{self.dir / 'api.sock'}"

    @property
    def log(self) -> Path:
        return self.dir / "agent.log"

    @property
    def multiaddr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{self.peer_id}"

    @property
    def unit(self) -> AsyncUnitClient:
        return AsyncUnitClient(f"unix:{self.unit_sock}", timeout=5)

    def command(self) -> list[str]:
        cmd = [*self.launcher, "--mesh", self.mesh,
               "--listen", f"/ip4/127.0.0.1/tcp/{self.port}",
               "--unit", f"unix:{self.unit_sock}", "--api", self.api,
               "--state-dir", str(self.dir / "state"), "--key", str(self.dir / "identity.key")]
        if self.trusted:
            cmd += ["--trust", "allowlist"]
            for peer in self.trusted:
                cmd += ["--trusted-peer", peer]
        else:
            cmd += ["--trust", "any"]
        for addr in self.bootstrap:
            cmd += ["--bootstrap", addr]
        return cmd + self.agent_args + self.extra_args

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = spawn(self.command(), self.log, env)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    async def call(self, method: str, *args, http_timeout: float = 10.0, **kwargs):
        """``ApiClient.<method>(*args, **kwargs)`` against this agent, in a thread."""
        from unit_p2p.api.client import ApiClient

        def run():
            with ApiClient(self.api, timeout=http_timeout) as client:
                return getattr(client, method)(*args, **kwargs)

        return await trio.to_thread.run_sync(run, abandon_on_cancel=True)

    async def wait_ready(self) -> None:
        """Until the API answers (the agent opens it last); the caller bounds the wait.
        Raises RuntimeError with the log's tail if the agent exits first."""
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.index} exited {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                await self.call("healthz", http_timeout=2.0)
                return
            except (AgentUnreachable, ApiError):
                await trio.sleep(0.05)

    async def head_digest(self) -> str | None:
        status = await self.call("status")
        return (status.get("head") or {}).get("digest")


class Fleet:
    """N agents with keys made up front, so every agent can trust and bootstrap the others.

    ``nursery`` runs the emulated Units; ``agent_args`` go to every agent; with ``trust_all``
    each agent trusts exactly the others (allowlist), without it any peer (``trust: any``).
    """

    def __init__(self, base: Path, nursery: trio.Nursery, n: int, *, mesh: str = "t",
                 trust_all: bool = True, agent_args: Sequence[str] = ()):
        self.nursery = nursery
        ports = free_ports(n)
        self.agents: list[AgentProc] = []
        for i in range(n):
            d = base / f"a{i}"
            d.mkdir(parents=True)
            peer = peer_id_of(load_or_create_identity(d / "identity.key", create=True))
            self.agents.append(AgentProc(i, d, ports[i], peer, f"{mesh}-{os.getpid()}",
                                         agent_args=list(agent_args)))
        if trust_all:
            ids = [a.peer_id for a in self.agents]
            for a in self.agents:
                a.trusted = [p for p in ids if p != a.peer_id]

    def __getitem__(self, i: int) -> AgentProc:
        return self.agents[i]

    def __iter__(self):
        return iter(self.agents)

    def __len__(self) -> int:
        return len(self.agents)

    def topology(self, kind: str, rng: random.Random | None = None) -> None:
        """Who bootstraps from whom. star: everyone from agent 0. mesh: each agent from the one
        or two before it, or with ``rng`` from two or three random earlier agents (large
        fleets, where a chain would be long); either way connected and without a hub."""
        for a in self.agents:
            if kind == "star":
                picks = [] if a.index == 0 else [0]
            elif rng is None:
                picks = [j for j in (a.index - 1, a.index - 2) if j >= 0]
            else:
                earlier = list(range(a.index))
                picks = sorted(rng.sample(earlier, min(len(earlier), rng.choice((2, 3)))))
            a.bootstrap = [self.agents[j].multiaddr for j in picks]

    async def start_unit(self, a: AgentProc, config: dict | None = None, *,
                         process: bool = False) -> None:
        """``a``'s emulated Unit, in this process's trio loop, or (``process``) as a process of
        its own, as each host runs its own Unit: then N Units do not queue behind one another
        in one interpreter."""
        if not process:
            a.emulator = UnitEmulator(f"unix:{a.unit_sock}")
            await self.nursery.start(a.emulator.serve)
        else:
            a.unit_proc = spawn([*UNIT_COMMAND, "--control", f"unix:{a.unit_sock}"],
                                a.dir / "unit.log", dict(os.environ, PYTHONUNBUFFERED="1"))
            while True:  # until it answers: its socket file exists before it listens
                if a.unit_proc.poll() is not None:
                    raise RuntimeError(f"unit emulator {a.index} exited "
                                       f"{a.unit_proc.returncode}")
                try:
                    await a.unit.get("/config")
                    break
                except UnitUnreachable:
                    await trio.sleep(0.05)
        await a.unit.put("/config", config or BASE_CONFIG)

    async def start(self, *, units: bool = True) -> None:
        """Units (unless the caller starts them), then every agent, until all APIs answer."""
        for a in self.agents:
            if units:
                await self.start_unit(a)
            a.start()
        for a in self.agents:
            await a.wait_ready()

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every agent (and Unit process) at once, then reap (blocks; see
        ``stop_processes``)."""
        stop_processes(self.processes(), grace)

    def processes(self) -> list[subprocess.Popen]:
        return [p for a in self.agents for p in (a.proc, a.unit_proc) if p is not None]

    async def converged_on(self, digest: str, agents=None) -> bool:
        for a in agents or self.agents:
            if await a.head_digest() != digest:
                return False
        return True

    async def wait_converged(self, digest: str, agents=None) -> None:
        """Poll every agent's status until all hold ``digest``; the caller bounds the wait."""
        while not await self.converged_on(digest, agents):  # noqa: ASYNC110 - polls other processes
            await trio.sleep(0.1)
