"""Noise only, and the connection-layer allowlist, against real second hosts."""

from __future__ import annotations

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.x25519 import create_new_key_pair as x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.secio import transport as secio
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from unit_p2p.errors import MeshError
from unit_p2p.mesh import TrustPolicy

from .helpers import new_keypair, peer_id_of, start_node


def _foreign_host(security: str):
    """A stock py-libp2p host offering exactly one security transport."""
    kp = new_keypair()
    options = {
        "plaintext": {TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(kp)},
        "secio": {TProtocol(secio.ID): secio.Transport(kp)},
        "noise": {
            TProtocol(NOISE_ID): NoiseTransport(kp, noise_privkey=x25519_key_pair().private_key)
        },
    }[security]
    return new_host(key_pair=kp, sec_opt=options, muxer_opt={TProtocol(YAMUX_ID): Yamux})


async def _dial_from_foreign(host, addr: str) -> bool:
    """True if the foreign host got a connection to ``addr``."""
    info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
    async with background_trio_service(host.get_network()):
        try:
            with trio.fail_after(10):
                await host.connect(info)
        except Exception:
            return False
        return bool(host.get_network().get_connections(info.peer_id))


@pytest.mark.parametrize("security", ["plaintext", "secio"])
async def test_dialer_without_noise_is_refused(nursery, security):
    node = await start_node(nursery)
    assert not await _dial_from_foreign(_foreign_host(security), node.addr)
    assert node.mesh.connected_peers() == []


async def test_noise_dialer_is_accepted_control(nursery):
    # Control for the test above: the same stock host with Noise gets in (trust "any").
    node = await start_node(nursery)
    host = _foreign_host("noise")
    assert await _dial_from_foreign(host, node.addr)
    with trio.fail_after(5):
        await node.events.wait_until(lambda: host.get_id().to_base58() in node.events.connected)


async def test_allowlist_refuses_untrusted_right_after_handshake(nursery):
    friend_kp, stranger_kp, hub_kp = new_keypair(), new_keypair(), new_keypair()
    hub = await start_node(nursery, keypair=hub_kp, trust_mode="allowlist",
                           trusted=[peer_id_of(friend_kp)])
    friend = await start_node(nursery, keypair=friend_kp, trust_mode="allowlist",
                              trusted=[peer_id_of(hub_kp)])
    stranger = await start_node(nursery, keypair=stranger_kp)  # trusts anyone

    with trio.fail_after(10):
        assert await friend.mesh.connect(hub.addr) == hub.peer_id
        with pytest.raises(MeshError):
            await stranger.mesh.connect(hub.addr)
        await hub.events.wait_until(lambda: friend.peer_id in hub.events.connected)

    assert hub.mesh.connected_peers() == [friend.peer_id]
    assert stranger.peer_id not in hub.events.connected
    assert ("connected", stranger.peer_id) not in hub.events.log
    assert hub.mesh.trust.rejected["untrusted_connection"] == 1
    # never registered with the swarm, visible in peers() as refused
    assert not hub.mesh._host.get_network().get_connections(stranger.mesh._host.get_id())
    refused = {p.peer_id: p for p in hub.mesh.peers()}[stranger.peer_id]
    assert (refused.connected, refused.trusted) == (False, False)
    # the stranger saw no connection either
    assert stranger.mesh.connected_peers() == []


async def test_allowlist_refuses_outbound_to_untrusted(nursery):
    hub_kp = new_keypair()
    hub = await start_node(nursery, keypair=hub_kp, trust_mode="allowlist", trusted=[])
    other = await start_node(nursery)
    with trio.fail_after(10), pytest.raises(MeshError):
        await hub.mesh.connect(other.addr)
    assert hub.mesh.trust.rejected["untrusted_connection"] == 1
    assert hub.mesh.connected_peers() == [] and other.mesh.connected_peers() == []


async def test_trust_any_accepts_every_peer(nursery):
    hub = await start_node(nursery)
    others = [await start_node(nursery) for _ in range(3)]
    with trio.fail_after(10):
        for other in others:
            await other.mesh.connect(hub.addr)
        await hub.events.wait_until(lambda: len(hub.events.connected) == 3)
    assert sum(hub.mesh.trust.rejected.values()) == 0


def test_trust_policy_rules():
    me, friend, stranger = (peer_id_of(new_keypair()) for _ in range(3))
    policy = TrustPolicy("allowlist", [friend], me)
    assert policy.is_trusted(me) and policy.is_trusted(friend)
    assert not policy.is_trusted(stranger) and not policy.is_trusted("")
    assert TrustPolicy("any", [], me).is_trusted(stranger)
    from unit_p2p.errors import SettingsError

    with pytest.raises(SettingsError):
        TrustPolicy("everyone", [], me)
    with pytest.raises(SettingsError):
        TrustPolicy("allowlist", ["not-a-peer-id"], me)
