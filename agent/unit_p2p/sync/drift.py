"""Drift: Unit holding something other than the head, for reasons other than an apply.

A Unit restarted from a stale state directory, reinstalled empty or edited by hand. The Unit
watch hands every digest it reads (outside any apply) to ``observed``, which keeps the state and
says what should happen; the reconciler decides and acts. ``repair`` re-applies the head the way
an apply does (this host's values at the excluded pointers kept, backup first, read back).
"""

from __future__ import annotations

import enum
import logging
import time

import trio

from unit_p2p.errors import RevisionRejected, SyncError, UnitError
from unit_p2p.metrics import Metrics
from unit_p2p.sync.applier import Applier
from unit_p2p.sync.revision import Head
from unit_p2p.sync.store import StateStore

log = logging.getLogger("unit_p2p.sync.drift")

#: a failed repair is tried again after this, doubling up to RETRY_MAX
RETRY_FIRST = 5.0
RETRY_MAX = 300.0


class Step(enum.Enum):
    """What ``observed`` asks of the reconciler."""

    REPAIR = "repair"  # re-apply the head (``repair``)
    REPORT = "report"  # tell publishers this host does not run the head
    OVER = "over"  # Unit holds the head again after a drift that was reported


class Drift:
    def __init__(self, action: str, applier: Applier, store: StateStore, metrics: Metrics):
        """``action``: the ``on_drift`` setting, ``repair`` or ``report``."""
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

    def observed(self, digest: str, head: Head | None) -> Step | None:
        """Unit holds ``digest`` (minus exclusions), read outside any apply."""
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

