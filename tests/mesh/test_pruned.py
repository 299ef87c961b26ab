"""Mesh.gossip_pruned_peers on real hosts: the peers our gossipsub pruned from (or refused into)
its mesh, which the mesh's forwarding would leave out and our gossipsub sends every message to
as well (a hub's leaves)."""

from __future__ import annotations

import trio
from libp2p.peer.id import ID

from unit_p2p.mesh.bus import GossipParams

from .helpers import start_node, wait_for

D_HIGH = GossipParams().degree_high


async def _star(nursery, leaves: int):
    hub = await start_node(nursery)
    nodes = [await start_node(nursery) for _ in range(leaves)]
    with trio.fail_after(30):
        for leaf in nodes:
            await leaf.mesh.connect(hub.addr)
        await wait_for(lambda: len(hub.mesh.gossip_peers()) == leaves)
    return hub, nodes


async def test_a_hub_prunes_its_excess_leaves_and_knows_them(nursery):
    # Each leaf's mesh is empty, so each GRAFTs the hub; the hub's mesh passes D_high and its
    # heartbeat prunes it back to D: the hub knows the leaves it pruned.
    hub, leaves = await _star(nursery, D_HIGH + 3)
    subscribed = {leaf.peer_id for leaf in leaves}

    def settled() -> bool:
        mesh, pruned = hub.mesh.gossip_mesh_peers(), hub.mesh.gossip_pruned_peers()
        return bool(pruned) and mesh | pruned >= subscribed and len(mesh) <= D_HIGH

    with trio.fail_after(15):
        await wait_for(settled)
    mesh, pruned = hub.mesh.gossip_mesh_peers(), hub.mesh.gossip_pruned_peers()
    assert not mesh & pruned
    assert pruned <= set(hub.mesh.connected_peers())
    print(f"hub mesh {len(mesh)}, pruned {len(pruned)} of {len(subscribed)} leaves")

    # A pruned leaf that is grafted again is in the hub's mesh and no longer pruned.
    leaf = next(node for node in leaves if node.peer_id in pruned)
    topic, hub_id = leaf.mesh.topic, ID.from_base58(hub.peer_id)
    router = leaf.mesh._router
    router.back_off.get(topic, {}).pop(hub_id, None)  # the hub's PRUNE made it wait a minute
    router.mesh[topic].add(hub_id)
    with trio.fail_after(10):
        await router.emit_graft(topic, hub_id)
        await hub.mesh._router.wait_for_mesh(ID.from_base58(leaf.peer_id), topic, timeout=10)
    assert leaf.peer_id in hub.mesh.gossip_mesh_peers()
    assert leaf.peer_id not in hub.mesh.gossip_pruned_peers()
    # It has been in the hub's mesh since: leaving it by its own PRUNE is not being pruned.
    # (With a backoff of its own, or its heartbeat would GRAFT again at once and the hub, in
    # backoff after that PRUNE, would rightly refuse it.)
    router.mesh[topic].discard(hub_id)
    router._add_back_off(hub_id, topic, False)
    with trio.fail_after(10):
        await router.emit_prune(topic, hub_id, False, False)
        await wait_for(lambda: leaf.peer_id not in hub.mesh.gossip_mesh_peers())
    assert leaf.peer_id not in hub.mesh.gossip_pruned_peers()


async def test_a_refused_graft_counts_as_pruned_until_the_peer_leaves(nursery):
    hub, (leaf,) = await _star(nursery, 1)
    topic = hub.mesh.topic
    hub_router, leaf_id = hub.mesh._router, ID.from_base58(leaf.peer_id)
    with trio.fail_after(10):
        await hub_router.wait_for_mesh(leaf_id, topic, timeout=10)
    assert hub.mesh.gossip_pruned_peers() == set()
    # The hub takes the leaf out and will not have it back for a while (a backoff): the
    # leaf's next GRAFT is answered with PRUNE.
    hub_router.mesh[topic].discard(leaf_id)
    hub_router._add_back_off(leaf_id, topic, False)
    with trio.fail_after(10):
        await leaf.mesh._router.emit_graft(topic, ID.from_base58(hub.peer_id))
        await wait_for(lambda: leaf.peer_id in hub.mesh.gossip_pruned_peers())
    assert leaf.peer_id not in hub.mesh.gossip_mesh_peers()

    with trio.fail_after(10):
        await leaf.mesh.disconnect(hub.peer_id)
        await hub.events.wait_until(lambda: leaf.peer_id not in hub.events.connected)
        await wait_for(lambda: leaf_id not in hub_router.pruned)
    assert hub.mesh.gossip_pruned_peers() == set()


async def test_a_pruned_leaf_s_publish_reaches_every_leaf_in_gossip(nursery):
    # A pruned leaf's mesh is empty (the hub was its only mesh peer): py-libp2p sent its own
    # publishes to nobody, so the hub's flood never started and the hub's mesh leaves heard of
    # it only from the sync layer's anti-entropy, seconds later. And the hub forwarded to its
    # mesh only, so the other pruned leaves depended on a push the sync layer decided later.
    hub, leaves = await _star(nursery, D_HIGH + 3)
    with trio.fail_after(15):
        await wait_for(lambda: any(node.peer_id in hub.mesh.gossip_pruned_peers()
                                   and not node.mesh.gossip_mesh_peers() for node in leaves))
    leaf = next(node for node in leaves if node.peer_id in hub.mesh.gossip_pruned_peers()
                and not node.mesh.gossip_mesh_peers())
    in_hub_mesh = [node for node in leaves if node.peer_id in hub.mesh.gossip_mesh_peers()]
    assert in_hub_mesh
    other_pruned = [node for node in leaves if node is not leaf
                    and node.peer_id in hub.mesh.gossip_pruned_peers()]
    assert other_pruned
    await leaf.mesh.publish(b"from a pruned leaf")
    with trio.fail_after(10):
        for node in [hub, *leaves]:
            if node is not leaf:
                await node.events.wait_until(lambda node=node: node.events.announcements)
    assert hub.events.announcements == [(leaf.peer_id, b"from a pruned leaf")]
    # the hub relayed it to every other leaf, once
    for node in leaves:
        if node is not leaf:
            assert node.events.announcements == [(leaf.peer_id, b"from a pruned leaf")]
            assert node.events.relayers == [hub.peer_id]
