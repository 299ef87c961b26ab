"""Real agent processes, each with its own emulated Unit, on loopback.

The emulators run inside the test's trio loop (real unix sockets, and faults can be injected
directly); each agent is a separate ``python -m unit_p2p agent`` process with its own state dir,
key and API socket, talking real libp2p (TCP + Noise + yamux) to the others.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from unit_p2p.agent import Agent
from unit_p2p.api.client import AgentUnreachable, ApiClient
from unit_p2p.demo import free_ports, spawn
from unit_p2p.errors import ApiError
from unit_p2p.identity import load_or_create_identity, peer_id_of
from unit_p2p.settings import Settings
from unit_p2p.unit.client import AsyncUnitClient
from unit_p2p.unit.emulator import UnitEmulator

BASE_CONFIG = {"listeners": {}, "routes": [{"action": {"return": 204}}], "applications": {}}


@dataclass
class AgentProc:
    index: int
    dir: Path
    port: int
    peer_id: str
    mesh: str
    extra_args: list[str] = field(default_factory=list)
    bootstrap: list[str] = field(default_factory=list)
    trusted: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    emulator: UnitEmulator | None = None

    @property
    def unit_sock(self) -> Path:
        return self.dir / "unit.sock"

    @property
    def api(self) -> str:
        return f"unix:{self.dir / 'api.sock'}"

    @property
    def multiaddr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{self.peer_id}"

    @property
    def unit(self) -> AsyncUnitClient:
        return AsyncUnitClient(f"unix:{self.unit_sock}", timeout=5)

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "unit_p2p", "agent", "--mesh", self.mesh,
               "--listen", f"/ip4/127.0.0.1/tcp/{self.port}",
               "--unit", f"unix:{self.unit_sock}", "--api", self.api,
               "--state-dir", str(self.dir / "state"), "--key", str(self.dir / "identity.key"),
               "--announce-interval", "2", "--log-level", "debug"]
        if self.trusted:
            cmd += ["--trust", "allowlist"]
            for peer in self.trusted:
                cmd += ["--trusted-peer", peer]
        else:
            cmd += ["--trust", "any"]
        for addr in self.bootstrap:
            cmd += ["--bootstrap", addr]
        return cmd + self.extra_args

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = spawn(self.command(), self.dir / "agent.log", env)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return (self.dir / "agent.log").read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    async def call(self, method: str, *args, http_timeout: float = 10.0, **kwargs):
        def run():
            with ApiClient(self.api, timeout=http_timeout) as client:
                return getattr(client, method)(*args, **kwargs)

        return await trio.to_thread.run_sync(run, abandon_on_cancel=True)

    async def wait_ready(self) -> None:
        """Until the API answers (the agent opens it last). Bound the caller with fail_after."""
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent {self.index} exited {self.proc.returncode}:\n"
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
    """N agents with keys made up front, so every agent can trust and bootstrap the others."""

    def __init__(self, tmp_path: Path, nursery: trio.Nursery, n: int, *, mesh: str = "t",
                 trust_all: bool = True):
        self.nursery = nursery
        ports = free_ports(n)
        self.agents: list[AgentProc] = []
        for i in range(n):
            d = tmp_path / f"a{i}"
            d.mkdir()
            peer = peer_id_of(load_or_create_identity(d / "identity.key", create=True))
            self.agents.append(AgentProc(i, d, ports[i], peer, f"{mesh}-{os.getpid()}"))
        if trust_all:
            ids = [a.peer_id for a in self.agents]
            for a in self.agents:
                a.trusted = [p for p in ids if p != a.peer_id]

    def __getitem__(self, i: int) -> AgentProc:
        return self.agents[i]

    def __iter__(self):
        return iter(self.agents)

    def topology(self, kind: str) -> None:
        """mesh: each agent bootstraps from the one or two before it; star: all from agent 0."""
        for a in self.agents:
            if kind == "star":
                a.bootstrap = [] if a.index == 0 else [self.agents[0].multiaddr]
            else:
                a.bootstrap = [self.agents[j].multiaddr for j in (a.index - 1, a.index - 2)
                               if j >= 0]

    async def start_unit(self, a: AgentProc, config: dict | None = None) -> None:
        a.emulator = UnitEmulator(f"unix:{a.unit_sock}")
        await self.nursery.start(a.emulator.serve)
        await a.unit.put("/config", config or BASE_CONFIG)

    async def start(self, *, units: bool = True) -> None:
        for a in self.agents:
            if units:
                await self.start_unit(a)
            a.start()
        for a in self.agents:
            await a.wait_ready()

    def stop(self) -> None:
        """SIGTERM all at once, then reap (a graceful stop takes ~1 s each under load)."""
        running = [a for a in self.agents if a.proc and a.proc.poll() is None]
        for a in running:
            a.proc.send_signal(signal.SIGTERM)
        for a in running:
            try:
                a.proc.wait(15)
            except subprocess.TimeoutExpired:
                a.proc.kill()
                a.proc.wait(5)

    async def converged_on(self, digest: str, agents=None) -> bool:
        for a in agents or self.agents:
            if await a.head_digest() != digest:
                return False
        return True

    async def wait_converged(self, digest: str, agents=None) -> None:
        """Poll every agent's status until all hold ``digest``; bound it with fail_after."""
        while not await self.converged_on(digest, agents):  # noqa: ASYNC110 - polls other processes
            await trio.sleep(0.1)


# --- one agent in this trio process (API and hostile-input tests) ------------------------

TOKEN = "s3cret-token-for-tests-0123456789"
NEW = {"listeners": {}, "routes": [{"action": {"return": 302, "location": "/x"}}],
       "applications": {}}


@asynccontextmanager
async def running_agent(tmp_path, **overrides):
    """An Agent (real libp2p host, real API sockets) with its own emulated Unit."""
    listen_port, api_port = free_ports(2)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    fields = dict(mesh="apitest", listen=(f"/ip4/127.0.0.1/tcp/{listen_port}",),
                  unit=f"unix:{tmp_path / 'unit.sock'}", api=f"unix:{tmp_path / 'api.sock'}",
                  api_tcp=f"127.0.0.1:{api_port}", api_token_file=token_file,
                  state_dir=tmp_path / "state", trust="any", mdns=False, dht=False)
    settings = Settings(**{**fields, **overrides})
    async with trio.open_nursery() as nursery:
        emulator = UnitEmulator(settings.unit)
        await nursery.start(emulator.serve)
        with trio.fail_after(30):
            agent = await nursery.start(Agent(settings).serve)
        yield agent, emulator
        nursery.cancel_scope.cancel()


