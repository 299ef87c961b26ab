"""Shared helpers for the mesh tests: real hosts on loopback in this trio process."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from unit_p2p.mesh import Mesh, MeshTuning, TrustPolicy
from unit_p2p.settings import Settings

LOOPBACK_ANY_PORT = "/ip4/127.0.0.1/tcp/0"


class RecordingEvents:
    """MeshEvents that records everything and lets tests await a condition."""

    def __init__(self):
        self.connected: set[str] = set()
        self.log: list[tuple[str, str]] = []
        self.announcements: list[tuple[str, bytes]] = []
        #: the relaying peer of each announcement
        self.relayers: list[str | None] = []
        self._changed = trio.Event()
        self.fail_on_announcement = False

    def _bump(self):
        self._changed.set()
        self._changed = trio.Event()

    async def on_peer_connected(self, peer_id: str) -> None:
        self.connected.add(peer_id)
        self.log.append(("connected", peer_id))
        self._bump()

    async def on_peer_disconnected(self, peer_id: str) -> None:
        self.connected.discard(peer_id)
        self.log.append(("disconnected", peer_id))
        self._bump()

    async def on_announcement(self, peer_id: str, data: bytes, via: str | None = None) -> None:
        self.announcements.append((peer_id, data))
        self.relayers.append(via)
        self._bump()
        if self.fail_on_announcement:
            raise RuntimeError("reconciler bug")

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait (caller bounds it with fail_after) until predicate() holds."""
        while not predicate():
            await self._changed.wait()


@dataclass
class Node:
    mesh: Mesh
    events: RecordingEvents
    addrs: list[str]
    keypair: object = field(repr=False, default=None)

    @property
    def peer_id(self) -> str:
        return self.mesh.peer_id

    @property
    def addr(self) -> str:
        return self.addrs[0]


def new_keypair():
    return create_new_key_pair()


def peer_id_of(keypair) -> str:
    return ID.from_pubkey(keypair.public_key).to_base58()


def make_mesh(*, keypair=None, trust_mode="any", trusted=(), tuning=None, events=None,
              **settings) -> tuple[Mesh, RecordingEvents, object]:
    keypair = keypair or new_keypair()
    settings.setdefault("listen", (LOOPBACK_ANY_PORT,))
    settings.setdefault("mdns", False)
    settings.setdefault("dht", False)
    settings.setdefault("mesh", "test")
    events = events or RecordingEvents()
    trust = TrustPolicy(trust_mode, trusted, peer_id_of(keypair))
    mesh = Mesh(Settings(**settings), keypair, trust, events, tuning=tuning or MeshTuning())
    return mesh, events, keypair


async def start_node(nursery: trio.Nursery, **kwargs) -> Node:
    mesh, events, keypair = make_mesh(**kwargs)
    with trio.fail_after(15):
        addrs = await nursery.start(mesh.serve)
    return Node(mesh, events, addrs, keypair)


async def wait_for(predicate: Callable[[], bool], *, interval: float = 0.05) -> None:
    """Poll for state that has no event (caller bounds it with fail_after)."""
    # libp2p internals (gossip subscriptions, counters) offer no event to wait on
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(interval)


INF = math.inf
