"""A mesh node in its own process, for tests that need a real separate process.

Prints one JSON line {"peer_id": ..., "addrs": [...], "modules": [...]} once listening, then
serves an echo protocol until killed. ``--lean`` first: py-libp2p imported the agent's way
(unit_p2p/lean_libp2p.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "agent"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

if sys.argv[1:2] == ["--lean"]:
    del sys.argv[1]
    from unit_p2p import lean_libp2p

    assert lean_libp2p.install()

from helpers import make_mesh

ECHO = "/test/echo/1"


async def main() -> None:
    mesh, _, _ = make_mesh(bootstrap=tuple(sys.argv[1:]))

    async def echo(peer_id, stream):
        body = await stream.receive_all(1 << 20, timeout=10)
        await stream.send_all(body)
        await stream.close_write()

    mesh.set_stream_handler(ECHO, echo)
    async with trio.open_nursery() as nursery:
        addrs = await nursery.start(mesh.serve)
        print(json.dumps({"peer_id": mesh.peer_id, "addrs": addrs,
                          "modules": sorted(sys.modules)}), flush=True)


if __name__ == "__main__":
    trio.run(main)
