"""Separate hosts built from network namespaces, each running one real agent.

Layout of one :class:`Network` (every name carries a prefix unique to the test run)::

      <p>h0      <p>h1      <p>h2            <p>h3      <p>h4      <p>h5     host namespaces
   eth0 10.213.0.2 ...                                                       (one IP each)
        |          |          |                |          |          |
      port0      port1      port2            port3      port4      port5    veth ends
        +----- br0 ----------+--- trunk1a ~ trunk1b ---+------ br1 ------+
                                   <p>sw (the switch namespace)

The bridges live in a namespace of their own, so nothing is added to the machine's own network
namespace and removing our namespaces removes every link we made. A host loses its network
when its port goes down (the host keeps carrier-less eth0 and every socket: the peer "vanishes
without closing"); the two halves lose each other when the trunk goes down, while each half keeps
talking internally (a real partition, not two isolated hosts). Multicast snooping is off on the
bridges so mDNS floods across the segment like on a plain LAN switch.

Agents are ``python -m unit_p2p agent`` processes started with ``ip netns exec`` (which execs, so
the Popen pid is the agent's own and SIGKILL reaches it). Their emulated Units run in the test's
trio loop on unix sockets, which are not network-namespaced, exactly as in ``tests/agent``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import trio

from tests.agent.harness import AgentProc, Fleet

SUBNET = "10.213.0"
#: every namespace has its own port space, so all agents listen on the same port
AGENT_PORT = 9461
NAME_PREFIX = "up2p"


class NetnsUnavailable(Exception):
    """This process may not create network namespaces (not root, or a sandbox forbids it)."""


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def probe_privilege() -> None:
    """Raise NetnsUnavailable with the reason unless namespaces, veths and bridges can be made."""
    if os.geteuid() != 0:
        raise NetnsUnavailable("network-namespace tests need root (CI runs them as root)")
    name = f"{NAME_PREFIX}{os.getpid()}probe{secrets.token_hex(2)}"
    try:
        ip("netns", "add", name)
    except FileNotFoundError as exc:
        raise NetnsUnavailable("`ip` (iproute2) is not installed") from exc
    except RuntimeError as exc:
        raise NetnsUnavailable(f"`ip netns add` is not permitted here: {exc}") from exc
    try:
        ip("link", "add", "pbr", "type", "bridge", netns=name)
        ip("link", "add", "pa", "type", "veth", "peer", "name", "pb", netns=name)
    except RuntimeError as exc:
        raise NetnsUnavailable(f"bridges/veth pairs cannot be created here: {exc}") from exc
    finally:
        ip("netns", "del", name, check=False)


def _our_namespaces() -> list[str]:
    out = ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines()
            if line.startswith(NAME_PREFIX) and line.split()]


def _kill_namespace_processes(netns: str) -> None:
    """SIGKILL what still runs inside one of our namespaces (processes this harness started)."""
    for pid in ip("netns", "pids", netns, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def sweep_stale() -> None:
    """Remove namespaces left by an earlier run that was itself killed (its pid is gone), so a
    crashed run never leaves the next one with clutter."""
    for name in _our_namespaces():
        digits = name[len(NAME_PREFIX):].split("x", 1)[0]
        if digits.isdigit() and not Path(f"/proc/{digits}").exists():
            _kill_namespace_processes(name)
            ip("netns", "del", name, check=False)


#: status polling period: every poll is an API call on each agent, which a loaded machine feels
POLL_INTERVAL = 0.25


async def poll(predicate, interval: float = POLL_INTERVAL) -> None:
    """Until ``await predicate()`` is true, for states the agent offers no event for; the caller
    bounds it with fail_after."""
    while True:
        if await predicate():
            return
        await trio.sleep(interval)


@dataclass
class Host:
    index: int
    netns: str
    ip: str
    port: str  # the host's veth end on the switch
    segment: int


class Network:
    """A switch namespace with one bridge per segment (joined by trunk veth pairs) and one host
    namespace per entry of ``segments``, e.g. ``[0, 0, 0, 1, 1, 1]`` for a 3/3 split."""

    def __init__(self, segments: list[int]):
        self.prefix = f"{NAME_PREFIX}{os.getpid()}x{secrets.token_hex(3)}"
        self.switch = f"{self.prefix}sw"
        self.segments = sorted(set(segments))
        self.hosts = [Host(i, f"{self.prefix}h{i}", f"{SUBNET}.{i + 2}", f"port{i}", seg)
                      for i, seg in enumerate(segments)]
        self._made: list[str] = []

    def create(self) -> Network:
        self._add_netns(self.switch)
        sw = self.switch
        ip("link", "set", "lo", "up", netns=sw)
        for seg in self.segments:
            ip("link", "add", f"br{seg}", "type", "bridge", "mcast_snooping", "0",
               netns=sw)
            ip("link", "set", f"br{seg}", "up", netns=sw)
        for seg in self.segments[1:]:
            # chain the segments: br0 - br1 - br2 ...; trunk<seg> joins seg-1 and seg
            a, b = f"trunk{seg}a", f"trunk{seg}b"
            ip("link", "add", a, "type", "veth", "peer", "name", b, netns=sw)
            ip("link", "set", a, "master", f"br{seg - 1}", "up", netns=sw)
            ip("link", "set", b, "master", f"br{seg}", "up", netns=sw)
        for h in self.hosts:
            self._add_netns(h.netns)
            ip("link", "add", h.port, "type", "veth", "peer", "name", "eth0", netns=sw)
            ip("link", "set", "eth0", "netns", h.netns, netns=sw)
            ip("link", "set", h.port, "master", f"br{h.segment}", "up", netns=sw)
            ip("link", "set", "lo", "up", netns=h.netns)
            ip("addr", "add", f"{h.ip}/24", "dev", "eth0", netns=h.netns)
            ip("link", "set", "eth0", "up", netns=h.netns)
            # multicast (mDNS: 224.0.0.251) gets a route even for senders that do not pin an
            # interface; the namespace has no default route
            ip("route", "add", "224.0.0.0/4", "dev", "eth0", netns=h.netns)
        return self

    def _add_netns(self, name: str) -> None:
        ip("netns", "add", name)
        self._made.append(name)

    def destroy(self) -> None:
        """Remove everything this network made; safe to call twice and after a failed create."""
        for name in reversed(self._made):
            _kill_namespace_processes(name)
            ip("netns", "del", name, check=False)
        self._made.clear()

    async def _set(self, link: str, state: str) -> None:
        with trio.fail_after(30):
            await trio.run_process(["ip", "-n", self.switch, "link", "set", link, state],
                                   capture_stdout=True, capture_stderr=True)

    async def cut(self, host: int) -> None:
        """Pull a host's cable at the switch: no FIN, no RST, its packets just stop."""
        await self._set(self.hosts[host].port, "down")

    async def heal(self, host: int) -> None:
        await self._set(self.hosts[host].port, "up")

    async def split(self, segment: int = 1) -> None:
        """Cut the trunk in front of ``segment``: the segments on each side keep their links."""
        await self._set(f"trunk{segment}a", "down")

    async def join(self, segment: int = 1) -> None:
        await self._set(f"trunk{segment}a", "up")


