"""Hostile input against a whole agent over real libp2p.

A peer with a valid connection sends garbage, truncated frames, oversize bodies and forged
revisions on unit-p2p's own protocols. Expected every time: nothing applied, the old config
still in Unit, a counter naming the reason, and the agent still serving.
"""

from __future__ import annotations

import struct

import trio

from tests.agent.harness import NEW, running_agent
from tests.mesh.helpers import start_node
from unit_p2p.sync import wire
from unit_p2p.sync.revision import Document, Head, Revision, sign_revision


async def raw_stream(attacker, agent, protocol):
    stream = await attacker.mesh.open_stream(agent.peer_id, protocol)
    return stream


async def send_raw(attacker, agent, protocol: str, payload: bytes, framed: bool = True):
    stream = await raw_stream(attacker, agent, protocol)
    try:
        if framed:
            await stream.send_all(payload)
            await stream.close_write()
        else:
            await stream.raw.write(payload)  # bypass our framing entirely
            await stream.raw.close_write()
        try:
            return await stream.receive_all(1 << 20, 5)
        except Exception:
            return None  # the agent reset the stream: that is the expected answer to garbage
    finally:
        await stream.close()


async def test_garbage_on_our_protocols_is_counted_and_harmless(tmp_path):
    async with running_agent(tmp_path) as (agent, emulator), trio.open_nursery() as nursery:
        attacker = await start_node(nursery, mesh="apitest")
        before = emulator.config
        with trio.fail_after(60):
            await attacker.mesh.connect(agent.listen_addrs[0])
            for protocol in (wire.PROTO_NOTIFY, wire.PROTO_HEADS, wire.PROTO_PULL):
                for junk in (b"", b"\xff" * 64, b'{"v":2,"type":"nohead"}', b"{" * 3000,
                             b'{"v":2,"type":"pull","mesh":"apitest","digest":"sha256:00"}'):
                    await send_raw(attacker, agent, protocol, junk)
                # unframed garbage, a truncated frame header, a frame claiming 4 GiB
                await send_raw(attacker, agent, protocol, b"\x07garbage", framed=False)
                await send_raw(attacker, agent, protocol, b"\x01\x00", framed=False)
                await send_raw(attacker, agent, protocol,
                               struct.pack(">BI", 1, 0xFFFFFFF0) + b"x", framed=False)
            # a pull for a digest nobody has gets a clean "not found"
            digest = "sha256:" + "0" * 64
            answer = await send_raw(attacker, agent, wire.PROTO_PULL,
                                    wire.encode(wire.Pull("apitest", digest)))
            assert answer is not None and b'"not_found"' in answer
            status = agent.status()
        rejected = status["counters"]["rejected"]
        assert rejected.get("malformed", 0) >= 3
        assert rejected.get("schema", 0) >= 1
        assert emulator.config == before and agent.reconciler.head is None
        with trio.fail_after(20):
            result = await agent.reconciler.publish(NEW)  # and it still works
        assert result.changed and emulator.config == NEW
        nursery.cancel_scope.cancel()


async def test_forged_and_oversized_announcements_over_a_real_stream(tmp_path):
    async with running_agent(tmp_path) as (agent, emulator), trio.open_nursery() as nursery:
        attacker = await start_node(nursery, mesh="apitest")
        doc = Document.from_config(NEW, ())
        victim_origin = agent.peer_id  # claim the agent's own identity as origin
        rev = Revision(99, victim_origin)
        forged = Head(rev, doc.digest, doc.size,
                      sign_revision(attacker.keypair.private_key, "apitest", rev, doc.digest))
        rev2 = Revision(100, attacker.peer_id)
        huge = Head(rev2, doc.digest, agent.settings.max_config_bytes + 1,
                    sign_revision(attacker.keypair.private_key, "apitest", rev2, doc.digest))
        before = emulator.config
        with trio.fail_after(60):
            await attacker.mesh.connect(agent.listen_addrs[0])
            await send_raw(attacker, agent, wire.PROTO_NOTIFY,
                           wire.encode(wire.Announce("apitest", forged)))
            await send_raw(attacker, agent, wire.PROTO_NOTIFY,
                           wire.encode(wire.Announce("apitest", huge)))
            await send_raw(attacker, agent, wire.PROTO_NOTIFY,
                           wire.encode(wire.Announce("othermesh", forged)))
            while len(agent.status()["counters"]["rejected"]) < 3:  # noqa: ASYNC110
                await trio.sleep(0.05)
        rejected = agent.status()["counters"]["rejected"]
        assert rejected["bad_signature"] == 1
        assert rejected["too_large"] == 1
        assert rejected["wrong_mesh"] == 1
        assert emulator.config == before and agent.reconciler.head is None
        nursery.cancel_scope.cancel()


async def test_untrusted_peer_cannot_connect_or_announce(tmp_path):
    async with trio.open_nursery() as nursery:
        attacker = await start_node(nursery, mesh="apitest")
        friend = await start_node(nursery, mesh="apitest")
        async with running_agent(tmp_path, trust="allowlist",
                                 trusted_peers=(friend.peer_id,)) as (agent, emulator):
            before = emulator.config
            with trio.fail_after(30):
                try:
                    await attacker.mesh.connect(agent.listen_addrs[0])
                    refused_at_connect = False
                except Exception:
                    refused_at_connect = True
                await friend.mesh.connect(agent.listen_addrs[0])
                assert friend.peer_id in agent.mesh.connected_peers()
            assert refused_at_connect or attacker.peer_id not in agent.mesh.connected_peers()
            assert agent.status()["counters"]["rejected"].get("untrusted_connection", 0) >= 1
            assert emulator.config == before
        nursery.cancel_scope.cancel()
