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
import signal
import time
from typing import TYPE_CHECKING, Any, Protocol

import trio

from unit_p2p import __version__
from unit_p2p.metrics import Metrics
from unit_p2p.settings import Settings
from unit_p2p.shutdown import SHUTDOWN_GRACE, StopDeadline

if TYPE_CHECKING:
    from unit_p2p.sync.convergence import PublishResult
    from unit_p2p.sync.revision import Revision

log = logging.getLogger("unit_p2p.agent")


class AgentView(Protocol):
    """The narrow interface the local API talks to (docs/api.md describes the JSON).

    ``health``/``status``/``peers``/``local_config`` are plain data; ``publish`` and ``wait``
    return a ``PublishResult`` (its ``to_json`` is the API's answer); ``metrics.render()`` is the
    Prometheus text. ``local_config`` raises UnitError when Unit does not answer; ``publish``
    raises UnitError or SyncError (PublishRefused for a guard).
    """

    peer_id: str
    metrics: Metrics

    def health(self) -> dict: ...
    def status(self) -> dict: ...
    def peers(self) -> list[dict]: ...
    async def local_config(self) -> dict: ...
    async def publish(self, config: Any = None, *, certificates: dict | None = None,
                      js_modules: dict | None = None, dry_run: bool = False, wait: bool = False,
                      timeout: float = 30.0, min_peers: int | None = None,
                      require_all: bool = True, force: bool = False) -> PublishResult: ...
    async def wait(self, revision: Revision, *, timeout: float, min_peers: int | None = None,
                   require_all: bool = True) -> PublishResult: ...
    async def revisions(self) -> list[dict]: ...
    async def revision(self, spec: str) -> dict: ...
    async def rollback(self, spec: str | None, **options: Any) -> tuple[str, PublishResult]: ...
    async def rollout(self, spec: str | None) -> dict: ...
    async def rollout_resume(self, spec: str | None, next_wave: bool = False) -> dict: ...
    async def rollout_abort(self, spec: str | None, revert: bool) -> dict: ...


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
        self._stop_requested = trio.Event()
        self._stop_deadline = StopDeadline()
        self._scope: trio.CancelScope | None = None
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
        self.mesh.on_message = self.metrics.message
        # Gossip is checked like any message before gossipsub relays it (first hop only).
        self.mesh.gossip_check = self.reconciler.admission.gossip

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

    async def revisions(self) -> list[dict]:
        return await self.reconciler.revisions.views()

    async def revision(self, spec: str) -> dict:
        return await self.reconciler.revisions.show(spec)

    async def rollback(self, spec: str | None, **options: Any) -> tuple[str, PublishResult]:
        return await self.reconciler.rollback(spec, **options)

    async def rollout(self, spec: str | None) -> dict:
        return await self.reconciler.rollouts.driver.view(spec)

    async def rollout_resume(self, spec: str | None, next_wave: bool = False) -> dict:
        r = await self.reconciler.rollouts.driver.resume(spec, next_wave)
        return await self.reconciler.rollouts.driver.view(str(r.revision), gather=False)

    async def rollout_abort(self, spec: str | None, revert: bool) -> dict:
        r = await self.reconciler.rollouts.driver.abort(spec, revert)
        return await self.reconciler.rollouts.driver.view(str(r.revision), gather=False)

    def status(self) -> dict:
        out = self.reconciler.status()
        out.update(version=__version__, uptime_s=round(time.time() - self.started_at, 1),
                   listen_addrs=self.listen_addrs, trust=self.settings.trust)
        out["counters"]["mesh"] = dict(self.mesh.stats)
        return out

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled, or until ``stop()`` and the components have finished."""
        from unit_p2p.api.server import serve_api

        s = self.settings
        if s.accepts_any_peer:
            log.warning("trust: any — every peer of mesh %r may change this host's Unit config; "
                        "use trusted_peers outside demos", s.mesh)
        self._stop_deadline.share()
        with trio.CancelScope(deadline=self._stop_deadline.at) as self._scope:
            await self.reconciler.load()
            # Handlers first: a bootstrap peer may open a heads stream the moment we listen.
            self.reconciler.register_handlers()
            # One nursery per component, nested in start order, so a stop ends them in the
            # reverse order: the API, then the reconciler, then the mesh, which closes the
            # connections the others used.
            async with trio.open_nursery() as mesh_tasks:
                self.listen_addrs = await mesh_tasks.start(self.mesh.serve)
                async with trio.open_nursery() as sync_tasks:
                    await sync_tasks.start(self.reconciler.serve)
                    async with trio.open_nursery() as api_tasks:
                        await api_tasks.start(serve_api, self)
                        log.info("agent %s ready: mesh=%s listen=%s api=%s unit=%s",
                                 self.peer_id, s.mesh, ",".join(self.listen_addrs), s.api, s.unit)
                        task_status.started(self)
                        await self._stop_requested.wait()
                        api_tasks.cancel_scope.cancel()
                    sync_tasks.cancel_scope.cancel()
                mesh_tasks.cancel_scope.cancel()
        if self._scope.cancelled_caught:
            log.warning("stop took longer than %.1f s: the rest was cancelled", SHUTDOWN_GRACE)

    @property
    def stopping(self) -> bool:
        return self._stop_requested.is_set()

    def stop(self) -> None:
        """Begin a graceful stop: the components finish in order, all within SHUTDOWN_GRACE
        seconds (then whatever remains is cancelled). ``serve`` returns when they are done."""
        deadline = self._stop_deadline.begin()
        if self._scope is not None:
            self._scope.deadline = deadline
        self._stop_requested.set()


async def run_agent(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then stop gracefully within SHUTDOWN_GRACE seconds."""
    agent = Agent(settings)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signals, signals, agent)
            await agent.serve()
            nursery.cancel_scope.cancel()
    log.info("agent %s stopped", agent.peer_id)


async def _stop_on_signals(signals, agent: Agent) -> None:
    # Keep receiving during the stop: a second signal must not fall back to the default
    # handler (SIGINT would raise KeyboardInterrupt in the middle of the cleanup).
    async for signum in signals:
        name = signal.Signals(signum).name
        if agent.stopping:
            log.info("received %s again; already stopping", name)
            continue
        log.info("received %s, stopping (at most %.1f s)", name, SHUTDOWN_GRACE)
        agent.stop()
