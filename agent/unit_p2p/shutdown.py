"""Graceful shutdown: one deadline bounds all of it.

The agent stops its components in the reverse order of their start (the API, then the
reconciler, then the mesh) and each runs its own cleanup: the API removes its socket, the mesh
closes its connections so peers see a clean goodbye instead of a dead link, mDNS withdraws its
record. All of that shares one deadline, ``SHUTDOWN_GRACE`` seconds after the stop began
(hypercorn's ``graceful_timeout``); whatever still runs then is cancelled.

Cleanup that must run even though its task was cancelled sits in ``cleanup_scope()``: shielded
from that cancellation, and ended by the same deadline. Outside an agent's stop (a test that
cancels a mesh, say) it gets ``SHUTDOWN_GRACE`` from the moment it starts.
"""

from __future__ import annotations

import math
from contextvars import ContextVar

import trio

#: seconds from the stop request (SIGTERM, SIGINT) until whatever still runs is cancelled
SHUTDOWN_GRACE = 5.0


class StopDeadline:
    """When one agent's stop must be over; ``math.inf`` until the stop begins.

    ``share()`` makes it the deadline of the calling task and of every task started from it
    afterwards (trio tasks inherit their parent's context), so the agent's components find it
    without passing it through every layer.
    """

    def __init__(self) -> None:
        self.at = math.inf

    def begin(self, grace: float = SHUTDOWN_GRACE) -> float:
        if self.at == math.inf:
            self.at = trio.current_time() + grace
        return self.at

    def share(self) -> None:
        _current.set(self)


_current: ContextVar[StopDeadline | None] = ContextVar("unit_p2p_stop_deadline", default=None)


def cleanup_scope() -> trio.CancelScope:
    """A shielded scope for cleanup, ended by the agent's stop deadline if a stop has begun,
    otherwise ``SHUTDOWN_GRACE`` seconds from now."""
    stop = _current.get()
    if stop is not None and stop.at != math.inf:
        return trio.CancelScope(shield=True, deadline=stop.at)
    return trio.CancelScope(shield=True, deadline=trio.current_time() + SHUTDOWN_GRACE)
