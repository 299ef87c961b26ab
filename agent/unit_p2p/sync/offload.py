"""Where a pass over a whole config runs (a copy, a hash, its dump to a record file written
without fsync): on the trio loop when the config is small, in a worker thread when it is big.

A big config (MiBs) takes a good part of a second to copy, canonicalize or hash, and on the loop
that would hold the API and the mesh meanwhile. A small one (most Unit configs are a few KiB)
takes well under a millisecond, less than the hop to a worker thread and back: two GIL hand-offs,
each waiting up to the interpreter's 5 ms switch interval while the loop is busy, which is
exactly when a publish arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")

#: configs up to this many bytes are passed over on the loop
INLINE_BYTES = 64 * 1024


async def config_pass(fn: Callable[[], T], size: int | None) -> T:
    """``fn()``, a pass over a config of about ``size`` bytes (None: not known, so maybe big)."""
    if size is not None and size <= INLINE_BYTES:
        return fn()
    return await trio.to_thread.run_sync(fn)