@dataclass
class HostAgent(AgentProc):
    """An AgentProc that lives on one Host: listens on the host's IP, runs in its namespace."""

    host: Host | None = None

    @property
    def listen(self) -> str:
        return f"/ip4/{self.host.ip}/tcp/{self.port}"

    @property
    def multiaddr(self) -> str:
        return f"{self.listen}/p2p/{self.peer_id}"

    def command(self) -> list[str]:
        cmd = super().command()
        cmd[cmd.index("--listen") + 1] = self.listen
        return ["ip", "netns", "exec", self.host.netns, *cmd]


class HostFleet(Fleet):
    """``tests.agent.harness.Fleet`` on a Network: one agent per host, keys made up front, each
    agent trusting exactly the others (``--trust allowlist``)."""

    def __init__(self, tmp_path: Path, nursery: trio.Nursery, network: Network, *,
                 mesh: str = "ns"):
        super().__init__(tmp_path, nursery, len(network.hosts), mesh=mesh, trust_all=True)
        self.network = network
        self.agents = [HostAgent(**{**vars(a), "port": AGENT_PORT}, host=h)
                       for a, h in zip(self.agents, network.hosts, strict=True)]

    def bootstrap_all(self) -> None:
        """Every agent gets every other agent's address, as the Ansible role distributes them."""
        for a in self.agents:
            a.bootstrap = [b.multiaddr for b in self.agents if b is not a]

    async def connected_counts(self, agents=None) -> list[int]:
        return [(await a.call("status"))["peers"]["connected"] for a in agents or self.agents]

    async def wait_connected(self, expected: int, agents=None) -> None:
        """Poll until each agent reports exactly ``expected`` connected peers; bound by caller."""
        async def reached():
            return all(c == expected for c in await self.connected_counts(agents))

        await poll(reached)

    async def wait_converged(self, digest: str, agents=None) -> None:
        """As Fleet.wait_converged, polling at POLL_INTERVAL."""
        async def reached():
            return await self.converged_on(digest, agents)

        await poll(reached)
