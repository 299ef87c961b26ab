"""A graceful stop of a real agent process: SIGTERM while its peers keep running.

The agent stops its components in reverse start order (API, reconciler, mesh) under one
deadline; nothing of that may surface as a traceback, whichever peer event is in flight.
"""

from __future__ import annotations

import signal

import trio

from tests.agent.harness import Fleet

ROUNDS = 3


async def _connected(agent, peers: int) -> None:
    while (await agent.call("status"))["peers"]["connected"] < peers:  # noqa: ASYNC110 - another process
        await trio.sleep(0.1)


async def test_repeated_sigterm_stops_cleanly_without_traceback(tmp_path):
    async with trio.open_nursery() as nursery:
        fleet = Fleet(tmp_path, nursery, 3)
        fleet.topology("mesh")
        for a in fleet:
            # the production log level: at debug, handler failures carry their traceback on
            # purpose (mesh/guard.py), and a peer that stops mid-stream is such a failure
            a.extra_args = ["--no-mdns", "--log-level", "info"]
        try:
            with trio.fail_after(60):
                await fleet.start()
                for a in fleet:
                    await _connected(a, 2)
            logs: list[str] = []
            for round_ in range(ROUNDS):
                a = fleet[round_ % len(fleet)]
                a.proc.send_signal(signal.SIGTERM)
                code = await trio.to_thread.run_sync(a.proc.wait, 30)
                logs.append(a.log_tail(100_000))
                assert code == 0, logs[-1][-3000:]
                assert "Traceback" not in logs[-1], logs[-1][-6000:]
                assert f"agent {a.peer_id} stopped" in logs[-1], logs[-1][-3000:]
                with trio.fail_after(60):
                    a.start()  # back, so the next stop happens among connected peers again
                    await a.wait_ready()
                    for b in fleet:
                        await _connected(b, 2)
        finally:
            await trio.to_thread.run_sync(fleet.stop)
            nursery.cancel_scope.cancel()
        for a in fleet:
            tail = a.log_tail(100_000)
            assert "Traceback" not in tail, tail[-6000:]
            assert "stop took longer" not in tail, tail[-3000:]
