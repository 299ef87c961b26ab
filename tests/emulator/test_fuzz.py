"""Random bytes on the control socket: each connection ends cleanly, the server stays up."""

from __future__ import annotations

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unit_p2p.unit.emulator import UnitEmulator
from unit_p2p.unit.emulator.rawclient import exchange, request

PREFIXES = [b"", b"GET / HTTP/1.1\r\n", b"PUT /config HTTP/1.1\r\nContent-Length: 5\r\n\r\n"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(prefix=st.sampled_from(PREFIXES), noise=st.binary(max_size=300))
def test_random_requests_never_break_the_server(tmp_path_factory, prefix: bytes, noise: bytes):
    path = tmp_path_factory.mktemp("fuzz") / "c.sock"

    async def main() -> None:
        emulator = UnitEmulator(f"unix:{path}", read_timeout=2)
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                address = await nursery.start(emulator.serve)
                got = await exchange(address, prefix + noise, half_close=True)
                if got.status is not None:
                    assert got.headers["Connection"] == "close"
                    assert got.status in (200, 400, 404, 405)
                assert (await request(address, "GET", "/status")).status == 200
                nursery.cancel_scope.cancel()

    trio.run(main)
