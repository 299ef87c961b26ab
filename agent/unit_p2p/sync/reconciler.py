"""The reconciler: the one component that decides what this host's Unit should hold.

It keeps the desired shared state (the best valid revision known in the mesh) apart from this
host's actual state (the head it applied, the Unit it talks to), and moves the second towards the
first, one apply at a time:

- announcements (gossip, direct pushes, heads exchanges) propose revisions; each is checked for
  mesh, trusted relayer, trusted origin, origin signature and size before it is even considered;
- the apply loop pulls the best candidate from a peer that holds it, verifies the digest, backs up
  the local config, PUTs it, reads it back and compares; a rejection leaves Unit as it was;
- after an apply the head is pushed to connected peers directly (gossip is the fast path, not the
  guarantee), and re-announced periodically (anti-entropy) so partitions heal and late joiners
  catch up without anyone publishing again;
- every agent reports "applied" or "failed: reason" per revision, so a publisher can wait.

Blocking work (disk, Unit) runs off the trio loop; the mesh is reached only through the narrow
``Mesh`` facade (streams, gossip, peer list), so this module is testable without libp2p.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from unit_p2p.errors import (
    MeshError,
    SyncError,
    UnitError,
    UnitRejected,
    UnitUnreachable,
    WireError,
)
from unit_p2p.metrics import Metrics
from unit_p2p.settings import Settings
from unit_p2p.sync import wire
from unit_p2p.sync.revision import (
    Document,
    Head,
    Revision,
    canonical_json,
    merge_exclusions,
    sign_revision,
    verify_revision,
)
from unit_p2p.sync.store import StateStore

log = logging.getLogger("unit_p2p.reconciler")

STREAM_TIMEOUT = 10.0
PULL_TIMEOUT = 30.0
UNIT_POLL_INTERVAL = 5.0
UNIT_RETRY_INTERVAL = 1.0
#: the Unit poll waits at least this many times as long as the last poll took
UNIT_POLL_COST_FACTOR = 50
#: a converged agent still re-announces its head by gossip every this many announce intervals
ANNOUNCE_HEARTBEAT = 6
#: seconds to wait for a connected holder before dialling a revision's origin to pull it
HOLDER_WAIT = 1.0
#: stale peers whose heads an anti-entropy round exchanges (random ones each round)
ANTI_ENTROPY_FANOUT = 3
#: verified signed heads remembered, so re-announcements of one head are checked once
VERIFIED_KEPT = 64
# per-peer token bucket for inbound announcements/heads/notifications
RATE_PER_S = 20.0
RATE_BURST = 60.0
# revisions whose reports are kept for publishers' waits
REPORTS_KEPT = 64
# seconds an agent waits before relaying a revision it applied to peers not known to hold it
RELAY_DELAY = (0.2, 0.6)


class UnitLike(Protocol):
    async def get(self, path: str = "/config") -> Any: ...
    async def put(self, path: str, value: Any) -> Any: ...


class TrustLike(Protocol):
    def is_trusted(self, peer_id: str) -> bool: ...


class MeshLike(Protocol):
    peer_id: str

    def set_stream_handler(self, protocol: str, handler: Any) -> None: ...
    async def open_stream(self, peer_id: str, protocol: str) -> Any: ...
    async def publish(self, data: bytes) -> None: ...
    def connected_peers(self) -> list[str]: ...
    def peers(self) -> list[Any]: ...


@dataclass
class Candidate:
    head: Head
    holders: set[str] = field(default_factory=set)
    seen_at: float = field(default_factory=time.monotonic)
    holder_added: trio.Event = field(default_factory=trio.Event)


@dataclass
class PublishResult:
    changed: bool
    revision: Revision | None
    digest: str
    size: int
    converged: bool = False
    applied: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    before: Any = None
    after: Any = None

    def to_json(self, with_diff: bool) -> dict:
        out = {
            "changed": self.changed,
            "revision": str(self.revision) if self.revision else None,
            "digest": self.digest,
            "size": self.size,
            "converged": self.converged,
            "peers": {"applied": self.applied, "failed": self.failed, "pending": self.pending},
        }
        if with_diff:
            out["before"] = self.before
            out["after"] = self.after
        return out


class _TokenBucket:
    def __init__(self) -> None:
        self.tokens = RATE_BURST
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(RATE_BURST, self.tokens + (now - self.stamp) * RATE_PER_S)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Reconciler:
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
    ):
        self.settings = settings
        self.mesh_name = settings.mesh
        self.exclusions = tuple(settings.exclusions)
        self.private_key = private_key
        self.peer_id = peer_id
        self.mesh = mesh
        self.unit = unit
        self.store = store
        self.trust = trust
        self.metrics = metrics

        self.head: Head | None = None
        self.applied_at: float | None = None
        self.max_seen = 0
        self.candidates: dict[Revision, Candidate] = {}
        # revisions this host failed to apply, by reason: not retried until something changes
        self.failed: dict[Revision, str] = {}
        self.peer_heads: dict[str, Head | None] = {}
        #: heads whose origin signature verified (revision, digest, signature), oldest first
        self._verified: OrderedDict[tuple[Revision, str, bytes], None] = OrderedDict()
        self.reports: OrderedDict[Revision, dict[str, tuple[str, str | None]]] = OrderedDict()
        self.last_error: dict | None = None
        self.unit_reachable: bool | None = None
        self.unit_error: str | None = None
        self.local_digest: str | None = None

        self._apply_lock = trio.Lock()
        self._wake = trio.Event()
        self._changed = trio.Event()
        self._buckets: dict[str, _TokenBucket] = {}
        self._last_log: dict[tuple[str, str], float] = {}
        self._nursery: trio.Nursery | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the persisted head before the mesh starts, so the first heads exchange is right."""
        self.head, self.max_seen, self.applied_at = await trio.to_thread.run_sync(
            self.store.load_head)
        self.last_error = await trio.to_thread.run_sync(self.store.load_last_error)
        if self.head:
            self.metrics.head_counter.set(self.head.revision.counter)
            log.info("loaded head %s digest=%s", self.head.revision, self.head.digest)

    def register_handlers(self) -> None:
        self.mesh.set_stream_handler(wire.PROTO_PULL, self._serve_pull)
        self.mesh.set_stream_handler(wire.PROTO_HEADS, self._serve_heads)
        self.mesh.set_stream_handler(wire.PROTO_NOTIFY, self._serve_notify)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._apply_loop)
            nursery.start_soon(self._anti_entropy_loop)
            await nursery.start(self._unit_watch_loop)
            task_status.started()

    # --- bookkeeping --------------------------------------------------------------------------

    def _notify_change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _wake_apply(self) -> None:
        self._wake.set()

    def _reject(self, peer: str, reason: str, detail: str) -> None:
        """Count and log a refused message; logs are rate-limited per (peer, reason)."""
        self.metrics.rejected.labels(reason).inc()
        now = time.monotonic()
        key = (peer, reason)
        if now - self._last_log.get(key, -math.inf) >= 10.0:
            self._last_log[key] = now
            if len(self._last_log) > 4096:
                self._last_log.clear()
            log.warning("rejected from peer=%s reason=%s: %s", peer, reason, detail)

    def _admit(self, peer: str) -> bool:
        bucket = self._buckets.get(peer)
        if bucket is None:
            if len(self._buckets) > 4096:
                self._buckets.clear()
            bucket = self._buckets[peer] = _TokenBucket()
        if bucket.take():
            return True
        self._reject(peer, "rate_limited", "too many messages")
        return False

    def _record_report(self, peer: str, revision: Revision, status: str, reason: str | None):
        per_rev = self.reports.get(revision)
        if per_rev is None:
            per_rev = self.reports[revision] = {}
            while len(self.reports) > REPORTS_KEPT:
                self.reports.popitem(last=False)
        per_rev[peer] = (status, reason)
        self._notify_change()

    # --- inbound messages ---------------------------------------------------------------------

    async def on_peer_connected(self, peer_id: str) -> None:
        self.metrics.peers_connected.set(len(self.mesh.connected_peers()))
        if self._nursery is not None and self.trust.is_trusted(peer_id):
            self._nursery.start_soon(self._exchange_heads, peer_id)

    async def on_peer_disconnected(self, peer_id: str) -> None:
        self.metrics.peers_connected.set(len(self.mesh.connected_peers()))
        self._notify_change()

    async def on_announcement(self, peer_id: str, data: bytes) -> None:
        """A gossip message; ``peer_id`` is its verified origin (strict signing)."""
        await self._handle_message(peer_id, data)

    async def _handle_message(self, peer: str, data: bytes) -> wire.Message | None:
        if not self.trust.is_trusted(peer):
            self._reject(peer, "untrusted_peer", "message from a peer not on the trusted list")
            return None
        if not self._admit(peer):
            return None
        try:
            msg = wire.decode(data)
        except WireError as exc:
            self._reject(peer, exc.reason, str(exc))
            return None
        mesh = getattr(msg, "mesh", self.mesh_name)
        if mesh != self.mesh_name:
            self._reject(peer, "wrong_mesh", f"message for mesh {mesh!r}")
            return None
        if isinstance(msg, wire.Announce):
            self._consider(peer, msg.head)
        elif isinstance(msg, wire.NoHead):
            self.peer_heads[peer] = None
            self._behind(peer)
        elif isinstance(msg, wire.Report):
            self._record_report(peer, msg.revision, msg.status, msg.reason)
        else:
            self._reject(peer, "unexpected", f"{type(msg).__name__} is not valid here")
        return msg

    def _verify_head(self, peer: str, head: Head) -> bool:
        rev = head.revision
        if not self.trust.is_trusted(rev.origin):
            self._reject(peer, "untrusted_origin", f"revision {rev} from an untrusted origin")
            return False
        if head.size > self.settings.max_config_bytes:
            self._reject(peer, "too_large", f"revision {rev} is {head.size} bytes")
            return False
        key = (rev, head.digest, head.signature)
        if key in self._verified:
            # After a publish every applier announces the same signed head: check it once.
            self._verified.move_to_end(key)
            return True
        if not verify_revision(self.mesh_name, rev, head.digest, head.signature):
            self._reject(peer, "bad_signature", f"revision {rev}: origin signature does not verify")
            return False
        self._verified[key] = None
        while len(self._verified) > VERIFIED_KEPT:
            self._verified.popitem(last=False)
        return True

    def _consider(self, peer: str, head: Head) -> None:
        if not self._verify_head(peer, head):
            return
        rev = head.revision
        self.peer_heads[peer] = head
        self.max_seen = max(self.max_seen, rev.counter)
        self._record_report(peer, rev, "applied", None)
        mine = self.head.revision if self.head else None
        if mine is not None and rev == mine:
            return
        if mine is not None and rev < mine:
            # A peer behind us (or a replay): tell it where the mesh is, apply nothing.
            self.metrics.rejected.labels("stale_revision").inc()
            self._behind(peer)
            return
        if rev in self.failed:
            return
        cand = self.candidates.get(rev)
        if cand is None:
            cand = self.candidates[rev] = Candidate(head)
            log.debug("candidate %s from %s", rev, peer)
        elif cand.head.digest != head.digest:
            # Same revision, another digest: only the origin can sign it, so the origin equivocated.
            self._reject(peer, "equivocation", f"revision {rev} announced with two digests")
            return
        cand.holders.add(peer)
        cand.holder_added.set()
        self._wake_apply()

    def _behind(self, peer: str) -> None:
        if (self.head is not None and self._nursery is not None
                and peer in self.mesh.connected_peers()):
            self._nursery.start_soon(self._push, peer, self._announcement())

    # --- stream handlers (the mesh guards them: an exception resets only that stream) ---------

    async def _serve_pull(self, peer: str, stream: Any) -> None:
        if not self._admit(peer):
            await stream.reset()
            return
        try:
            with trio.fail_after(STREAM_TIMEOUT):
                request = wire.decode(await stream.receive_all(wire.MAX_MESSAGE_BYTES,
                                                               STREAM_TIMEOUT))
            if not isinstance(request, wire.Pull) or request.mesh != self.mesh_name:
                raise WireError("unexpected", "pull stream without a pull request of this mesh")
        except WireError as exc:
            self._reject(peer, exc.reason, f"pull: {exc}")
            await stream.reset()
            return
        data = await trio.to_thread.run_sync(self.store.load_document_bytes, request.digest)
        if data is None:
            await stream.send_all(wire.encode(wire.ServeError("not_found")) + b"\n")
        else:
            await stream.send_all(wire.encode_served(request.digest, data))
            self.metrics.pulls_served.inc()
        await stream.close_write()
        await stream.close()

    async def _serve_heads(self, peer: str, stream: Any) -> None:
        data = await stream.receive_all(wire.MAX_MESSAGE_BYTES, STREAM_TIMEOUT)
        await stream.send_all(self._announcement())
        await stream.close_write()
        await stream.close()
        await self._handle_message(peer, data)

    async def _serve_notify(self, peer: str, stream: Any) -> None:
        data = await stream.receive_all(wire.MAX_MESSAGE_BYTES, STREAM_TIMEOUT)
        await stream.close()
        await self._handle_message(peer, data)

    # --- outbound -----------------------------------------------------------------------------

    def _announcement(self) -> bytes:
        if self.head is None:
            return wire.encode(wire.NoHead(self.mesh_name))
        return wire.encode(wire.Announce(self.mesh_name, self.head))

    async def _exchange_heads(self, peer: str) -> None:
        try:
            stream = await self.mesh.open_stream(peer, wire.PROTO_HEADS)
            try:
                with trio.fail_after(STREAM_TIMEOUT):
                    await stream.send_all(self._announcement())
                    await stream.close_write()
                    data = await stream.receive_all(wire.MAX_MESSAGE_BYTES, STREAM_TIMEOUT)
            finally:
                await stream.close()
        except (MeshError, WireError, trio.TooSlowError) as exc:
            log.debug("heads exchange with %s failed: %s", peer, exc)
            return
        await self._handle_message(peer, data)

    async def _push(self, peer: str, data: bytes) -> None:
        try:
            stream = await self.mesh.open_stream(peer, wire.PROTO_NOTIFY)
            try:
                with trio.fail_after(STREAM_TIMEOUT):
                    await stream.send_all(data)
                    await stream.close_write()
            finally:
                await stream.close()
        except (MeshError, WireError, trio.TooSlowError) as exc:
            log.debug("push to %s failed: %s", peer, exc)

    async def _gossip(self, data: bytes) -> None:
        try:
            await self.mesh.publish(data)
        except MeshError as exc:
            log.debug("gossip publish failed: %s", exc)

    async def _broadcast(self, data: bytes, skip_holders_of: Revision | None = None,
                         gossip: bool = True, skip: set[str] | frozenset[str] = frozenset(),
                         ) -> None:
        """Gossip ``data`` and push it directly to connected trusted peers, all in parallel."""
        async with trio.open_nursery() as nursery:
            if gossip:
                nursery.start_soon(self._gossip, data)
            for peer in self.mesh.connected_peers():
                if peer in skip:
                    continue
                known = self.peer_heads.get(peer)
                if skip_holders_of is not None and known is not None \
                        and known.revision >= skip_holders_of:
                    continue
                if self.trust.is_trusted(peer):
                    nursery.start_soon(self._push, peer, data)

    async def _report(self, revision: Revision, digest: str, status: str, reason: str | None):
        self._record_report(self.peer_id, revision, status, reason)
        await self._broadcast(wire.encode(wire.Report(self.mesh_name, revision, digest, status,
                                                      reason)))

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
            while True:
                mine = self.head.revision if self.head else None
                for rev in [r for r in self.candidates if mine is not None and r <= mine]:
                    del self.candidates[rev]
                if not self.candidates:
                    break
                best = self.candidates[max(self.candidates)]
                try:
                    try:
                        await self._apply(best)
                    except (UnitError, OSError) as exc:
                        if isinstance(exc, UnitUnreachable):
                            raise
                        # Unit answered a read with an error, or the state dir failed (disk
                        # full): this revision fails here; the agent and its old config stay.
                        raise SyncError("apply_error", f"{type(exc).__name__}: {exc}") from exc
                except UnitUnreachable as exc:
                    # Transient: keep the candidate and retry when Unit answers again.
                    self._set_unit_state(False, str(exc))
                    await self._record_error(best.head.revision, "unit_unreachable", str(exc))
                    retry_after = UNIT_RETRY_INTERVAL
                    break
                except SyncError as exc:
                    rev = best.head.revision
                    if exc.reason in ("no_holder", "pull_failed"):
                        # Nobody could serve it right now: retry later, the holders may return.
                        retry_after = 2.0
                        await self._record_error(rev, exc.reason, str(exc))
                        break
                    self.candidates.pop(rev, None)
                    self.failed[rev] = f"{exc.reason}: {exc}"
                    self.metrics.applies.labels("failed").inc()
                    await self._record_error(rev, exc.reason, str(exc))
                    log.error("revision %s not applied: %s", rev, exc)
                    await self._report(rev, best.head.digest, "failed",
                                       f"{exc.reason}: {exc}"[:500])

    async def _record_error(self, revision: Revision, reason: str, detail: str) -> None:
        self.last_error = {"revision": str(revision), "reason": reason, "detail": detail,
                           "at": time.time()}
        self._notify_change()
        await trio.to_thread.run_sync(self.store.save_last_error, self.last_error)

    async def _fetch(self, cand: Candidate) -> Document:
        head = cand.head
        data = await trio.to_thread.run_sync(self.store.load_document_bytes, head.digest)
        if data is not None:
            return Document.from_bytes(data, head.digest)
        connected = self.mesh.connected_peers()
        origin = head.revision.origin
        if origin != self.peer_id and origin not in connected \
                and cand.holders.isdisjoint(connected):
            # Dialling the origin adds a connection beyond the mesh's degree, and in a large
            # fleet most agents would dial it at once. A neighbour that holds the revision
            # usually announces within a few hundred ms: wait that long for one first.
            with trio.move_on_after(HOLDER_WAIT):
                while cand.holders.isdisjoint(self.mesh.connected_peers()):
                    await cand.holder_added.wait()
                    cand.holder_added = trio.Event()
            connected = self.mesh.connected_peers()
        # Connected holders first (they announced it), then the origin even if we must dial it
        # (gossip relayed its announcement; it certainly holds the document), then anyone
        # connected: content is addressed by digest, so whoever serves it is verified the same.
        order = [p for p in cand.holders if p in connected]
        if origin not in order and origin != self.peer_id:
            order.append(origin)
        order += [p for p in connected if p not in order]
        order = [p for p in order if self.trust.is_trusted(p)]
        if not order:
            raise SyncError("no_holder", f"no connected peer to pull {head.revision} from")
        errors = []
        for peer in order:
            log.debug("pulling %s from %s", head.revision, peer)
            try:
                doc = await self._pull_from(peer, head)
            except SyncError as exc:
                if exc.reason in ("digest_mismatch", "bad_document", "not_an_object",
                                  "too_large"):
                    self._reject(peer, exc.reason, f"served {head.revision}: {exc}")
                errors.append(f"{peer[-8:]}: {exc}")
                continue
            self.metrics.pull_bytes.inc(doc.size)
            return doc
        raise SyncError("pull_failed", "; ".join(errors)[:400])

    async def _pull_from(self, peer: str, head: Head) -> Document:
        cap = min(self.settings.max_config_bytes, head.size)
        try:
            stream = await self.mesh.open_stream(peer, wire.PROTO_PULL)
            try:
                with trio.fail_after(PULL_TIMEOUT):
                    await stream.send_all(wire.encode(wire.Pull(self.mesh_name, head.digest)))
                    await stream.close_write()
                    raw = await stream.receive_all(cap + wire.MAX_MESSAGE_BYTES, PULL_TIMEOUT)
            finally:
                await stream.close()
            data = wire.decode_served(raw, head.digest, cap)
        except WireError as exc:
            reason = exc.reason if exc.reason in ("digest_mismatch", "too_large") else "not_served"
            raise SyncError(reason, str(exc)) from None
        except (MeshError, trio.TooSlowError) as exc:
            raise SyncError("unreachable", str(exc) or "timed out") from None
        return Document.from_bytes(data, head.digest)

    async def _apply(self, cand: Candidate) -> None:
        head = cand.head
        doc = await self._fetch(cand)
        async with self._apply_lock:
            if self.head is not None and head.revision <= self.head.revision:
                return  # a publish or another apply got further meanwhile
            started = time.monotonic()
            local = await self.unit.get("/config")
            target = merge_exclusions(doc.tree, local, self.exclusions)
            await trio.to_thread.run_sync(self.store.save_backup, local,
                                          f"before-{head.revision.counter}")
            await self._put_verified(target, doc.digest, rollback=local)
            await trio.to_thread.run_sync(self.store.save_document, doc)
            await self._set_head(head)
            self.candidates.pop(head.revision, None)
            self.metrics.applies.labels("ok").inc()
            self.metrics.last_convergence.set(time.monotonic() - cand.seen_at)
            log.info("applied revision %s digest=%s size=%d in %.1f ms", head.revision,
                     doc.digest, doc.size, (time.monotonic() - started) * 1000)
        # The announcement is the "applied" report too (an agent only announces its own head).
        # Gossip it now; push it directly, after a short random delay, only to connected peers
        # still not known to hold it: in a well-connected mesh the origin's own pushes and the
        # others' gossip reach nearly everyone first, so the relay costs O(N) streams, not O(N^2),
        # while a hub's leaves (whom gossip may starve) still get it within a second.
        await self._gossip(self._announcement())
        if self._nursery is not None:
            self._nursery.start_soon(self._relay, head.revision)

    async def _relay(self, revision: Revision) -> None:
        await trio.sleep(random.uniform(*RELAY_DELAY))
        if self.head is not None and self.head.revision == revision:
            # Peers in our gossip mesh got this announcement from the gossip we just sent.
            await self._broadcast(self._announcement(), skip_holders_of=revision, gossip=False,
                                  skip=self.mesh.gossip_mesh_peers())

    async def _put_verified(self, target: Any, digest: str, rollback: Any) -> None:
        """PUT ``target`` and read it back. Unit rejects atomically; if the read-back differs
        (someone wrote meanwhile, or Unit changed it) the previous config is restored."""
        try:
            await self.unit.put("/config", target)
        except UnitRejected as exc:
            raise SyncError("unit_rejected", str(exc)) from None
        readback = await self.unit.get("/config")
        got = Document.from_config(readback, self.exclusions).digest
        if got != digest:
            try:
                await self.unit.put("/config", rollback)
            except UnitError as exc:
                log.error("rollback after a failed verification failed too: %s", exc)
            raise SyncError("verify_failed", f"Unit holds {got} after PUT of {digest}")
        self._set_unit_state(True, None, got)

    async def _set_head(self, head: Head) -> None:
        self.head = head
        self.applied_at = time.time()
        self.max_seen = max(self.max_seen, head.revision.counter)
        self.local_digest = head.digest
        await trio.to_thread.run_sync(self.store.save_head, head, self.max_seen, self.applied_at)
        self.metrics.head_counter.set(head.revision.counter)
        self._record_report(self.peer_id, head.revision, "applied", None)

    # --- Unit health and anti-entropy ---------------------------------------------------------

    def _set_unit_state(self, reachable: bool, error: str | None, digest: str | None = None):
        if reachable and self.unit_reachable is False:
            log.info("Unit is reachable again")
            self._wake_apply()
        elif not reachable and self.unit_reachable is not False:
            log.warning("Unit unreachable: %s", error)
        self.unit_reachable = reachable
        self.unit_error = error
        self.metrics.unit_up.set(1 if reachable else 0)
        if digest is not None:
            self.local_digest = digest

    async def _unit_watch_loop(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        first = True
        while True:
            started = trio.current_time()
            try:
                config = await self.unit.get("/config")
                digest = Document.from_config(config, self.exclusions).digest
                self._set_unit_state(True, None, digest)
            except UnitError as exc:
                self._set_unit_state(False, str(exc))
            except SyncError as exc:  # Unit answered with a non-object config
                self._set_unit_state(True, str(exc))
            if first:
                task_status.started()
                first = False
            if not self.unit_reachable:
                await trio.sleep(UNIT_RETRY_INTERVAL)
                continue
            # Reading, parsing and hashing the whole config is the poll's cost: a big config
            # (1.5 MB: seconds against the emulator, tens of ms against Unit) is polled less
            # often, so the watch never takes more than ~2 % of the agent's time.
            took = trio.current_time() - started
            await trio.sleep(max(UNIT_POLL_INTERVAL, took * UNIT_POLL_COST_FACTOR))

    async def _anti_entropy_loop(self) -> None:
        # Every interval: exchange heads with a few connected peers not known to be at our head,
        # and re-announce by gossip (it reaches peers we are not connected to) only when a peer
        # is known to be behind us, or every ANNOUNCE_HEARTBEAT intervals. A converged fleet then
        # gossips 6x less: each re-announcement costs every agent ~D receptions.
        interval = self.settings.announce_interval
        quiet = 0
        while True:
            await trio.sleep(interval * random.uniform(0.8, 1.2))
            if self.head is None:
                continue
            mine = self.head.revision
            stale = [p for p in self.mesh.connected_peers()
                     if self.trust.is_trusted(p)
                     and (self.peer_heads.get(p) is None or self.peer_heads[p].revision != mine)]
            behind = [p for p in stale
                      if self.peer_heads.get(p) is None or self.peer_heads[p].revision < mine]
            quiet += 1
            if behind or quiet >= ANNOUNCE_HEARTBEAT:
                quiet = 0
                try:
                    await self.mesh.publish(self._announcement())
                except MeshError as exc:
                    log.debug("re-announce failed: %s", exc)
            # A few stale peers per round: during a slow rollout every peer is stale to every
            # other, and exchanging with all of them (N * degree streams a round) competed with
            # the rollout it was meant to repair.
            async with trio.open_nursery() as nursery:
                for peer in random.sample(stale, min(len(stale), ANTI_ENTROPY_FANOUT)):
                    nursery.start_soon(self._exchange_heads, peer)
            # A revision that failed for a transient reason may succeed now; rejected ones wait
            # for a newer revision.
            if self.candidates:
                self._wake_apply()

    # --- publishing ---------------------------------------------------------------------------

    async def head_config(self) -> Any:
        if self.head is None:
            return None
        data = await trio.to_thread.run_sync(self.store.load_document_bytes, self.head.digest)
        return Document.from_bytes(data, self.head.digest).tree if data else None

    async def publish(
        self,
        config: Any = None,
        *,
        dry_run: bool = False,
        wait: bool = False,
        timeout: float = 30.0,
        min_peers: int | None = None,
        require_all: bool = True,
    ) -> PublishResult:
        """Publish the local Unit config (or ``config``, applied locally first) as a new revision.

        Raises UnitUnreachable, SyncError("unit_rejected") or SyncError("not_an_object").
        """
        async with self._apply_lock:
            local = await self.unit.get("/config")
            doc = Document.from_config(local if config is None else config, self.exclusions)
            # A given config that differs from this host's Unit (even in host-local parts) is
            # a change here, whether or not it makes a new mesh revision.
            local_change = config is not None and canonical_json(config) != canonical_json(local)
            changed = self.head is None or doc.digest != self.head.digest
            if dry_run:
                before = await self.head_config()
                return PublishResult(changed=changed or local_change, revision=None,
                                     digest=doc.digest, size=doc.size,
                                     before=before if before is not None else local,
                                     after=doc.tree)
            if local_change:
                await self._put_verified(config, doc.digest, rollback=local)
            if changed:
                rev = Revision(self.max_seen + 1, self.peer_id)
                head = Head(rev, doc.digest, doc.size,
                            sign_revision(self.private_key, self.mesh_name, rev, doc.digest))
                before = await self.head_config()
                await trio.to_thread.run_sync(self.store.save_document, doc)
                await self._set_head(head)
                self.metrics.publishes.inc()
                log.info("published revision %s digest=%s size=%d", rev, doc.digest, doc.size)
            else:
                before = doc.tree
            assert self.head is not None
            head = self.head
        if changed:
            await self._broadcast(self._announcement())
        result = PublishResult(changed=changed or local_change, revision=head.revision,
                               digest=head.digest,
                               size=head.size, before=before, after=doc.tree)
        await self._wait(result, wait, timeout, min_peers, require_all)
        return result

    async def wait_revision(self, revision: Revision, *, timeout: float,
                            min_peers: int | None = None,
                            require_all: bool = True) -> PublishResult:
        """Where a revision stands in the mesh, waiting up to ``timeout`` for it to converge."""
        head = self.head
        if head is not None and head.revision == revision:
            digest, size = head.digest, head.size
        else:
            cand = self.candidates.get(revision)
            digest, size = (cand.head.digest, cand.head.size) if cand else ("", 0)
        result = PublishResult(changed=False, revision=revision, digest=digest, size=size)
        await self._wait(result, True, timeout, min_peers, require_all)
        return result

    def _targets(self) -> list[str]:
        """The peers a publisher waits for: every trusted peer it knows of."""
        known = {p.peer_id for p in self.mesh.peers() if self.trust.is_trusted(p.peer_id)}
        known |= {p for p in self.settings.trusted_peers}
        known |= {p for p in self.peer_heads if self.trust.is_trusted(p)}
        known.discard(self.peer_id)
        return sorted(known)

    def _tally(self, result: PublishResult) -> None:
        rev = result.revision
        assert rev is not None
        mine = self.head.revision if self.head else None
        applied, failed, pending = ([self.peer_id] if mine == rev else []), {}, []
        reports = self.reports.get(rev, {})
        for peer in self._targets():
            status, reason = reports.get(peer, (None, None))
            peer_head = self.peer_heads.get(peer)
            if status == "applied":
                applied.append(peer)
            elif status == "failed":
                failed[peer] = reason or "failed"
            elif peer_head is not None and peer_head.revision > rev:
                failed[peer] = f"superseded by {peer_head.revision}"
            else:
                pending.append(peer)
        result.applied, result.failed, result.pending = applied, failed, pending

    async def _wait(self, result: PublishResult, wait: bool, timeout: float,
                    min_peers: int | None, require_all: bool) -> None:
        def done() -> bool:
            self._tally(result)
            if require_all or min_peers is None:
                return not result.pending
            # min_peers counts other peers; the publisher is in ``applied`` too
            return len(result.applied) - 1 >= min_peers

        finished = done()
        if wait and not finished:
            with trio.move_on_after(timeout):
                while not done():
                    await self._changed.wait()
            finished = done()
        result.converged = finished and not result.failed and (
            not require_all or not result.pending)

    # --- views for the API --------------------------------------------------------------------

    def status(self) -> dict:
        connected = self.mesh.connected_peers()
        peers = self.mesh.peers()
        head = None
        if self.head is not None:
            head = self.head.to_json()
            head.pop("signature")
            head["applied_at"] = self.applied_at
        return {
            "peer_id": self.peer_id,
            "mesh": self.mesh_name,
            "head": head,
            "local": {
                "unit": "reachable" if self.unit_reachable else "unreachable",
                "unit_error": self.unit_error,
                "digest": self.local_digest,
                "in_sync": bool(self.head and self.local_digest == self.head.digest),
            },
            "last_error": self.last_error,
            "pending": [str(r) for r in sorted(self.candidates)],
            "peers": {
                "connected": len(connected),
                "known": len(peers),
                "trusted": sum(1 for p in peers if self.trust.is_trusted(p.peer_id)),
            },
            "counters": {
                "applied": self.metrics.applies_count("ok"),
                "apply_failed": self.metrics.applies_count("failed"),
                "pulls_served": self.metrics.pulls_served_count(),
                "rejected": self.metrics.rejected_counts(),
            },
        }

    def peer_views(self) -> list[dict]:
        out = []
        for info in self.mesh.peers():
            head = self.peer_heads.get(info.peer_id)
            report = None
            for rev in reversed(self.reports):
                entry = self.reports[rev].get(info.peer_id)
                if entry is not None:
                    report = {"revision": str(rev), "status": entry[0], "reason": entry[1]}
                    break
            out.append({
                "peer_id": info.peer_id,
                "connected": info.connected,
                "trusted": self.trust.is_trusted(info.peer_id),
                "addrs": list(info.addrs),
                "head": {"revision": str(head.revision), "digest": head.digest} if head else None,
                "report": report,
            })
        return out
