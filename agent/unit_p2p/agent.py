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
from typing import TYPE_CHECKING, Any, Protocol

import trio

from unit_p2p import __version__
from unit_p2p.metrics import Metrics
from unit_p2p.settings import Settings

if TYPE_CHECKING:
    from unit_p2p.sync.convergence import PublishResult
    from unit_p2p.sync.revision import Revision

log = logging.getLogger("unit_p2p.agent")


class AgentView(Protocol):
    """The narrow interface the local API talks to (docs/api.md describes the JSON).

    ``health``/``status``/``peers``/``local_config`` are plain data; ``publish`` and ``wait``
    return a ``PublishResult`` (its ``to_json`` is the API's answer); ``metrics.render()`` is the
    Prometheus text. ``local_config`` raises UnitError when Unit does not answer; ``publish``
    raises UnitError or SyncError.
    """

    peer_id: str
    metrics: Metrics

    def health(self) -> dict: ...
    def status(self) -> dict: ...
    def peers(self) -> list[dict]: ...
    async def local_config(self) -> dict: ...
    async def publish(self, config: Any = None, *, dry_run: bool = False, wait: bool = False,
                      timeout: float = 30.0, min_peers: int | None = None,
                      require_all: bool = True) -> PublishResult: ...
    async def wait(self, revision: Revision, *, timeout: float, min_peers: int | None = None,
                   require_all: bool = True) -> PublishResult: ...


class Agent:
    def __init__(self, settings: Settings):
        # Heavy imports (py-libp2p) only here, so `unit-p2p status` and friends start fast.
        from unit_p2p.identity import load_or_create_identity, peer_id_of
        from unit_p2p.mesh import ChannelEvents, Mesh, TrustPolicy
        from unit_p2p.sync.reconciler import Reconciler
        from unit_p2p.sync.store import StateStore
        from unit_p2p.unit.client import AsyncUnitClient

        self.settings = settings
        self.started_at = time.time()
        self.keypair = load_or_create_identity(settings.key_file, create=True)
        self.peer_id = peer_id_of(self.keypair)
        self.metrics = Metrics()
        # Every refusal, the mesh layer's included, is counted in the one /metrics counter.
        self.trust = TrustPolicy(settings.trust, settings.trusted_peers, self.peer_id,
                                 on_refused=self.metrics.refused)
        self.unit = AsyncUnitClient(settings.unit, timeout=settings.unit_timeout)
        self.store = StateStore(settings.state_dir, keep=settings.keep_configs)
        self.listen_addrs: list[str] = []
        # The mesh's events go straight to the reconciler over a channel it consumes.
        events = ChannelEvents()
        self.mesh = Mesh(settings, self.keypair, self.trust, events)
        self.reconciler = Reconciler(settings, self.keypair.private_key, self.peer_id, self.mesh,
                                     self.unit, self.store, self.trust, self.metrics,
                                     events=events.receive)

    # --- AgentView: what the local API may ask of the agent ---------------------------------

    def health(self) -> dict:
        return {"ok": True, "peer_id": self.peer_id,
                "unit": "reachable" if self.reconciler.unit_reachable else "unreachable"}

    def peers(self) -> list[dict]:
        return self.reconciler.peer_views()

    async def local_config(self) -> dict:
        return await self.reconciler.local_config()

    async def publish(self, config: Any = None, **options: Any) -> PublishResult:
        return await self.reconciler.publish(config, **options)

    async def wait(self, revision: Revision, **options: Any) -> PublishResult:
        return await self.reconciler.wait_revision(revision, **options)

    def status(self) -> dict:
        out = self.reconciler.status()
        out.update(version=__version__, uptime_s=round(time.time() - self.started_at, 1),
                   listen_addrs=self.listen_addrs, trust=self.settings.trust)
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
