"""Move the local Unit to a document, and watch it.

An apply reads Unit's config, keeps this host's values at the excluded pointers, backs the old
config up, PUTs the new one and reads it back: Unit rejects atomically (the old config stays), and
a read-back that differs (someone wrote meanwhile, or Unit rewrote it) or that fails restores the
old config. The watch polls Unit so ``status`` can say whether it answers and whether it holds our
head; every digest it reads goes to ``on_observed``, where the reconciler decides about drift.

Resources go first (sync/resources.py): each certificate bundle Unit lacks is uploaded under its
content-derived name ``NAME.<12 hex>`` and the config's references are renamed to it; each JS
module under its NAME. Then the config, read back with the names mapped back to NAME before the
digest is compared. Then the bundles and modules this agent uploaded that the new config no longer
names are deleted (the uploads and deletes are sync/uploads.py's; the order, the config and the
JS module swap are here). A failure before the config PUT leaves the old config serving (an
uploaded, unreferenced bundle is harmless and deleted by a later apply).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, Protocol

import trio

from unit_p2p.errors import (
    RevisionRejected,
    SyncError,
    UnitError,
    UnitPathNotFound,
    UnitRejected,
    UnitShortAnswer,
)
from unit_p2p.metrics import Metrics
from unit_p2p.sync import resources
from unit_p2p.sync.offload import config_pass
from unit_p2p.sync.resources import (
    JS_MODULES,
    from_unit_names,
    rename_certificates,
    to_unit_names,
    without_js_modules,
)
from unit_p2p.sync.revision import Document, merge_exclusions, with_excluded_values
from unit_p2p.sync.store import StateStore
from unit_p2p.sync.uploads import Uploads

log = logging.getLogger("unit_p2p.sync.applier")

#: JSON pointers Unit's API can address as they are: object keys only, no escapes or indexes
_PLAIN_POINTER = re.compile(r"(?:/(?!\d+(?:/|$))[A-Za-z0-9._:*@-]+)+")
UNIT_POLL_INTERVAL = 5.0
UNIT_RETRY_INTERVAL = 1.0
#: the Unit poll waits at least this many times as long as the last poll took
UNIT_POLL_COST_FACTOR = 50


class UnitLike(Protocol):
    async def get(self, path: str = "/config") -> Any: ...
    async def put(self, path: str, value: Any) -> Any: ...
    async def put_raw(self, path: str, body: bytes) -> Any: ...
    async def delete(self, path: str) -> Any: ...


class Applier:
    def __init__(self, unit: UnitLike, store: StateStore, exclusions: tuple[str, ...],
                 metrics: Metrics, on_reachable: Callable[[], None],
                 on_observed: Callable[[str], None] = lambda digest: None):
        """``on_reachable`` is called when Unit answers again after being unreachable;
        ``on_observed(digest)`` after every read of the watch that was not part of an apply."""
        self.unit = unit
        self.store = store
        self.exclusions = exclusions
        self.metrics = metrics
        self._on_reachable = on_reachable
        self._on_observed = on_observed
        #: held while Unit is being moved (apply, publish, repair), so the watch never reads a
        #: config half-way through a change and takes it for drift
        self.lock = trio.Lock()
        self.reachable: bool | None = None
        self.error: str | None = None
        #: digest of what Unit holds (minus exclusions, names mapped back), as last read or
        #: written
        self.local_digest: str | None = None
        #: the document Unit should hold (the head's): its config digest is what the watch
        #: compares, its certificates name the bundles Unit holds under content-derived names
        self.expected: Document | None = None
        self.uploads = Uploads(unit, store)

    def expect(self, doc: Document | None) -> None:
        """``doc`` is the head's document now: Unit should hold it."""
        self.expected = doc
        self.metrics.certificate_expiry.clear()
        for name, entry in (doc.certificates if doc else {}).items():
            self.metrics.certificate_expiry.labels(name).set(
                resources.expiry_timestamp(entry["not_after"]))

    @property
    def expected_digest(self) -> str | None:
        return self.expected.config_digest if self.expected is not None else None

    @property
    def in_sync(self) -> bool:
        return bool(self.reachable and self.expected is not None
                    and self.local_digest == self.expected.config_digest)

    async def read(self) -> tuple[Any, str]:
        """Unit's config and its digest (minus exclusions, names mapped back)."""
        config = await self.unit.get("/config")
        return config, await self.digest_of(config)

    async def shared(self, config: Any, doc: Document | None = None) -> Document:
        """``config`` as Unit holds it, as the mesh shares it: minus exclusions, the bundles of
        ``doc`` (default: the expected document) named by NAME again. A big config is
        canonicalized off the trio loop (offload.py)."""
        doc = doc if doc is not None else self.expected
        names = from_unit_names(doc.certificates) if doc is not None else {}

        def build() -> Document:
            plain = Document.from_config(config, self.exclusions)
            if not names:
                return plain
            return Document.from_config(rename_certificates(plain.tree, names), ())

        return await config_pass(build, doc.size if doc is not None else None)

    async def digest_of(self, config: Any, doc: Document | None = None) -> str:
        return (await self.shared(config, doc)).digest

    async def apply(self, doc: Document, label: str, current: Document | None = None) -> None:
        """Make Unit hold ``doc`` (its resources, then its config plus this host's excluded
        values).

        ``current``: the document Unit was last seen holding (the head), if the caller has it.
        While Unit is known to hold it, only the excluded values are read from Unit (they are
        this host's own and may have been edited since), not the whole config: for a big config
        on Unit's unix socket, which cuts big answers, a whole read is half an apply's cost.

        Raises UnitUnreachable (transient), RevisionRejected (Unit refused it or a resource,
        or the read-back differs), other UnitErrors (Unit answered a read with an error) or
        OSError (backup).
        """
        local = None
        if current is not None and self.reachable and self.local_digest == current.config_digest:
            values = await self._read_excluded()
            if values is not None:
                local = await config_pass(
                    lambda: with_excluded_values(rename_certificates(
                        current.tree, to_unit_names(current.certificates)), values),
                    current.size)
        if local is None:
            local = await self.unit.get("/config")
        await self.move(doc, local, label)

    async def move(self, doc: Document, local: Any, label: str, *, put: bool = True) -> None:
        """Move Unit from ``local`` (what it holds) to ``doc``: resources, the config (unless
        ``put`` is false and no module had to be swapped), the cleanup. Raises as ``apply``."""
        await self.uploads.upload_certificates(doc)
        swapped = await self.uploads.upload_js_modules(doc)
        # copies of the whole config: off the trio loop when big, like every other pass over it
        target = await config_pass(
            lambda: merge_exclusions(rename_certificates(doc.tree,
                                                         to_unit_names(doc.certificates)),
                                     local, self.exclusions), doc.size)
        if put or swapped:
            # a record written without fsync (store.save_backup): small ones on the loop too
            await config_pass(lambda: self.store.save_backup(local, label), doc.size)
        if swapped:
            await self._swap_js_modules(doc, swapped, target, local)
        elif put:
            await self.put_verified(target, doc, rollback=local)
        await self.uploads.delete_unused(doc)

    async def _swap_js_modules(self, doc: Document, old: dict[str, str], target: Any,
                               local: Any) -> None:
        """Replace modules Unit holds under the same NAME with other text. Unit refuses to
        overwrite a module or delete one in use, so: PUT an interim config (the current one
        with those modules left out of ``settings.js_module``), delete and upload them, PUT the
        target. Any failure puts the old modules and the old config back. Between the interim
        and the target config, routes that call those modules run without them."""
        interim = without_js_modules(local, set(old))
        try:
            if interim != local:
                await self.put_verified(interim, None, rollback=local)
        except RevisionRejected as exc:
            raise RevisionRejected(exc.reason, f"JS module {', '.join(sorted(old))} changed: "
                                   f"Unit must stop using it to replace it, and refused the "
                                   f"config without it ({exc.detail}); publish the new code "
                                   "under a new module NAME instead") from None
        swapped: list[str] = []
        try:
            for name in sorted(old):
                await self.uploads.delete(JS_MODULES, name, strict=True)
                swapped.append(name)
                await self.uploads.put_js_module(name, await self.uploads.blob(
                    JS_MODULES, name, doc.js_modules[name]["digest"]))
            await self.put_verified(target, doc, rollback=interim)
        except (UnitError, SyncError):
            for name in swapped:
                try:
                    await self.uploads.delete(JS_MODULES, name, strict=False)
                    await self.uploads.put_js_module(
                        name, old[name].encode("utf-8", "surrogateescape"))
                except (UnitError, SyncError) as exc:
                    log.error("putting JS module %s back failed: %s", name, exc)
            await self._restore(local)
            raise

    async def _read_excluded(self) -> dict[str, Any] | None:
        """Unit's values at the excluded pointers, each read by its own path; None when a
        pointer is not a plain path (escapes, list positions): then the whole config is read."""
        values = {}
        for pointer in self.exclusions:
            if not _PLAIN_POINTER.fullmatch(pointer):
                return None
            try:
                values[pointer] = await self.unit.get("/config" + pointer)
            except UnitPathNotFound:
                continue  # not set on this host: nothing to keep
        return values

    async def put_verified(self, target: Any, doc: Document | None, rollback: Any) -> None:
        """PUT ``target`` (``doc``'s config as Unit names it; None: an interim config, compared
        as it is) and read it back; restore ``rollback`` if what Unit holds differs or cannot be
        read: a config no revision holds must never stay applied unrecorded."""
        try:
            await self.unit.put("/config", target)
        except UnitRejected as exc:
            raise RevisionRejected("unit_rejected", str(exc)) from None
        try:
            got_config = await self.unit.get("/config")
            if doc is None:
                got, want = got_config == target, True
            else:
                got, want = await self.digest_of(got_config, doc), doc.config_digest
        except (UnitError, SyncError) as exc:
            restored = await self._restore(rollback)
            raise RevisionRejected(
                "verify_failed", f"Unit took the PUT but reading it back failed ({exc}); "
                + restored) from None
        if got != want:
            restored = await self._restore(rollback)
            raise RevisionRejected("verify_failed",
                                   f"Unit holds {got} after PUT of {want}; {restored}")
        if doc is not None:
            self.set_state(True, None, got)

    async def _restore(self, rollback: Any) -> str:
        """Put the previous config back; says what happened, for the error that follows."""
        try:
            await self.unit.put("/config", rollback)
        except UnitError as exc:
            log.error("restoring the previous config failed too: %s", exc)
            return f"restoring the previous config failed too ({exc})"
        return "the previous config was restored"

    def set_state(self, reachable: bool, error: str | None, digest: str | None = None) -> None:
        if reachable and self.reachable is False:
            log.info("Unit is reachable again")
            self._on_reachable()
        elif not reachable and self.reachable is not False:
            log.warning("Unit unreachable: %s", error)
        self.reachable = reachable
        self.error = error
        self.metrics.unit_up.set(1 if reachable else 0)
        if digest is not None:
            self.local_digest = digest

    async def watch(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        first = True
        while True:
            started = trio.current_time()
            digest = None
            async with self.lock:
                try:
                    _, digest = await self.read()
                    self.set_state(True, None, digest)
                except (UnitShortAnswer, SyncError) as exc:
                    # Unit answered (a cut answer, or a config that is not an object): it is
                    # up, and what it holds is unknown until the next read.
                    self.set_state(True, str(exc))
                except UnitError as exc:
                    self.set_state(False, str(exc))
            if digest is not None:
                self._on_observed(digest)
            if first:
                task_status.started()
                first = False
            if not self.reachable:
                await trio.sleep(UNIT_RETRY_INTERVAL)
                continue
            # Reading, parsing and hashing the whole config is the poll's cost: a big config
            # (1.5 MB: seconds against the emulator, tens of ms against Unit) is polled less
            # often, so the watch never takes more than ~2 % of the agent's time.
            took = trio.current_time() - started
            await trio.sleep(max(UNIT_POLL_INTERVAL, took * UNIT_POLL_COST_FACTOR))

