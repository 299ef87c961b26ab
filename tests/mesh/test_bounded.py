"""Deadlines that hold against py-libp2p's shielded cleanup (mesh/bounded.py)."""

from __future__ import annotations

import pytest
import trio

from unit_p2p.mesh.bounded import call_abandonable


async def shielded_sleep(seconds: float, value: str) -> str:
    with trio.CancelScope(shield=True):  # what BasicHost.new_stream does around its reset
        await trio.sleep(seconds)
    return value


async def test_deadline_holds_against_a_shielded_call(autojump_clock):
    discarded = []

    async def discard(value):
        discarded.append(value)

    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        with pytest.raises(trio.TooSlowError):
            await call_abandonable(nursery, 1.0, shielded_sleep, 60.0, "late",
                                   discard=discard)
        assert trio.current_time() - started == pytest.approx(1.0)
    # the abandoned call finished in the background and its result was handed to discard
    assert discarded == ["late"]


async def test_result_and_errors_pass_through():
    async def boom():
        raise ValueError("nope")

    async with trio.open_nursery() as nursery:
        assert await call_abandonable(nursery, 5, shielded_sleep, 0, "ok") == "ok"
        with pytest.raises(ValueError, match="nope"):
            await call_abandonable(nursery, 5, boom)


async def test_plain_fail_after_would_not_hold(autojump_clock):
    # the control: without the helper the shielded call overruns its deadline
    started = trio.current_time()
    with trio.move_on_after(1.0):
        await shielded_sleep(60.0, "x")
    assert trio.current_time() - started == pytest.approx(60.0)
