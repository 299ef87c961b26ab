"""AsyncUnitClient keeps the trio loop running while Unit takes its time."""

from __future__ import annotations

import threading
import time

import pytest
import trio

from unit_p2p import errors
from unit_p2p.unit.client import AsyncUnitClient


async def wait_for(flag: threading.Event, seconds: float = 5) -> None:
    """Wait for a server thread's flag without blocking the loop."""
    assert await trio.to_thread.run_sync(flag.wait, seconds), "the server saw no request"


async def test_the_loop_runs_while_a_call_waits(serve, transcript):
    release = threading.Event()
    server = serve([transcript["get_config_fresh"]], hold=True, release=release)
    client = AsyncUnitClient(server.address, timeout=5)
    result = {}

    async def call():
        result["config"] = await client.get()

    ticks = 0
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            # Had the call blocked the loop, this task could not run until the server gave up
            # holding (10 s, beyond fail_after) and the call had already returned.
            await wait_for(server.got_request)
            for _ in range(5):
                await trio.sleep(0.01)
                ticks += 1
            assert "config" not in result
            release.set()
    assert ticks == 5
    assert result["config"] == {"listeners": {}, "routes": [], "applications": {}}


async def test_cancel_returns_at_once_even_if_unit_does_not(serve):
    server = serve(hold=True)  # reads the request, never answers
    client = AsyncUnitClient(server.address, timeout=10)
    started = time.monotonic()
    with trio.fail_after(5), trio.move_on_after(0.2) as scope:
        await client.put("/config", {})
    assert scope.cancelled_caught
    assert time.monotonic() - started < 2
    assert server.got_request.is_set()


async def test_errors_come_through_unchanged(serve, transcript, sock_dir):
    server = serve([transcript["h2_put_listener_port_in_use"], transcript["post_to_config_root"]])
    client = AsyncUnitClient(server.address, timeout=5)
    with trio.fail_after(5):
        with pytest.raises(errors.UnitApplyFailed):
            await client.put("/config", {"listeners": {}})
        with pytest.raises(errors.UnitMethodNotAllowed):
            await client.post("/config", {})
        with pytest.raises(errors.UnitUnreachable, match="does not exist"):
            await AsyncUnitClient(f"unix:{sock_dir}/none.sock").delete("/config")


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
async def test_concurrent_calls_share_one_client(serve, transcript, caplog, tcp):
    n = 24
    server = serve([transcript["get_config_fresh"]] * n, tcp=tcp)
    client = AsyncUnitClient(server.address, timeout=5)
    results = []

    async def call():
        results.append(await client.get())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(call)
    assert results == [{"listeners": {}, "routes": [], "applications": {}}] * n
    assert len(server.received) == n
    # urllib3 warns when more connections are open at once than its pool keeps
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]
