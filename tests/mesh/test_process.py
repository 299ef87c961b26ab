"""Against a mesh node in a separate process: SIGKILL and hostile input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import trio
import varint
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from .helpers import start_node

NODE = Path(__file__).with_name("node_proc.py")


async def _spawn(*bootstrap: str):
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(NODE), *bootstrap], stdout=subprocess.PIPE)
    buffer = b""
    with trio.fail_after(30):
        while b"\n" not in buffer:
            chunk = await proc.stdout.receive_some(4096)
            assert chunk, "node process exited before listening"
            buffer += chunk
    return proc, json.loads(buffer.split(b"\n", 1)[0])


async def _echo(node, peer_id: str, body: bytes) -> bytes:
    stream = await node.mesh.open_stream(peer_id, "/test/echo/1")
    await stream.send_all(body)
    await stream.close_write()
    return await stream.receive_all(1 << 20, timeout=10)


async def test_sigkilled_process_is_noticed_at_once(nursery):
    local = await start_node(nursery)
    proc, info = await _spawn(local.addr)
    try:
        with trio.fail_after(15):
            await local.events.wait_until(lambda: info["peer_id"] in local.events.connected)
        proc.send_signal(signal.SIGKILL)
        killed = trio.current_time()
        with trio.fail_after(5):  # the kernel closes the socket: no ping timeout involved
            await local.events.wait_until(lambda: info["peer_id"] not in local.events.connected)
        print(f"SIGKILL noticed after {(trio.current_time() - killed) * 1000:.0f} ms")
    finally:
        proc.kill()
        with trio.fail_after(5):
            await proc.wait()


async def test_lean_process_and_published_library_talk_noise_both_ways(nursery):
    """The lean agent's Noise runs on PyNaCl (lean_noise.py), the published library's on
    cryptography: a handshake each way and encrypted traffic both ways."""
    local = await start_node(nursery)
    proc, info = await _spawn("--lean", local.addr)  # the lean node dials: it is the initiator
    try:
        assert "cryptography.hazmat.bindings._rust" not in info["modules"]
        with trio.fail_after(15):
            await local.events.wait_until(lambda: info["peer_id"] in local.events.connected)
            body = bytes(range(256)) * 300  # several Noise frames
            assert await _echo(local, info["peer_id"], body) == body
        other = await start_node(nursery)
        with trio.fail_after(15):  # the published library dials: the lean node responds
            await other.mesh.connect(info["addrs"][0])
            assert await _echo(other, info["peer_id"], b"hello") == b"hello"
    finally:
        proc.kill()
        with trio.fail_after(5):
            await proc.wait()


async def test_meshsub_attack_leaves_the_process_running(nursery):
    proc, info = await _spawn()
    try:
        attacker = await start_node(nursery)
        with trio.fail_after(15):
            await attacker.mesh.connect(info["addrs"][0])
            raw = await attacker.mesh._host.new_stream(ID.from_base58(info["peer_id"]),
                                                       [TProtocol("/meshsub/1.2.0")])
            await raw.write(varint.encode(64) + b"\xff" * 64)
            # the victim answers a normal request afterwards, from the same process
            assert await _echo(attacker, info["peer_id"], b"still alive") == b"still alive"
        assert proc.returncode is None
    finally:
        proc.kill()
        with trio.fail_after(5):
            await proc.wait()
