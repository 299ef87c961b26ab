"""Deadlines that hold even when py-libp2p shields itself from cancellation.

``BasicHost.new_stream`` resets a stream that failed to open inside
``trio.CancelScope(shield=True)``; over a dead path that reset blocks until TCP gives up, 60-85 s
measured in the netns partition tests, and no ``fail_after`` around the call can end it. A
pinger or a push stuck there stalls everything waiting on it (liveness never drops the peer, the
reconciler's broadcast never returns).

``call_abandonable`` runs the call in a task of a long-lived nursery and waits for it with a
deadline. Past the deadline the caller gets ``trio.TooSlowError`` at once; the task is cancelled
and finishes in the background whenever the shielded part lets it, and a late result is handed
to ``discard`` (e.g. to reset a stream nobody will use).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")


async def call_abandonable(nursery: trio.Nursery, timeout: float,
                           fn: Callable[..., Awaitable[T]], *args: Any,
                           discard: Callable[[T], Awaitable[None]] | None = None) -> T:
    done = trio.Event()
    scope = trio.CancelScope()
    outcome: dict[str, Any] = {}
    abandoned = False

    async def run() -> None:
        try:
            with scope:
                try:
                    value = await fn(*args)
                except Exception as exc:  # handed to the caller, not raised in the nursery
                    outcome["error"] = exc
                else:
                    outcome["value"] = value
                    if abandoned and discard is not None:
                        await discard(value)
        finally:
            done.set()

    nursery.start_soon(run)
    try:
        with trio.fail_after(timeout):
            await done.wait()
    except BaseException:
        # Timed out, or the caller itself was cancelled: either way nobody will take the result.
        abandoned = True
        scope.cancel()
        raise
    if "error" in outcome:
        raise outcome["error"]
    if "value" not in outcome:  # cancelled from outside the caller's scope
        raise trio.TooSlowError
    return outcome["value"]
