"""Bootstrap redial, DHT rendezvous and mDNS between real hosts on loopback."""

from __future__ import annotations

import itertools

import trio

from unit_p2p.mesh import MeshTuning
from unit_p2p.mesh.discovery import Mdns

from .helpers import make_mesh, start_node, wait_for


async def test_bootstrap_redials_a_restarted_peer_quickly(nursery):
    hub_mesh, _, hub_kp = make_mesh()
    async with trio.open_nursery() as inner:
        with trio.fail_after(10):
            hub_addrs = await inner.start(hub_mesh.serve)
        spoke = await start_node(nursery, bootstrap=tuple(hub_addrs))
        with trio.fail_after(10):
            await spoke.events.wait_until(lambda: hub_mesh.peer_id in spoke.events.connected)
        inner.cancel_scope.cancel()
    with trio.fail_after(5):
        await spoke.events.wait_until(lambda: hub_mesh.peer_id not in spoke.events.connected)
    # down for a few seconds: the redial backoff grows meanwhile (0.25 s .. capped at 10 s)
    await trio.sleep(3)
    fixed = hub_addrs[0].split("/p2p/")[0]
    again, _, _ = make_mesh(keypair=hub_kp, listen=(fixed,))
    await nursery.start(again.serve)
    back = trio.current_time()
    with trio.fail_after(12):
        await spoke.events.wait_until(lambda: again.peer_id in spoke.events.connected)
    print(f"reconnected {trio.current_time() - back:.2f} s after the peer came back")


async def test_bootstrap_list_may_contain_this_agent_itself(nursery):
    mesh, _, kp = make_mesh()
    own = f"/ip4/127.0.0.1/tcp/1/p2p/{mesh.peer_id}"
    mesh2, _, _ = make_mesh(keypair=kp, bootstrap=(own,))
    with trio.fail_after(10):
        await nursery.start(mesh2.serve)
    assert mesh2.bootstrap.targets == {}


async def test_dht_rendezvous_connects_a_star_into_a_full_mesh(nursery):
    # Each node knows only node 0 (mDNS off). Assertion: every node ends up connected to every
    # other one, i.e. nodes 1..3 found each other through the provider records held by node 0.
    hub = await start_node(nursery, dht=True)
    spokes = [await start_node(nursery, dht=True, bootstrap=(hub.addr,)) for _ in range(3)]
    nodes = [hub, *spokes]
    started = trio.current_time()
    with trio.fail_after(30):
        for a, b in itertools.permutations(nodes, 2):
            await wait_for(lambda a=a, b=b: b.peer_id in a.mesh.connected_peers(), interval=0.1)
    print(f"star -> full mesh in {trio.current_time() - started:.2f} s")
    # and the rendezvous lookup itself (GET_PROVIDERS) returns every other spoke
    with trio.fail_after(30):
        for spoke in spokes:
            others = {s.peer_id for s in spokes} - {spoke.peer_id}
            await wait_for(lambda spoke=spoke, others=others:
                           others <= spoke.mesh.rendezvous.found, interval=0.1)


async def test_without_dht_a_star_stays_a_star(nursery):
    # control for the test above: the DHT is what connects the spokes
    hub = await start_node(nursery)
    spokes = [await start_node(nursery, bootstrap=(hub.addr,)) for _ in range(3)]
    with trio.fail_after(10):
        await wait_for(lambda: len(hub.mesh.connected_peers()) == 3)
    await trio.sleep(3)  # several rendezvous rounds' worth of time (the DHT test needs ~1 s)
    for spoke in spokes:
        assert spoke.mesh.connected_peers() == [hub.peer_id]


async def test_dht_respects_the_allowlist(nursery):
    # node 0 trusts everyone; spoke 1 and 2 trust node 0 and only each other... but spoke 3 is
    # trusted by nobody but node 0: 1 and 2 must never dial it, and refuse it if it dials them.
    from .helpers import new_keypair, peer_id_of

    kps = [new_keypair() for _ in range(4)]
    ids = [peer_id_of(k) for k in kps]
    hub = await start_node(nursery, keypair=kps[0], dht=True)
    s1 = await start_node(nursery, keypair=kps[1], dht=True, bootstrap=(hub.addr,),
                          trust_mode="allowlist", trusted=[ids[0], ids[2]])
    s2 = await start_node(nursery, keypair=kps[2], dht=True, bootstrap=(hub.addr,),
                          trust_mode="allowlist", trusted=[ids[0], ids[1]])
    s3 = await start_node(nursery, keypair=kps[3], dht=True, bootstrap=(hub.addr,))
    with trio.fail_after(30):
        await wait_for(lambda: s2.peer_id in s1.mesh.connected_peers(), interval=0.1)
        # s3 has learned about s1 and s2 from the DHT and tried them
        await wait_for(lambda: {s1.peer_id, s2.peer_id} <= s3.mesh.rendezvous.found, interval=0.1)
    assert s3.peer_id not in s1.mesh.connected_peers()
    assert s3.peer_id not in s2.mesh.connected_peers()


