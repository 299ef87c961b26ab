"""Get a document by digest from a peer that holds it, and serve ours to peers that ask.

Content is addressed by digest, so whoever serves a document is verified the same way: the
fetcher may ask anyone, and prefers the nearest holder (a connected peer that said it holds the
revision) so that the origin does not serve every host of the fleet itself.

A document that names resources (certificate bundles, JS modules) is complete only with their
bytes: each is pulled the same way, by its digest, from the same holders, unless this host holds
it already; only then is the document stored and offered. A bundle holds a private key, so it is
served only to the peers ``secrets_to`` allows.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import trio

from unit_p2p.errors import BadDocument, MeshError, SyncError, SyncRetryLater, WireError
from unit_p2p.metrics import Metrics
from unit_p2p.sync import wire
from unit_p2p.sync.admission import Admission
from unit_p2p.sync.candidates import Candidate
from unit_p2p.sync.resources import CERTIFICATES
from unit_p2p.sync.revision import Document, Head, Revision, digest_of_bytes
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
                 metrics: Metrics, max_config_bytes: int,
                 secrets_to: Callable[[str], bool] = lambda peer: False):
        """``secrets_to(peer)``: may ``peer`` be sent a certificate bundle."""
        self.peer_id = peer_id
        self.mesh = mesh
        self.store = store
        self.admission = admission
        self.metrics = metrics
        self.max_config_bytes = max_config_bytes
        self.secrets_to = secrets_to
        #: who served us each recently fetched revision (or relayed its broadcast first): our
        #: parent in its spread tree, the next hop for our report when we are not connected to
        #: the origin
        self.served_by: OrderedDict[Revision, str] = OrderedDict()

    async def fetch(self, cand: Candidate) -> Document:
        """The candidate's document with every resource it names, from the store or peers.
        Raises SyncRetryLater."""
        head = cand.head
        doc = cand.document
        if doc is not None and cand.relayed_by is not None:
            self._served(head.revision, cand.relayed_by)
        if doc is None:
            doc = await trio.to_thread.run_sync(self.store.load_document, head.digest)
        order: list[str] | None = None
        if doc is None:
            order = await self._sources(cand)
            doc = await self._pull_any(order, head, head.revision, head.digest,
                                       min(self.max_config_bytes, head.size))
        for digest, (kind, name, size) in sorted(doc.blobs().items()):
            if await trio.to_thread.run_sync(self.store.has_blob, digest):
                continue  # content-addressed: never pulled twice
            if order is None:
                order = await self._sources(cand)
            data = await self._pull_any(order, head, f"{kind} {name} of {head.revision}",
                                        digest, min(self.max_config_bytes, size))
            await trio.to_thread.run_sync(
                lambda d=digest, b=data, k=kind: self.store.save_blob(d, b,
                                                                       secret=k == CERTIFICATES))
        return doc

    async def _pull_any(self, order: list[str], head: Head, what: Any, digest: str,
                        cap: int) -> Any:
        """The document (``digest`` is the head's) or the blob ``digest``, from the first of
        ``order`` that serves it intact. Raises SyncRetryLater."""
        if not order:
            raise SyncRetryLater("no_holder", f"no connected peer to pull {what} from")
        errors = []
        for peer in order:
            log.debug("pulling %s from %s", what, peer)
            try:
                data = await self._pull_from(peer, digest, cap)
                # parsing and hashing a big document takes a good part of a second: off the
                # trio loop, so the API and the mesh keep answering meanwhile
                got = await trio.to_thread.run_sync(_verified, data, digest, head.digest)
            except BadDocument as exc:
                self.admission.refuse(peer, exc.reason, f"served {what}: {exc}")
                errors.append(f"{peer[-8:]}: {exc}")
                continue
            except SyncError as exc:
                errors.append(f"{peer[-8:]}: {exc}")
                continue
            self.metrics.pull_bytes.inc(len(data))
            self._served(head.revision, peer)
            return got
        raise SyncRetryLater("pull_failed", f"{what}: " + "; ".join(errors)[:400])

    def _served(self, revision: Revision, peer: str) -> None:
        self.served_by[revision] = peer
        while len(self.served_by) > SERVED_BY_KEPT:
            self.served_by.popitem(last=False)

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

    async def _pull_from(self, peer: str, digest: str, cap: int) -> bytes:
        try:
            stream = await self.mesh.open_stream(peer, wire.PROTO_PULL)
            try:
                with trio.fail_after(PULL_TIMEOUT):
                    await stream.send_all(wire.encode(wire.Pull(self.admission.mesh_name,
                                                                digest)))
                    self.metrics.message(PULL, wire.Pull.TYPE, "sent")
                    await stream.close_write()
                    raw = await stream.receive_all(cap + wire.MAX_MESSAGE_BYTES, PULL_TIMEOUT)
            finally:
                await stream.close()
            self.metrics.message(PULL, wire.served_kind(raw), "received")
            return wire.decode_served(raw, digest, cap)
        except WireError as exc:
            if exc.reason in ("digest_mismatch", "too_large"):
                raise BadDocument(exc.reason, exc.detail) from None
            raise SyncError("not_served", exc.detail) from None
        except (MeshError, trio.TooSlowError) as exc:
            raise SyncError("unreachable", str(exc) or "timed out") from None

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
        data = await self.servable(peer, request.digest)
        if isinstance(data, str):
            await stream.send_all(wire.encode(wire.ServeError(data)) + b"\n")
            self.metrics.message(PULL, wire.ServeError.TYPE, "sent")
        else:
            await stream.send_all(wire.encode_served(request.digest, data))
            self.metrics.message(PULL, wire.Served.TYPE, "sent")
            self.metrics.pulls_served.inc()
        await stream.close_write()
        await stream.close()

    def _held(self, digest: str) -> tuple[bytes, bool] | None:
        """(bytes, secret) of a held document or blob, verified; None when not held. Blocking."""
        data = self.store.load_document_bytes(digest)
        if data is not None:
            return data, False
        return self.store.load_blob(digest)

    async def servable(self, peer: str, digest: str) -> bytes | str:
        """What to serve ``peer`` asking for ``digest``: the bytes, or why not (``not_found``,
        ``forbidden``: a certificate bundle, and ``secrets_to`` does not allow this peer)."""
        held = await trio.to_thread.run_sync(self._held, digest)
        if held is None:
            return "not_found"
        data, secret = held
        if secret and not self.secrets_to(peer):
            self.admission.refuse(peer, "secret_withheld",
                                  "asked for a certificate bundle, not in trusted_peers")
            return "forbidden"
        return data


def _verified(data: bytes, digest: str, document_digest: str) -> Document | bytes:
    """The served document (``digest`` is the head's), or the served blob's bytes, checked
    against ``digest``. Raises BadDocument."""
    if digest == document_digest:
        return Document.from_bytes(data, digest)
    got = digest_of_bytes(data)
    if got != digest:
        raise BadDocument("digest_mismatch", f"served bytes hash to {got}, not {digest}")
    return data
