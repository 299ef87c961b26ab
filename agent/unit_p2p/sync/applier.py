"""Move the local Unit to a document, and watch it.

An apply reads Unit's config, keeps this host's values at the excluded pointers, backs the old
config up, PUTs the new one and reads it back: Unit rejects atomically (the old config stays), and
a read-back that differs (someone wrote meanwhile, or Unit rewrote it) or that fails restores the
old config. The watch polls Unit so ``status`` can say whether it answers and whether it holds our
head; every digest it reads goes to ``on_observed``, where the reconciler decides about drift.

A new Unit resource that needs its own handling on apply belongs here.
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
from unit_p2p.sync.revision import Document, merge_exclusions, with_excluded_values
from unit_p2p.sync.store import StateStore

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
        #: digest of what Unit holds (minus exclusions), as last read or written
        self.local_digest: str | None = None

    async def read(self) -> tuple[Any, str]:
        """Unit's config and its digest (minus exclusions)."""
        config = await self.unit.get("/config")
        return config, await self.digest_of(config)

    async def digest_of(self, config: Any) -> str:
        """The digest of ``config`` minus exclusions, computed off the trio loop: a big config
        takes a good part of a second to canonicalize, and the API must keep answering."""
        return (await trio.to_thread.run_sync(Document.from_config, config,
                                              self.exclusions)).digest

    async def apply(self, doc: Document, label: str, current: Document | None = None) -> None:
        """Make Unit hold ``doc`` plus this host's excluded values.

        ``current``: the document Unit was last seen holding (the head), if the caller has it.
        While Unit is known to hold it, only the excluded values are read from Unit (they are
        this host's own and may have been edited since), not the whole config: for a big config
        on Unit's unix socket, which cuts big answers, a whole read is half an apply's cost.

        Raises UnitUnreachable (transient), RevisionRejected (Unit refused it, or the read-back
        differs), other UnitErrors (Unit answered a read with an error) or OSError (backup).
        """
        local = None
        if current is not None and self.reachable \
                and self.local_digest == current.config_digest:
            values = await self._read_excluded()
            if values is not None:
                local = with_excluded_values(current.tree, values)
        if local is None:
            local = await self.unit.get("/config")
        target = merge_exclusions(doc.tree, local, self.exclusions)
        await trio.to_thread.run_sync(self.store.save_backup, local, label)
        await self.put_verified(target, doc.config_digest, rollback=local)

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

    async def put_verified(self, target: Any, digest: str, rollback: Any) -> None:
        """PUT ``target`` and read it back; restore ``rollback`` if what Unit holds differs or
        cannot be read: a config no revision holds must never stay applied unrecorded."""
        try:
            await self.unit.put("/config", target)
        except UnitRejected as exc:
            raise RevisionRejected("unit_rejected", str(exc)) from None
        try:
            got = await self.digest_of(await self.unit.get("/config"))
        except (UnitError, SyncError) as exc:
            restored = await self._restore(rollback)
            raise RevisionRejected(
                "verify_failed", f"Unit took the PUT but reading it back failed ({exc}); "
                + restored) from None
        if got != digest:
            restored = await self._restore(rollback)
            raise RevisionRejected("verify_failed",
                                   f"Unit holds {got} after PUT of {digest}; {restored}")
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