async def test_mdns_finds_peers_of_the_same_mesh_only(nursery):
    a = await start_node(nursery, mdns=True, mesh="lan")
    b = await start_node(nursery, mdns=True, mesh="lan")
    other = await start_node(nursery, mdns=True, mesh="elsewhere")
    assert a.mesh.mdns.interfaces == ["127.0.0.1"]
    started = trio.current_time()
    with trio.fail_after(20):
        await a.events.wait_until(lambda: b.peer_id in a.events.connected)
    print(f"mDNS discovery + dial in {trio.current_time() - started:.2f} s")
    with trio.fail_after(10):
        await wait_for(lambda: other.mesh.mdns.stats["foreign"] >= 2)
    assert other.peer_id not in a.mesh.connected_peers()
    assert other.mesh.connected_peers() == []


async def test_mdns_does_not_block_the_trio_loop(nursery):
    worst = 0.0
    stop = trio.Event()

    async def ticker():
        nonlocal worst
        while not stop.is_set():
            before = trio.current_time()
            await trio.sleep(0.01)
            worst = max(worst, trio.current_time() - before)

    nursery.start_soon(ticker)
    mesh, _, _ = make_mesh(mdns=True, mesh="blocking-check")
    async with trio.open_nursery() as inner:
        with trio.fail_after(15):
            await inner.start(mesh.serve)
            await mesh.mdns.registered.wait()  # register_service's ~1.5 s happened meanwhile
        inner.cancel_scope.cancel()  # and the unregister/close at stop
    stop.set()
    print(f"longest trio loop stall during mDNS start/stop: {worst * 1000:.0f} ms")
    assert worst < 0.5  # zeroconf on the loop would stall it ~1.5 s


def test_mdns_interface_plan():
    assert Mdns._plan(["/ip4/127.0.0.1/tcp/4001"]) == (["127.0.0.1"], ["/ip4/127.0.0.1/tcp/4001"])
    interfaces, advertised = Mdns._plan(["/ip4/0.0.0.0/tcp/4001"])
    assert interfaces is None and "/ip4/127.0.0.1/tcp/4001" in advertised


async def test_dht_dials_new_peers_only_below_the_target_but_always_redials_lost_ones(nursery):
    # peer_target=1: each spoke is at its target once connected to the hub, so it learns the
    # other spokes from the DHT but does not dial them (the star stays a star) ...
    tuning = MeshTuning(peer_target=1)
    hub = await start_node(nursery, dht=True, tuning=tuning)
    spokes = [await start_node(nursery, dht=True, bootstrap=(hub.addr,), tuning=tuning)
              for _ in range(3)]
    with trio.fail_after(30):
        for spoke in spokes:
            others = {s.peer_id for s in spokes} - {spoke.peer_id}
            await wait_for(lambda spoke=spoke, others=others:
                           others <= spoke.mesh.rendezvous.found, interval=0.1)
    rounds = spokes[0].mesh.rendezvous.rounds
    with trio.fail_after(30):
        await wait_for(lambda: spokes[0].mesh.rendezvous.rounds >= rounds + 2, interval=0.1)
    for spoke in spokes:
        assert spoke.mesh.connected_peers() == [hub.peer_id]
    # ... but a peer it was connected to and lost is redialled whatever the budget, so a healed
    # partition rejoins even when both sides are at their target.
    a, b = spokes[0], spokes[1]
    with trio.fail_after(15):
        await a.mesh.connect(b.addr)
        await a.mesh.disconnect(b.peer_id)
        await wait_for(lambda: b.peer_id not in a.mesh.connected_peers(), interval=0.05)
        assert a.mesh.was_lost(b.peer_id)
        await wait_for(lambda: b.peer_id in a.mesh.connected_peers(), interval=0.1)
