"""A pass over a small config stays on the trio loop; a big or unknown one goes to a thread."""

from __future__ import annotations

import threading

import trio

from unit_p2p.sync.offload import INLINE_BYTES, config_pass


async def test_small_configs_stay_on_the_loop_and_big_ones_leave_it():
    loop_thread = threading.get_ident()
    with trio.fail_after(10):
        small = await config_pass(threading.get_ident, INLINE_BYTES)
        big = await config_pass(threading.get_ident, INLINE_BYTES + 1)
        unknown = await config_pass(threading.get_ident, None)
    assert small == loop_thread
    assert big != loop_thread and unknown != loop_thread
