"""What an idle agent wakes up for: the gossipsub heartbeat and the DHT rendezvous schedule,
in trio's mock clock (the real-network behaviour is covered by test_gossip and test_discovery).
"""

from __future__ import annotations

from itertools import pairwise

import trio

from unit_p2p.mesh.bus import GossipParams, QuietGossipSub
from unit_p2p.mesh.discovery import Rendezvous


def _router(**kw) -> QuietGossipSub:
    p = GossipParams()
    router = QuietGossipSub(protocols=list(p.protocols), degree=p.degree,
                            degree_low=p.degree_low, degree_high=p.degree_high,
                            heartbeat_initial_delay=0, heartbeat_interval=1,
                            idle_interval=p.heartbeat_idle_interval, **kw)
    ticks: list[float] = []

    async def tick() -> None:
        ticks.append(trio.current_time())

    router._tick = tick
    return router, ticks


async def test_heartbeat_sleeps_while_idle_and_wakes_for_a_change(autojump_clock):
    router, ticks = _router()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(router.heartbeat)
        await trio.sleep(100.5)
        # idle: one tick per idle interval, not one a second
        assert 10 <= len(ticks) <= 12, ticks
        n = len(ticks)
        router._poke()  # what a peer added/removed, a GRAFT/PRUNE or a message does
        await trio.sleep(1.0)
        assert len(ticks) == n + 1  # a change is handled within a heartbeat interval
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in pairwise(ticks)]
    assert min(gaps) >= 1.0  # never closer than heartbeat_interval (gossip windows keep length)


async def test_heartbeat_ticks_every_interval_while_there_is_work(autojump_clock):
    router, ticks = _router()
    router.busy = lambda: True  # e.g. messages in the cache to gossip and shift out
    async with trio.open_nursery() as nursery:
        nursery.start_soon(router.heartbeat)
        await trio.sleep(10.5)
        nursery.cancel_scope.cancel()
    assert len(ticks) == 11


class _Dialer:
    own_peer_id = "self"

    def __init__(self):
        self.peers = ["p1", "p2"]
        self.lost: set[str] = set()

    def connected_peers(self):
        return list(self.peers)

    def was_lost(self, peer_id):
        return peer_id in self.lost


def _rendezvous(dialer) -> tuple[Rendezvous, list[float]]:
    rv = Rendezvous(dialer, dht=None, mesh="m", idle_interval=60, stable_interval=300)
    rv.found = {"p1", "p2", "p3"}
    rounds: list[float] = []

    async def round_() -> bool:
        rounds.append(trio.current_time())
        return False

    rv.round = round_
    return rv, rounds


async def _pauses(rv, rounds, seconds: float) -> list[float]:
    async with trio.open_nursery() as nursery:
        await nursery.start(rv.serve)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    return [round(b - a, 1) for a, b in pairwise(rounds)]


async def test_dht_rounds_slow_to_the_stable_pause_while_nothing_changes(autojump_clock):
    rv, rounds = _rendezvous(_Dialer())
    pauses = await _pauses(rv, rounds, 1500)
    assert pauses[:8] == [1, 2, 4, 8, 16, 32, 64, 128]
    assert pauses[-1] == 300


async def test_dht_pause_stays_at_the_idle_cap_while_a_lost_peer_is_missing(autojump_clock):
    dialer = _Dialer()
    dialer.lost = {"p3"}
    rv, rounds = _rendezvous(dialer)
    pauses = await _pauses(rv, rounds, 1500)
    assert max(pauses) == 60 and pauses[-1] == 60


async def test_dht_pause_returns_to_the_idle_cap_when_the_peer_set_changes(autojump_clock):
    dialer = _Dialer()
    rv, rounds = _rendezvous(dialer)
    async with trio.open_nursery() as nursery:
        await nursery.start(rv.serve)
        await trio.sleep(1000)
        assert rounds[-1] - rounds[-2] >= 256
        dialer.peers = ["p1", "p2", "p4"]  # a peer joined: its routing table may know more
        n = len(rounds)
        await trio.sleep(700)
        nursery.cancel_scope.cancel()
    # the round that sees the change is still on the long pause; the one after it is not
    after = [b - a for a, b in pairwise(rounds[n:])]
    assert after[0] == 60, after
