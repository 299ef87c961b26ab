"""The reconciler: the one component that decides what this host's Unit should hold.

It keeps the desired shared state (the best valid revision known in the mesh) apart from this
host's actual state (the head it applied, the Unit it talks to), and moves the second towards the
first, one apply at a time. It only decides; each job is a module of its own:

    admission    may this message / head be believed (trust, rate, schema, signature)
    intake       what an admitted message means: which heads become candidates, who holds
                 what, what a report counts for
    candidates   which revisions peers propose, who holds them, peers' heads
    fetch        get a document from the nearest holder; serve ours
    applier      move the local Unit to a document; watch Unit
    drift        Unit holding something else than the head: repair or report it
    spread       whom we tell about our head, and when (gossip, pushes, heads exchange,
                 anti-entropy)
    convergence  reports per revision; a publisher's wait
    publisher    a new revision from a config (guards, signing), rollback, waits

What is left here: the lifecycle, the apply loop (the best candidate next; retry, give up, or wait
for Unit, by the exception's type) and the head it commits, the state the others read.

Inbound mesh events arrive on a channel (``events``) or through the ``on_*`` methods, and the
work they cause is queued until ``serve`` runs, never dropped. Blocking work (disk, Unit) runs
off the trio loop; the mesh is reached only through ``MeshLike``, so this is testable without
libp2p.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Protocol

import trio

from unit_p2p.errors import (
    RevisionRejected,
    SyncError,
    SyncRetryLater,
    UnitError,
    UnitShortAnswer,
    UnitUnreachable,
)
from unit_p2p.metrics import Metrics
from unit_p2p.settings import Settings
from unit_p2p.sync import wire
from unit_p2p.sync.admission import Admission, TrustLike
from unit_p2p.sync.applier import UNIT_RETRY_INTERVAL, Applier, UnitLike
from unit_p2p.sync.candidates import Candidate, Candidates
from unit_p2p.sync.convergence import APPLIED, FAILED, Convergence, PublishResult
from unit_p2p.sync.drift import Drift
from unit_p2p.sync.fetch import Fetcher
from unit_p2p.sync.health import HealthGate
from unit_p2p.sync.history import History, Revisions
from unit_p2p.sync.intake import Intake
from unit_p2p.sync.publisher import Publisher
from unit_p2p.sync.resources import certificate_views
from unit_p2p.sync.revision import (
    Document,
    Head,
    Revision,
)
from unit_p2p.sync.rollout import Rollouts
from unit_p2p.sync.spread import GOSSIP, NOTIFY, Spread
from unit_p2p.sync.store import StateStore
from unit_p2p.sync.views import ReconcilerViews
from unit_p2p.sync.waves import plan_of

__all__ = ["MeshLike", "PublishResult", "Reconciler", "TrustLike", "UnitLike"]

log = logging.getLogger("unit_p2p.reconciler")

#: a head loaded at start is reported to its origin again when applied at most this many
#: seconds before (a publisher's wait is minutes at most; an older head's report has no reader)
RESTART_REPORT_WINDOW = 300.0


class MeshLike(Protocol):
    peer_id: str

    def set_stream_handler(self, protocol: str, handler: Any) -> None: ...
    async def open_stream(self, peer_id: str, protocol: str) -> Any: ...
    def set_message_handler(self, protocol: str, handler: Any, *, max_bytes: int,
                            one_shot: str | None = None) -> None: ...
    async def send_message(self, peer_id: str, protocol: str, data: bytes) -> None: ...
    async def publish(self, data: bytes) -> None: ...
    def connected_peers(self) -> list[str]: ...
    def gossip_mesh_peers(self) -> set[str]: ...
    def gossip_peers(self) -> list[str]: ...
    def gossip_pruned_peers(self) -> set[str]: ...
    def peers(self) -> list[Any]: ...


class Reconciler(ReconcilerViews):
    def __init__(
        self,
        settings: Settings,
        private_key: Any,
        peer_id: str,
        mesh: MeshLike,
        unit: UnitLike,
        store: StateStore,
        trust: TrustLike,
        metrics: Metrics,
        *,
        events: trio.abc.ReceiveChannel | None = None,
    ):
        """``events``: the mesh's events as ``(kind, peer_id, data)`` tuples (see
        ``unit_p2p.mesh.ChannelEvents``), consumed by ``serve``."""
        self.settings = settings
        self.mesh_name = settings.mesh
        self.exclusions = tuple(settings.exclusions)
        self.private_key = private_key
        self.peer_id = peer_id
        self.mesh = mesh
        self.store = store
        self.trust = trust
        self.metrics = metrics
        self._events = events

        self.head: Head | None = None
        self._head_doc: Document | None = None
        #: the head read at start, until it is reported (``_report_loaded_head``)
        self._loaded_head: Head | None = None
        self.applied_at: float | None = None
        self.last_error: dict | None = None
        self.candidates = Candidates()
        self.admission = Admission(self.mesh_name, trust, metrics, settings.max_config_bytes)
        self.applier = Applier(unit, store, self.exclusions, metrics, self.wake_apply,
                               lambda digest: self.drift.observed(digest))
        self.drift = Drift(self, settings.on_drift, self.applier, store, metrics)
        # Certificate bundles hold private keys: they are served only to the peers named in
        # trusted_peers, also with trust: any (where every peer is "trusted").
        self.fetcher = Fetcher(peer_id, mesh, store, self.admission, metrics,
                               settings.max_config_bytes,
                               secrets_to=lambda peer: peer in settings.trusted_peers)
        self.publisher = Publisher(self)
        self.convergence = Convergence(peer_id, self.publisher.wait_targets)
        self.history = History(store.dir, peer_id)
        self.revisions = Revisions(self.history, store, self.convergence, self.candidates)
        self.rollouts = Rollouts(self, store.dir, HealthGate(settings))
        self.intake = Intake(self)
        self._work_send, self._work_receive = trio.open_memory_channel[tuple](math.inf)
        self.spread = Spread(self.mesh_name, mesh, trust, self.candidates, metrics,
                             lambda: self.head,
                             self.intake.merge, self.spawn, self.fetcher.served_by)

        self._wake = trio.Event()

    @property
    def head_unit_digest(self) -> str | None:
        """What Unit holding the head hashes to: the digest of the head's config alone (the
        head's digest unless it is an envelope), Unit-side certificate names mapped back."""
        return self.applier.expected_digest

    # --- lifecycle ----------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the persisted head before the mesh starts, so the first heads exchange is right."""
        head, max_seen, self.applied_at = await trio.to_thread.run_sync(self.store.load_head)
        self.head = self._loaded_head = head
        self.candidates.max_seen = max_seen
        self.last_error = await trio.to_thread.run_sync(self.store.load_last_error)
        await trio.to_thread.run_sync(self.history.load, head, self.applied_at)
        await self.rollouts.load(head)
        if self.head:
            self.applier.expect(await self._head_document())
            self.metrics.head_counter.set(self.head.revision.counter)
            log.info("loaded head %s digest=%s", self.head.revision, self.head.digest)

    def register_handlers(self) -> None:
        self.mesh.set_stream_handler(wire.PROTO_PULL, self.fetcher.serve_pull)
        self.mesh.set_stream_handler(wire.PROTO_HEADS, self.spread.serve_heads)
        self.mesh.set_message_handler(wire.PROTO_NOTIFY, self._serve_notify,
                                      max_bytes=wire.MAX_ANY_BYTES,
                                      one_shot=wire.PROTO_NOTIFY_ONE_SHOT)
        self.mesh.set_stream_handler(wire.PROTO_ROLLOUT, self.rollouts.serve_query)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_work, nursery)
            if self._events is not None:
                nursery.start_soon(self._consume_events)
            nursery.start_soon(self._apply_loop)
            nursery.start_soon(self.spread.anti_entropy, self.settings.announce_interval,
                               self._after_anti_entropy)
            await nursery.start(self.applier.watch)
            task_status.started()

    def spawn(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` in the reconciler's nursery; queued until ``serve`` runs."""
        self._work_send.send_nowait((fn, args))

    async def _run_work(self, nursery: trio.Nursery) -> None:
        async for fn, args in self._work_receive:
            nursery.start_soon(fn, *args)

    async def _consume_events(self) -> None:
        assert self._events is not None
        async for kind, peer, data, via in self._events:
            try:
                if kind == "connected":
                    await self.on_peer_connected(peer)
                elif kind == "disconnected":
                    await self.on_peer_disconnected(peer)
                else:
                    await self.on_announcement(peer, data, via)
            except Exception:
                # One event's bug must not stop the consumption of all later ones.
                log.exception("handling the mesh event %s of %s failed", kind, peer)

    # --- bookkeeping --------------------------------------------------------------------------

    def wake_apply(self) -> None:
        self._wake.set()

    def _after_anti_entropy(self) -> None:
        # A revision that failed for a transient reason may succeed now; rejected ones wait
        # for a newer revision.
        if self.candidates:
            self.wake_apply()
        self.rollouts.round()

    # --- inbound (MeshEvents) -----------------------------------------------------------------

    async def on_peer_connected(self, peer_id: str) -> None:
        self.metrics.peers_connected.set(len(self.mesh.connected_peers()))
        self.spread.connected(peer_id)
        self.rollouts.connected(peer_id)
        self._report_loaded_head()

    def _report_loaded_head(self) -> None:
        """At the first connection after a start, report the loaded head once if it was applied
        within RESTART_REPORT_WINDOW: a host that stopped right after an apply may have taken
        its report down with it, and its publisher would wait for it in vain."""
        loaded, self._loaded_head = self._loaded_head, None
        if loaded is None or self.head is None or loaded.revision != self.head.revision:
            return
        if self.applied_at is None or time.time() - self.applied_at > RESTART_REPORT_WINDOW:
            return
        self.spread.send_report(loaded.revision, loaded.digest, APPLIED, None)

    async def on_peer_disconnected(self, peer_id: str) -> None:
        self.metrics.peers_connected.set(len(self.mesh.connected_peers()))
        self.convergence.changed()

    async def on_announcement(self, peer_id: str, data: bytes, via: str | None = None) -> None:
        """A gossip message; ``peer_id`` is its verified origin (strict signing), ``via`` the
        peer that relayed it to us."""
        await self.intake.merge(peer_id, data, GOSSIP, via)

    async def _serve_notify(self, peer: str, data: bytes) -> None:
        """One notify message of ``peer`` (the mesh reads them off its notify stream, or a
        one-shot stream of an agent of the previous version)."""
        await self.intake.merge(peer, data, NOTIFY)

    # --- applying -----------------------------------------------------------------------------

    async def _apply_loop(self) -> None:
        retry_after: float | None = None
        while True:
            if retry_after is None:
                await self._wake.wait()
            else:
                with trio.move_on_after(retry_after):
                    await self._wake.wait()
            self._wake = trio.Event()
            retry_after = None
            while (best := self.candidates.best(self.head.revision if self.head else None)):
                rev = best.head.revision
                wait = best.not_before - trio.current_time()
                if wait > 0:
                    retry_after = wait
                    break
                try:
                    try:
                        await self._apply(best)
                    except (UnitError, OSError) as exc:
                        if isinstance(exc, UnitUnreachable):
                            raise
                        if isinstance(exc, UnitShortAnswer):
                            # Unit cut its answer to a read before the PUT, even in pieces:
                            # nothing changed, and the next try may read it whole.
                            raise SyncRetryLater("unit_short_answer", str(exc)) from exc
                        # Unit answered a read with an error, or the state dir failed (disk
                        # full): this revision fails here; the agent and its old config stay.
                        raise RevisionRejected("apply_error",
                                               f"{type(exc).__name__}: {exc}") from exc
                except UnitUnreachable as exc:
                    # Transient: keep the candidate and retry when Unit answers again.
                    self.applier.set_state(False, str(exc))
                    await self.record_error(rev, "unit_unreachable", str(exc))
                    retry_after = UNIT_RETRY_INTERVAL
                    break
                except SyncRetryLater as exc:
                    # Nobody could serve it right now: retry later (backing off), the holders
                    # may return, and a new holder makes it worth trying at once.
                    await self.record_error(rev, exc.reason, exc.detail)
                    retry_after = best.back_off()
                    break
                except SyncError as exc:
                    # Anything else (Unit refused it, the read-back differs, a corrupt stored
                    # document) will not get better by retrying: wait for a newer revision.
                    reason = str(exc)  # "<reason>: <detail>" already
                    self.candidates.give_up(rev, reason)
                    self.metrics.applies.labels("failed").inc()
                    await self.record_error(rev, exc.reason, exc.detail)
                    log.error("revision %s not applied: %s", rev, exc)
                    self.convergence.record(self.peer_id, rev, FAILED, reason[:500])
                    self.rollouts.failed_here(rev, reason[:500])
                    self.spread.send_report(rev, best.head.digest, FAILED, reason[:500])

    async def record_error(self, revision: Revision, reason: str, detail: str) -> None:
        self.last_error = {"revision": str(revision), "reason": reason, "detail": detail,
                           "at": time.time()}
        self.convergence.changed()
        await trio.to_thread.run_sync(self.store.save_last_error, self.last_error)

    async def clear_error(self) -> None:
        """A successful apply or publish: the last error is history, not the current state."""
        if self.last_error is not None:
            self.last_error = None
            await trio.to_thread.run_sync(self.store.save_last_error, None)

    async def _apply(self, cand: Candidate) -> None:
        head = cand.head
        doc = await self.fetcher.fetch(cand)
        held = not self.rollouts.may_apply(head, plan_of(doc))
        if held or not self.spread.travels_inline(doc) or doc.blobs():
            # Stored now, verified, when it is needed before the commit stores it: a bigger
            # document is offered next and pulled from us while our Unit applies it; a staged
            # one waits here for its wave; a document's blobs are kept from pruning only while
            # it is stored (the head's own document stays, should this apply fail). A small
            # one travels in the flood (nobody pulls it from us): one durable write and one
            # worker-thread trip fewer before the relay and the apply.
            await trio.to_thread.run_sync(self.store.save_document, doc,
                                          self.head.digest if self.head else None)
        self.spread.fetched(head, cand.holders, doc, passed_on=cand.passed_on)
        if held:
            # staged, and this host's wave is not open: held until a wave message opens it
            self.candidates.drop(head.revision)
            return
        async with self.applier.lock:
            if self.head is not None and head.revision <= self.head.revision:
                return  # a publish or another apply got further meanwhile
            started = time.monotonic()
            await self.applier.apply(doc, f"before-{head.revision.counter}",
                                     current=await self._head_document())
            await self.commit_head(head, doc)
            self.candidates.drop(head.revision)
            self.metrics.applies.labels("ok").inc()
            self.metrics.last_convergence.set(time.monotonic() - cand.seen_at)
            log.info("applied revision %s digest=%s size=%d in %.1f ms", head.revision,
                     doc.digest, doc.size, (time.monotonic() - started) * 1000)
        self.rollouts.applied(head)

    async def commit_head(self, head: Head, doc: Document | None = None) -> None:
        """``head`` is applied here (by an apply or a publish): record it, clear the last error.
        ``doc``: its document (read from the store when not given)."""
        self.head = head
        self.applied_at = time.time()
        self.candidates.max_seen = max(self.candidates.max_seen, head.revision.counter)
        if doc is None or doc.digest != head.digest:
            doc = await self._head_document()
        else:
            self._head_doc = doc
        self.applier.expect(doc)
        if doc is not None:
            self.applier.local_digest = doc.config_digest
        fleet, views = self.revisions.head_fleet(), \
            certificate_views(doc.certificates) if doc else None
        max_seen, applied_at = self.candidates.max_seen, self.applied_at

        def persist() -> None:
            # one trip to a worker thread for all of it, not one per file
            if doc is not None:
                self.store.save_document(doc)  # held already: kept out of pruning as the head
            self.store.save_head(head, max_seen, applied_at)
            self.history.record(head, applied_at, fleet, views)

        await trio.to_thread.run_sync(persist)
        self.metrics.head_counter.set(head.revision.counter)
        self.convergence.record(self.peer_id, head.revision, APPLIED, None)
        await self.clear_error()

    async def head_config(self) -> Any:
        """The head's config, the caller's own copy (read from the store)."""
        if self.head is None:
            return None
        doc = await trio.to_thread.run_sync(self.store.load_document, self.head.digest)
        return doc.tree if doc is not None else None

    async def _head_document(self) -> Document | None:
        """The head's document, kept in memory (read-only: every pass over it copies): an
        apply needs it, and reading, parsing and hashing it again each time cost more than the
        apply's own work for a small config."""
        if self.head is None:
            return None
        if self._head_doc is None or self._head_doc.digest != self.head.digest:
            self._head_doc = await trio.to_thread.run_sync(self.store.load_document,
                                                           self.head.digest)
        return self._head_doc

    # --- publishing (sync/publisher.py) -------------------------------------------------------

    async def publish(self, config: Any = None, **options: Any) -> PublishResult:
        return await self.publisher.publish(config, **options)

    async def rollback(self, revision: str | None = None,
                       **options: Any) -> tuple[str, PublishResult]:
        return await self.publisher.rollback(revision, **options)

    async def wait_revision(self, revision: Revision, **options: Any) -> PublishResult:
        return await self.publisher.wait_revision(revision, **options)
