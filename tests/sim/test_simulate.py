"""The fleet simulator at a small size: it must converge and its counters must add up.

Simulated time only (trio's MockClock): the simulator's own deadline bounds every wait.
"""

from __future__ import annotations

import random

import trio
import trio.testing

from bench.simulate import SimParams, _read_gossip, run
from bench.simulate_net import HUB, Host, Latency, SimMesh, SimNet, Topology, marker_of


def test_small_fleet_with_loss_and_churn_converges_and_counts_add_up():
    seen: list[dict] = []

    def inspect(fleet, row):
        live = fleet.live()
        marker = f"/sim/{row['publish']}"
        seen.append({
            "row": row,
            "unit_markers": {marker_of(fleet.units[i].config) for i in live},
            "heads": {fleet.net.hosts[i].rec.status()["head"]["revision"] for i in live},
            "marker": marker,
        })

    out = run(SimParams(n=30, seed=7, loss=0.05, publishes=1, scenarios=("steady", "churn"),
                        churn=0.1, deadline=60.0), inspect)
    assert out["error"] is None
    assert [s["row"]["scenario"] for s in seen] == ["steady", "churn"]
    for s in seen:
        row = s["row"]
        # every live host (joiners included) holds the published revision, in Unit and as head
        assert row["missed"] == 0 and row["applied"] == row["live"]
        assert s["unit_markers"] == {s["marker"]}
        assert s["heads"] == {row["revision"]}
        assert row["t_all_applied_s"] is not None
        # each transmission counted once by kind, once as sent, once as received or lost
        assert sum(v["msgs"] for v in row["by_kind"].values()) == row["msgs"]
        assert sum(v["bytes"] for v in row["by_kind"].values()) == row["bytes"]
        assert row["sent_total"] == row["msgs"]
        assert row["recv_total"] + row["lost"] == row["msgs"]
        assert row["lost"] > 0  # the loss model was exercised
    churn = seen[1]["row"]
    assert churn["left"] == 3 and churn["joined"] == 3
    assert churn["live"] == 30


def _bare_star(n: int, back_off: float) -> SimNet:
    """A star of ``n`` hosts with gossip but no sync code above it (no reconcilers)."""
    ids = [f"host{i}" for i in range(n)]
    topo = Topology(kind="star", d=4, d_lo=3, d_hi=8, gossip_window=0, prune_back_off=back_off)
    net = SimNet(ids, latency=Latency.parse("const:10"), loss=0.0, topo=topo,
                 rng=random.Random(3))
    for i in range(n):
        net.hosts[i] = Host(i, SimMesh(net, i), None, None, trio.CancelScope())
    return net


async def _run_star(net: SimNet, seconds: int, probe) -> None:
    """Heartbeats for ``seconds`` simulated seconds; after heartbeat ``t``, ``probe(t, False)``
    before the GRAFTs and PRUNEs it sent arrive (10 ms links), ``probe(t, True)`` after."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.sched.run)
        for i in range(len(net.hosts)):
            net.dial_to_target(i, [])
        net.heartbeat()
        for t in range(seconds):
            await trio.sleep_until(t + 0.005)
            probe(t, False)
            await trio.sleep_until(t + 0.5)
            probe(t, True)
        nursery.cancel_scope.cancel()


def test_star_hub_prunes_its_mesh_to_d_and_names_the_starved_leaves():
    n, hub = 40, HUB
    net = _bare_star(n, back_off=10.0)
    leaves = {f"host{i}" for i in range(1, n)}
    hub_mesh = net.hosts[hub].mesh
    seen: list[tuple[int, bool, set, set]] = []

    def probe(t: int, arrived: bool) -> None:
        mesh, pruned = hub_mesh.gossip_mesh_peers(), hub_mesh.gossip_pruned_peers()
        seen.append((t, arrived, mesh, pruned))
        if arrived:
            # a pruned leaf has the PRUNE: the hub is out of its mesh, it forwards nothing to it
            for leaf in pruned:
                assert net.ids[hub] not in net.hosts[net.index[leaf]].mesh.gossip_mesh_peers()

    trio.run(_run_star, net, 25, probe, clock=trio.testing.MockClock(autojump_threshold=0))
    for _t, arrived, mesh, pruned in seen[1:]:
        # every leaf grafted the hub on connecting; the first heartbeat pruned all but D
        assert not mesh & pruned
        assert mesh | pruned == leaves
        if not arrived:
            # a heartbeat leaves the hub's mesh within Dhi (until the leaves whose backoff ran
            # out graft it again)
            assert len(mesh) <= net.topo.d_hi
    assert max(len(pruned) for *_, pruned in seen) == len(leaves) - net.topo.d
    # the backoff holds a pruned leaf off for 10 s: each leaf grafted at most 3 times in 25 s
    # (without it, every second)
    assert net.traffic.msgs["graft"] <= 3 * len(leaves)
    assert net.traffic.msgs["prune"] >= len(leaves) - net.topo.d


def test_a_graft_from_a_peer_in_backoff_is_refused_and_pruned_back():
    net = _bare_star(20, back_off=10.0)
    hub = HUB
    refused: list[int] = []

    def probe(t: int, arrived: bool) -> None:
        if t == 1 and arrived:
            # the hub's mesh loses its kept leaves: below Dlo it grafts leaves that it just
            # pruned, which back off from it and refuse
            for leaf in list(net.gmesh[hub]):
                net.disconnect(hub, leaf)
        if t == 3 and arrived:
            refused.extend(i for i in range(1, 20) if net.ids[hub] in
                           net.hosts[i].mesh.gossip_pruned_peers())
            for leaf in refused:
                # the refusal's PRUNE reached the hub: the leaf is out of its mesh, backed off
                assert leaf not in net.gmesh[hub] and net.backed_off(hub, leaf)

    trio.run(_run_star, net, 4, probe, clock=trio.testing.MockClock(autojump_threshold=0))
    assert refused


def test_gossip_reaches_the_reconciler_with_its_forwarder_when_it_takes_one():
    calls: list[tuple] = []

    class Before:
        async def on_announcement(self, peer_id, data):
            calls.append(("before", peer_id, data))

    class After:
        async def on_announcement(self, peer_id, data, via=None):
            calls.append(("after", peer_id, data, via))

    async def main():
        for rec in (Before(), After()):
            send, recv = trio.open_memory_channel(1)
            with trio.fail_after(5):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_read_gossip, recv, rec)
                    async with send:
                        await send.send(("origin", b"x", "relay"))

    trio.run(main)
    assert calls == [("before", "origin", b"x"), ("after", "origin", b"x", "relay")]


def test_star_fleet_converges_through_churn_and_partition_with_the_hub_kept():
    hub_alive: list[bool] = []

    def inspect(fleet, row):
        hub_alive.append(fleet.net.hosts[HUB] is not None)
        assert row["missed"] == 0 and row["applied"] == row["live"]

    out = run(SimParams(n=20, seed=5, topo=Topology(kind="star"), publishes=1, churn=0.2,
                        partition=0.3, heal=2.0, deadline=60.0), inspect)
    assert out["error"] is None
    assert len(hub_alive) == 3 and all(hub_alive)
