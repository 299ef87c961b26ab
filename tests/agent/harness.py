"""The test side of the fleet launcher (``unit_p2p.fleet``): real agent processes, each with its
own emulated Unit, tuned for tests; and one agent inside the test's own trio loop.

The emulators run inside the test's trio loop (real unix sockets, and faults can be injected
directly); each agent is a separate ``python -m unit_p2p agent`` process with its own state dir,
key and API socket, talking real libp2p (TCP + Noise + yamux) to the others.
"""

from __future__ import annotations

from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import requests
import trio

from unit_p2p import fleet
from unit_p2p.agent import Agent
from unit_p2p.fleet import BASE_CONFIG, AgentProc, free_ports
from unit_p2p.httpunix import make_session, parse_address
from unit_p2p.settings import Settings
from unit_p2p.unit.emulator import UnitEmulator

__all__ = ["BASE_CONFIG", "NEW", "TOKEN", "AgentProc", "Fleet", "api_request", "running_agent",
           "running_fleet"]

# Announcements come sooner than the agent's default (tests wait on them) and every log line is
# kept for the failure report.
TEST_AGENT_ARGS = ("--announce-interval", "2", "--log-level", "debug")


class Fleet(fleet.Fleet):
    """``unit_p2p.fleet.Fleet`` with the test settings for every agent."""

    def __init__(self, tmp_path: Path, nursery: trio.Nursery, n: int, *, mesh: str = "t",
                 trust_all: bool = True):
        super().__init__(tmp_path, nursery, n, mesh=mesh, trust_all=trust_all,
                         agent_args=TEST_AGENT_ARGS)

    @contextmanager
    def log_tails_on_failure(self, chars: int | None = None):
        """On any exception out of the block, print every agent's log tail (then re-raise)."""
        try:
            yield self
        except BaseException:
            for a in self:
                tail = a.log_tail() if chars is None else a.log_tail(chars)
                print(f"----- agent {a.index} log tail -----\n{tail}")
            raise


@asynccontextmanager
async def running_fleet(tmp_path: Path, n: int, topology: str = "mesh", extra_args=(),
                        start: bool = True):
    """``n`` agent processes with their emulated Units, started (unless ``start`` is False) and
    stopped around the block; on a failure every agent's log tail is printed."""
    async with trio.open_nursery() as nursery:
        f = Fleet(tmp_path, nursery, n)
        f.topology(topology)
        for a in f:
            a.extra_args = list(extra_args)
        try:
            with f.log_tails_on_failure():
                if start:
                    with trio.fail_after(60):
                        await f.start()
                yield f
        finally:
            f.stop()
            nursery.cancel_scope.cancel()


# --- one agent in this trio process (API and hostile-input tests) ------------------------

TOKEN = "s3cret-token-for-tests-0123456789"
NEW = {"listeners": {}, "routes": [{"action": {"return": 302, "location": "/x"}}],
       "applications": {}}


async def api_request(socket: Path | str, method: str, url: str, body: bytes | str | None = None,
                      timeout: float = 20) -> requests.Response:
    """One raw HTTP request to an agent's API unix socket (no client-side checks): what a
    careless or hostile local client can send."""
    def send() -> requests.Response:
        session = make_session(f"unix:{socket}")
        base = parse_address(f"unix:{socket}").base_url
        return session.request(method, base + url, data=body, timeout=timeout)

    return await trio.to_thread.run_sync(send)


@asynccontextmanager
async def running_agent(tmp_path, **overrides):
    """An Agent (real libp2p host, real API sockets) with its own emulated Unit."""
    listen_port, api_port = free_ports(2)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)  # the agent refuses a token other users can read
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


