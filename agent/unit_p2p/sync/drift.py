"""Drift: Unit holding something other than the head, for reasons other than an apply.

A Unit restarted from a stale state directory, reinstalled empty or edited by hand. The Unit
watch hands every digest it reads (outside any apply) to ``observed``, which keeps the state and
acts on it by ``on_drift``: ``repair`` re-applies the head the way an apply does (this host's
values at the excluded pointers kept, backup first, read back), ``report`` leaves Unit alone and
tells publishers this host does not run the head; both tell them again once it does.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import trio

from unit_p2p.errors import RevisionRejected, SyncError, UnitError
from unit_p2p.metrics import Metrics
from unit_p2p.sync.applier import Applier
from unit_p2p.sync.convergence import APPLIED, FAILED, Convergence
from unit_p2p.sync.revision import Head, Revision
from unit_p2p.sync.store import StateStore

log = logging.getLogger("unit_p2p.sync.drift")

#: a failed repair is tried again after this, doubling up to RETRY_MAX
RETRY_FIRST = 5.0
RETRY_MAX = 300.0


class DriftHost(Protocol):
    """What drift handling reads of the reconciler, and the calls it makes on it."""

    peer_id: str
    head: Head | None
    last_error: dict | None
    convergence: Convergence
    spread: Any

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None: ...
    async def record_error(self, revision: Revision, reason: str, detail: str) -> None: ...
    async def clear_error(self) -> None: ...


class Step(enum.Enum):
    """What a digest read from Unit calls for."""

    REPAIR = "repair"  # re-apply the head (``repair``)
    REPORT = "report"  # tell publishers this host does not run the head
    OVER = "over"  # Unit holds the head again after a drift that was reported


class Drift:
    def __init__(self, host: DriftHost, action: str, applier: Applier, store: StateStore,
                 metrics: Metrics):
        """``action``: the ``on_drift`` setting, ``repair`` or ``report``."""
        self.host = host
        self.action = action
        self.applier = applier
        self.store = store
        self.metrics = metrics
        #: while drifted: what Unit holds, the head's digest, since when; else None
        self.state: dict | None = None
        #: publishers were told this host failed the head (reported drift)
        self.reported = False
        self._repairing = False
        self._retry_at = 0.0
        self._backoff = RETRY_FIRST

    def view(self) -> dict | None:
        return None if self.state is None else dict(self.state)

    def observed(self, digest: str) -> None:
        """Unit holds ``digest`` (minus exclusions), read outside any apply (the Unit watch)."""
        head = self.host.head
        step = self.step(digest, head)
        if step is Step.REPAIR:
            self.host.spawn(self._repair, head)
        elif step is not None:
            self.host.spawn(self._report, head, step, f"Unit holds {digest}")

    def step(self, digest: str, head: Head | None) -> Step | None:
        """What Unit holding ``digest`` calls for (and the drift state it leaves)."""
        expected = self.applier.expected_digest
        if head is None or expected is None or digest == expected:
            return self._over() if self.state is not None else None
        first = self.state is None
        self.state = {"digest": digest, "head": expected,
                      "since": time.time() if first else self.state["since"]}
        self.metrics.drifted.set(1)
        if self.action == "repair":
            if self._repairing or time.monotonic() < self._retry_at:
                return None
            self._repairing = True
            return Step.REPAIR
        if first:
            log.warning("drift: Unit holds %s, not the head %s; on_drift: report leaves it so",
                        digest, head.revision)
            self.reported = True
            return Step.REPORT
        return None

    def _over(self) -> Step | None:
        reported = self.reported
        self.state, self.reported = None, False
        self.metrics.drifted.set(0)
        self._retry_at, self._backoff = 0.0, RETRY_FIRST
        return Step.OVER if reported else None

    async def repair(self, head: Head) -> Step | None:
        """Re-apply ``head`` (the caller made sure it is still the head). Returns what to tell
        publishers: OVER after a repair of a reported drift, else None. Raises what the apply
        raised (UnitError, SyncError, OSError); the next try then waits, doubling."""
        try:
            async with self.applier.lock:
                _, digest = await self.applier.read()
                if digest == self.applier.expected_digest:
                    return self._over()
                doc = await trio.to_thread.run_sync(self.store.load_document, head.digest)
                if doc is None:
                    raise RevisionRejected("drift", "the head's document is not on disk")
                log.warning("drift: Unit holds %s, not the head %s: re-applying the head",
                            digest, head.revision)
                started = time.monotonic()
                await self.applier.apply(doc, f"drift-{head.revision.counter}")
        except (UnitError, SyncError, OSError) as exc:
            self.metrics.drift_repairs.labels("failed").inc()
            self._retry_at = time.monotonic() + self._backoff
            log.error("drift repair of %s failed (next try in %.0f s): %s", head.revision,
                      self._backoff, exc)
            self._backoff = min(self._backoff * 2, RETRY_MAX)
            raise
        finally:
            self._repairing = False
        self.metrics.drift_repairs.labels("ok").inc()
        log.info("drift repaired: head %s re-applied in %.1f ms", head.revision,
                 (time.monotonic() - started) * 1000)
        return self._over()

    def repair_failed_reported(self) -> bool:
        """After a failed repair: True the first time, when publishers must be told."""
        if self.state is None or self.reported:
            return False
        self.reported = True
        return True

    async def _repair(self, head: Head) -> None:
        host = self.host
        if host.head != head:
            return  # an apply or a publish moved on meanwhile
        try:
            step = await self.repair(head)
        except (UnitError, SyncError, OSError) as exc:
            await host.record_error(head.revision, "drift_repair_failed", str(exc))
            if self.repair_failed_reported():
                await self._report(head, Step.REPORT, f"repair failed: {exc}")
            return
        if host.last_error and host.last_error.get("reason") == "drift_repair_failed":
            await host.clear_error()
        if step is not None:
            await self._report(head, step, "")

    async def _report(self, head: Head, step: Step, detail: str) -> None:
        """A drifted host must not count as applied in anyone's wait; once Unit holds the head
        again, it does."""
        status, reason = (FAILED, f"drift: {detail}"[:500]) if step is Step.REPORT \
            else (APPLIED, None)
        self.host.convergence.record(self.host.peer_id, head.revision, status, reason)
        await self.host.spread.report(head.revision, head.digest, status, reason)
