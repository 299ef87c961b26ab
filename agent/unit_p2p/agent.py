"""The agent: wires the components together and owns their lifetimes.

    settings ─┬─ identity ─── mesh (libp2p host, gossip, discovery)
              ├─ unit connector (control socket)
              ├─ state store (disk)
              ├─ reconciler  (decides; talks to the others through narrow interfaces)
              └─ api         (unix socket, optional loopback TCP with a token)

Start order matters: the reconciler loads the persisted head before the mesh starts, so the
first heads exchange already tells peers where this host is; the API opens last, so "the API
answers" means the agent is fully up.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import trio

from unit_p2p import __version__
from unit_p2p.metrics import Metrics
from unit_p2p.settings import Settings

log = logging.getLogger("unit_p2p.agent")


class Agent:
    def __init__(self, settings: Settings):
        # Heavy imports (py-libp2p) only here, so `unit-p2p status` and friends start fast.
        from unit_p2p.identity import load_or_create_identity, peer_id_of
        from unit_p2p.mesh import Mesh, TrustPolicy
        from unit_p2p.sync.reconciler import Reconciler
        from unit_p2p.sync.store import StateStore
        from unit_p2p.unit.client import AsyncUnitClient

        self.settings = settings
        self.started_at = time.time()
        self.keypair = load_or_create_identity(settings.key_file, create=True)
        self.peer_id = peer_id_of(self.keypair)
        self.metrics = Metrics()
        self.trust = TrustPolicy(settings.trust, settings.trusted_peers, self.peer_id)
        self.unit = AsyncUnitClient(settings.unit, timeout=settings.unit_timeout)
        self.store = StateStore(settings.state_dir, keep=settings.keep_configs)
        self.listen_addrs: list[str] = []
        self.reconciler: Reconciler  # set below; the mesh needs it as its event sink
        self.mesh = Mesh(settings, self.keypair, self.trust, self)
        self.reconciler = Reconciler(settings, self.keypair.private_key, self.peer_id, self.mesh,
                                     self.unit, self.store, self.trust, self.metrics)

    # MeshEvents: forwarded to the reconciler (the mesh is built before the reconciler exists)
    async def on_peer_connected(self, peer_id: str) -> None:
        await self.reconciler.on_peer_connected(peer_id)

    async def on_peer_disconnected(self, peer_id: str) -> None:
        await self.reconciler.on_peer_disconnected(peer_id)

    async def on_announcement(self, peer_id: str, data: bytes) -> None:
        await self.reconciler.on_announcement(peer_id, data)

    def status(self) -> dict:
        out = self.reconciler.status()
        out.update(version=__version__, uptime_s=round(time.time() - self.started_at, 1),
                   listen_addrs=self.listen_addrs, trust=self.settings.trust)
        # The mesh layer refuses untrusted connections before the reconciler sees them.
        rejected = out["counters"]["rejected"]
        for reason, count in self.trust.rejected.items():
            rejected[reason] = rejected.get(reason, 0) + count
        out["counters"]["mesh"] = dict(self.mesh.stats)
        return out

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        from unit_p2p.api.server import serve_api

        s = self.settings
        if s.trust == "any":
            log.warning("trust: any — every peer of mesh %r may change this host's Unit config; "
                        "use trusted_peers outside demos", s.mesh)
        await self.reconciler.load()
        # Handlers first: a bootstrap peer may open a heads stream the moment we listen.
        self.reconciler.register_handlers()
        async with trio.open_nursery() as nursery:
            self.listen_addrs = await nursery.start(self.mesh.serve)
            await nursery.start(self.reconciler.serve)
            await nursery.start(serve_api, self)
            log.info("agent %s ready: mesh=%s listen=%s api=%s unit=%s", self.peer_id, s.mesh,
                     ",".join(self.listen_addrs), s.api, s.unit)
            task_status.started(self)


async def run_agent(settings: Settings, *, grace: float = 5.0) -> None:
    """Run until SIGINT/SIGTERM, then shut down within ``grace`` seconds."""
    import signal

    agent = Agent(settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.serve)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                break
        nursery.cancel_scope.deadline = trio.current_time() + grace
        nursery.cancel_scope.cancel()
