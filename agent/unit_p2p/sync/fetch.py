"""Get a document by digest from a peer that holds it, and serve ours to peers that ask.

Content is addressed by digest, so whoever serves a document is verified the same way: the
fetcher may ask anyone, and prefers the nearest holder (a connected peer that said it holds the
revision) so that the origin does not serve every host of the fleet itself.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import trio

from unit_p2p.errors import BadDocument, MeshError, SyncError, SyncRetryLater, WireError
from unit_p2p.metrics import Metrics
from unit_p2p.sync import wire
from unit_p2p.sync.admission import Admission
from unit_p2p.sync.candidates import Candidate
from unit_p2p.sync.revision import Document, Head, Revision
from unit_p2p.sync.store import StateStore

log = logging.getLogger("unit_p2p.sync.fetch")

PULL_TIMEOUT = 30.0
#: revisions whose server is remembered
SERVED_BY_KEPT = 64
#: ``protocol`` label of the message counters
PULL = "pull"
#: seconds to wait for a connected holder before dialling a revision's origin to pull it
HOLDER_WAIT = 1.0


class Fetcher:
    def __init__(self, peer_id: str, mesh: Any, store: StateStore, admission: Admission,
                 metrics: Metrics, max_config_bytes: int):
        self.peer_id = peer_id
        self.mesh = mesh
        self.store = store
        self.admission = admission
        self.metrics = metrics
        self.max_config_bytes = max_config_bytes
        #: who served us each recently fetched revision: our parent in its pull tree, the next
        #: hop for our report when we are not connected to the origin
        self.served_by: OrderedDict[Revision, str] = OrderedDict()

    async def fetch(self, cand: Candidate) -> Document:
        """The candidate's document, from the store or a peer. Raises SyncRetryLater."""
        head = cand.head
        held = await trio.to_thread.run_sync(self.store.load_document, head.digest)
        if held is not None:
            return held
        order = await self._sources(cand)
        if not order:
            raise SyncRetryLater("no_holder", f"no connected peer to pull {head.revision} from")
        errors = []
        for peer in order:
            log.debug("pulling %s from %s", head.revision, peer)
            try:
                doc = await self._pull_from(peer, head)
            except BadDocument as exc:
                self.admission.refuse(peer, exc.reason, f"served {head.revision}: {exc}")
                errors.append(f"{peer[-8:]}: {exc}")
                continue
            except SyncError as exc:
                errors.append(f"{peer[-8:]}: {exc}")
                continue
            self.metrics.pull_bytes.inc(doc.size)
            self.served_by[head.revision] = peer
            while len(self.served_by) > SERVED_BY_KEPT:
                self.served_by.popitem(last=False)
            return doc
        raise SyncRetryLater("pull_failed", "; ".join(errors)[:400])

    async def _sources(self, cand: Candidate) -> list[str]:
        """Whom to ask, best first."""
        connected = self.mesh.connected_peers()
        origin = cand.head.revision.origin
        if origin != self.peer_id and origin not in connected \
                and cand.holders.isdisjoint(connected):
            # Dialling the origin adds a connection beyond the mesh's degree, and in a large
            # fleet most agents would dial it at once. A neighbour that holds the revision
            # usually says so within a few hundred ms: wait that long for one first.
            with trio.move_on_after(HOLDER_WAIT):
                while cand.holders.isdisjoint(self.mesh.connected_peers()):
                    await cand.wait_holder()
            connected = self.mesh.connected_peers()
        # Connected holders first (they said they hold it), then the origin even if we must dial
        # it (it certainly holds the document), then anyone connected.
        order = [p for p in cand.holders if p in connected]
        if origin not in order and origin != self.peer_id:
            order.append(origin)
        order += [p for p in connected if p not in order]
        return [p for p in order if self.admission.trust.is_trusted(p)]

    async def _pull_from(self, peer: str, head: Head) -> Document:
        cap = min(self.max_config_bytes, head.size)
        try:
            stream = await self.mesh.open_stream(peer, wire.PROTO_PULL)
            try:
                with trio.fail_after(PULL_TIMEOUT):
                    await stream.send_all(wire.encode(wire.Pull(self.admission.mesh_name,
                                                                head.digest)))
                    self.metrics.message(PULL, wire.Pull.TYPE, "sent")
                    await stream.close_write()
                    raw = await stream.receive_all(cap + wire.MAX_MESSAGE_BYTES, PULL_TIMEOUT)
            finally:
                await stream.close()
            self.metrics.message(PULL, wire.served_kind(raw), "received")
            data = wire.decode_served(raw, head.digest, cap)
        except WireError as exc:
            if exc.reason in ("digest_mismatch", "too_large"):
                raise BadDocument(exc.reason, exc.detail) from None
            raise SyncError("not_served", exc.detail) from None
        except (MeshError, trio.TooSlowError) as exc:
            raise SyncError("unreachable", str(exc) or "timed out") from None
        return Document.from_bytes(data, head.digest)

    async def serve_pull(self, peer: str, stream: Any) -> None:
        """The ``/unit-p2p/config`` handler (the mesh guards it: an exception resets only it)."""
        if not self.admission.within_rate(peer):
            await stream.reset()
            return
        try:
            with trio.fail_after(wire.STREAM_TIMEOUT):
                request = wire.decode(await stream.receive_all(wire.MAX_MESSAGE_BYTES,
                                                               wire.STREAM_TIMEOUT))
            self.metrics.message(PULL, request.TYPE, "received")
            if not isinstance(request, wire.Pull) or request.mesh != self.admission.mesh_name:
                raise WireError("unexpected", "pull stream without a pull request of this mesh")
        except WireError as exc:
            self.admission.refuse(peer, exc.reason, f"pull: {exc}")
            await stream.reset()
            return
        data = await trio.to_thread.run_sync(self.store.load_document_bytes, request.digest)
        if data is None:
            await stream.send_all(wire.encode(wire.ServeError("not_found")) + b"\n")
            self.metrics.message(PULL, wire.ServeError.TYPE, "sent")
        else:
            await stream.send_all(wire.encode_served(request.digest, data))
            self.metrics.message(PULL, wire.Served.TYPE, "sent")
            self.metrics.pulls_served.inc()
        await stream.close_write()
        await stream.close()
