"""In-memory stand-ins for the mesh and Unit, so the reconciler's decisions can be tested
exactly and fast. The real mesh and the real emulator are exercised by tests/agent/."""

from __future__ import annotations

import copy

import trio
import trio.testing

from unit_p2p.errors import (
    MeshError,
    UnitInvalidConfig,
    UnitPathNotFound,
    UnitRejected,
    UnitUnreachable,
    WireError,
)
from unit_p2p.mesh import PeerInfo
from unit_p2p.sync.resources import certificate_refs, js_module_refs

END = b"\x00<end>"


class FakeStream:
    """Like the mesh's Stream: a body is complete only if the sender closed it properly."""

    def __init__(self, stream: trio.abc.HalfCloseableStream, peer: str):
        self.stream = stream
        self.peer_id = peer

    async def send_all(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def close_write(self) -> None:
        await self.stream.send_all(END)
        await self.stream.send_eof()

    async def receive_all(self, max_bytes: int, timeout: float) -> bytes:
        buf = bytearray()
        with trio.fail_after(timeout):
            while True:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    if not buf.endswith(END):
                        raise MeshError("stream ended before the end marker")
                    return bytes(buf[: -len(END)])
                buf += chunk
                if len(buf) > max_bytes + len(END):
                    raise WireError("too_large", f"over {max_bytes}")

    async def reset(self) -> None:
        await self.stream.aclose()

    async def close(self) -> None:
        await self.stream.aclose()


class FakeNetwork:
    """Peers connected all-to-all unless links are cut; gossip reaches connected peers."""

    def __init__(self, nursery: trio.Nursery):
        self.nursery = nursery
        self.meshes: dict[str, FakeMesh] = {}
        self.cut: set[frozenset[str]] = set()
        self.gossip_enabled = True

    def linked(self, a: str, b: str) -> bool:
        return a != b and frozenset((a, b)) not in self.cut and b in self.meshes \
            and self.meshes[b].up


class FakeMesh:
    def __init__(self, net: FakeNetwork, peer_id: str):
        self.net, self.peer_id = net, peer_id
        self.handlers: dict = {}
        #: message protocol -> (handler(peer, data), max_bytes)
        self.message_handlers: dict = {}
        self.events = None
        self.up = True
        #: False: this host's gossip reaches nobody (no peer subscribed to the topic yet)
        self.gossips = True
        #: the peers this host's gossipsub pruned, when a test says (see gossip_pruned_peers)
        self.pruned: set[str] | None = None
        #: False: others' gossip does not reach this host (nor what it would relay)
        self.hears_gossip = True
        net.meshes[peer_id] = self

    def set_stream_handler(self, protocol, handler) -> None:
        self.handlers[protocol] = handler

    async def open_stream(self, peer_id: str, protocol: str):
        if not self.net.linked(self.peer_id, peer_id):
            raise MeshError(f"not connected to {peer_id}")
        handler = self.net.meshes[peer_id].handlers.get(protocol)
        if handler is None:
            raise MeshError(f"{peer_id} does not speak {protocol}")
        a, b = trio.testing.memory_stream_pair()
        self.net.nursery.start_soon(handler, self.peer_id, FakeStream(b, self.peer_id))
        return FakeStream(a, peer_id)

    def set_message_handler(self, protocol, handler, *, max_bytes, one_shot=None) -> None:
        self.message_handlers[protocol] = (handler, max_bytes)

    async def send_message(self, peer_id: str, protocol: str, data: bytes) -> None:
        """One message, one delivery, over a stream pair of its own: the peer's handler runs
        after as many scheduling steps as a stream took, so a push still reaches a peer after
        the gossip the same publish started (the tests' orderings rely on it)."""
        if not self.net.linked(self.peer_id, peer_id):
            raise MeshError(f"not connected to {peer_id}")
        handler, max_bytes = self.net.meshes[peer_id].message_handlers.get(protocol,
                                                                           (None, 0))
        if handler is None:
            raise MeshError(f"{peer_id} does not speak {protocol}")
        a, b = trio.testing.memory_stream_pair()

        async def deliver() -> None:
            theirs = FakeStream(b, self.peer_id)
            body = await theirs.receive_all(max_bytes, 10)
            await theirs.close()
            await handler(self.peer_id, body)

        self.net.nursery.start_soon(deliver)
        stream = FakeStream(a, peer_id)
        await stream.send_all(data)
        await stream.close_write()
        await stream.close()

    async def publish(self, data: bytes) -> None:
        """A flood along the links, as gossipsub's (every link a mesh edge): each peer gets
        the message once, from the first peer that relays it."""
        if not self.net.gossip_enabled or not self.gossips:
            return
        seen, frontier = {self.peer_id}, [self.peer_id]
        while frontier:
            relayer = frontier.pop(0)
            for other in list(self.net.meshes.values()):
                if other.peer_id not in seen and self.net.linked(relayer, other.peer_id) \
                        and other.events and other.hears_gossip:
                    seen.add(other.peer_id)
                    frontier.append(other.peer_id)
                    self.net.nursery.start_soon(other.events.on_announcement, self.peer_id,
                                                data, relayer)

    def connected_peers(self) -> list[str]:
        return [p for p in self.net.meshes if self.net.linked(self.peer_id, p)]

    def gossip_mesh_peers(self) -> set[str]:
        return set(self.connected_peers()) if self.net.gossip_enabled and self.gossips \
            else set()

    def gossip_peers(self) -> list[str]:
        """The peers subscribed to the topic: none when this host's gossip reaches nobody."""
        return self.connected_peers() if self.net.gossip_enabled and self.gossips else []

    def gossip_pruned_peers(self) -> set[str]:
        """With gossip off, gossip reaches nobody: every peer is as starved as a pruned one."""
        if self.pruned is not None:
            return self.pruned & set(self.connected_peers())
        return set() if self.net.gossip_enabled else set(self.connected_peers())

    def peers(self) -> list[PeerInfo]:
        return [PeerInfo(p, [], self.net.linked(self.peer_id, p), True, None, None)
                for p in self.net.meshes if p != self.peer_id]


class FakeUnit:
    def __init__(self, config: dict | None = None):
        self.config = config if config is not None else {"listeners": {}, "routes": [],
                                                         "applications": {}}
        self.reject_next = 0
        self.down = False
        self.puts = 0
        #: paths read, in order
        self.reads: list[str] = []
        #: raised by the next reads, one each (a cut answer, a read that times out)
        self.read_errors: list[Exception] = []
        #: moved to ``read_errors`` by the next PUT that Unit takes (a read-back that fails)
        self.read_errors_after_put: list[Exception] = []
        #: Unit-side name -> bundle bytes; module name -> text
        self.certificates: dict[str, bytes] = {}
        self.js_modules: dict[str, str] = {}
        #: refuse the modules whose text holds this (a module that does not compile)
        self.reject_modules: str | None = None
        #: called with this Unit after every change (see ``changed``)
        self.on_change: list = []

    async def get(self, path: str = "/config"):
        if self.down:
            raise UnitUnreachable("control socket is gone")
        if self.read_errors:
            raise self.read_errors.pop(0)
        self.reads.append(path)
        if path == "/certificates":
            return {name: {"key": "RSA (2048 bits)", "chain": []} for name in self.certificates}
        if path == "/js_modules":
            return dict(self.js_modules)
        node = self.config
        for part in path.split("/")[2:]:  # below /config, as Unit's API addresses it
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise UnitPathNotFound(404, "Value doesn't exist.", method="GET", path=path)
        return copy.deepcopy(node)

    async def put(self, path: str, value):
        if self.down:
            raise UnitUnreachable("control socket is gone")
        if self.reject_next:
            self.reject_next -= 1
            raise UnitInvalidConfig(400, "Invalid configuration.", "emulated rejection",
                                    method="PUT", path=path)
        for name in certificate_refs(value):
            if name not in self.certificates:
                raise UnitInvalidConfig(400, "Invalid configuration.",
                                        f'Certificate "{name}" is not found.', method="PUT",
                                        path=path)
        for name in js_module_refs(value):
            if name not in self.js_modules:
                raise UnitInvalidConfig(400, "Invalid configuration.",
                                        'Value doesn\'t exist.', method="PUT", path=path)
        self.puts += 1
        self.config = copy.deepcopy(value)
        self.read_errors += self.read_errors_after_put
        self.read_errors_after_put = []
        self.changed()
        return {"success": "Reconfiguration done."}

    # --- /certificates and /js_modules, as Unit 1.35 answers (tests/emulator has the real
    # emulator's contract; this is the minimum the applier relies on) ---

    def changed(self) -> None:
        """Called after every change: tests check an invariant at each step here."""
        for check in self.on_change:
            check(self)

    def _refuse(self, status: int, error: str, method: str, path: str):
        return UnitRejected(status, error, method=method, path=path)

    async def put_raw(self, path: str, body: bytes):
        if self.down:
            raise UnitUnreachable("control socket is gone")
        kind, _, name = path.lstrip("/").partition("/")
        if kind == "certificates":
            if name in self.certificates:
                raise self._refuse(400, "Certificate already exists.", "PUT", path)
            if b"BEGIN CERTIFICATE" not in body or b"PRIVATE KEY" not in body:
                raise self._refuse(400, "Invalid certificate.", "PUT", path)
            self.certificates[name] = bytes(body)
        elif kind == "js_modules":
            if name in self.js_modules:
                raise self._refuse(400, "JS module already exists.", "PUT", path)
            if self.reject_modules is not None and self.reject_modules in body.decode():
                raise self._refuse(400, "Compilation error.", "PUT", path)
            self.js_modules[name] = body.decode()
        else:
            raise self._refuse(405, "Invalid method.", "PUT", path)
        self.changed()
        return {"success": "uploaded"}

    async def delete(self, path: str):
        if self.down:
            raise UnitUnreachable("control socket is gone")
        kind, _, name = path.lstrip("/").partition("/")
        held = {"certificates": self.certificates, "js_modules": self.js_modules}.get(kind)
        if held is None or name not in held:
            raise UnitPathNotFound(404, "Value doesn't exist.", method="DELETE", path=path)
        refs = certificate_refs if kind == "certificates" else js_module_refs
        if name in refs(self.config):
            what = "Certificate" if kind == "certificates" else "JS module"
            raise self._refuse(400, f"{what} is used in the configuration.", "DELETE", path)
        del held[name]
        self.changed()
        return {"success": "deleted"}
