"""Message streams: one long-lived stream per peer and protocol for one-way messages.

Opening a libp2p stream costs a yamux SYN, a multistream-select round trip, stream bookkeeping
on both ends and a FIN each way. For the sync layer's one-way messages (a few hundred bytes) that
was most of their cost: with one stream per message, opening streams and negotiating inbound ones
took ~17 % of a busy agent's CPU in a 50-agent profile. Here a sender keeps one stream per
(peer, protocol), opened on first use, and writes each message as one frame of stream.py's
framing; the receiver reads frame after frame and hands each message to its handler, in order.

Sender (``send``):

- Writes to one stream are serialized by its trio.Lock: a frame is never interleaved with
  another, and concurrent first messages to a peer open one stream, not several.
- ``send`` returns once the frame is written; there is no receipt. As with one stream per
  message, delivery is best effort: the sync layer retries a failed send and its heads exchanges
  repair a loss nobody saw.
- A write that fails (reset, closed, timed out, or cancelled midway, which can leave part of a
  frame behind) resets and drops the stream. When that stream had already carried messages (the
  receiver may have ended it since), the message is written once more on a new stream; a new
  stream that fails is not retried here (``MeshError``: the caller's backoff decides).
- A stream is dropped when its connection closes (``connection_changed``, called by the mesh on
  every connection change; nothing polls), when the receiver ends or resets it (one task per
  stream waits for that), and closed with the end marker and a FIN after ``idle`` seconds
  without a message, so a fleet does not hold thousands of idle streams.
- Version fallback: the protocol and its ``one_shot`` predecessor (one message per stream, as an
  agent of the previous version serves it) are offered in one multistream-select negotiation, in
  that order. A peer that picks the predecessor gets that message on that stream, one-shot (body,
  end marker, FIN), and is remembered for ``ONE_SHOT_MEMORY`` seconds or until it disconnects:
  meanwhile only the predecessor is asked for, so each message costs one negotiation, as before.

Receiver (``stream_handler``, registered through the mesh's guarded handler path, so only
trusted peers' streams reach it):

- Each frame is handed to ``handler(peer, data)`` before the next one is read (order kept). A
  handler that raises is logged and counted (``handler_error``) and the next message read: one
  bad message does not cost the ones behind it.
- The stream ends at the end marker, or at EOF or a reset between two frames. A frame over
  ``max_bytes`` is refused from its header alone: ``WireError("too_large")``, the stream (not the
  connection) is reset, and the mesh's handler guard counts it as a ``handler_error`` refusal; a
  frame cut short is a ``MeshError``, counted the same way.
- A stream without a frame for ``RECEIVER_IDLE_FACTOR * idle`` seconds is reset, never
  half-closed: a sender may still write to a stream whose other end sent a FIN, and that message
  would be lost without an error. A message written while the reset is on its way is lost too
  (there are no receipts), so the bound is a multiple of the sender's idle time: the sender
  normally ends an idle stream first, cleanly.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from ..errors import MeshError
from .stream import Stream

log = logging.getLogger(__name__)

#: seconds a peer that answered with the one-shot predecessor is asked for that one directly
ONE_SHOT_MEMORY = 300.0
#: peers remembered as one-shot only (a bound: the table cannot grow with every peer ID seen)
ONE_SHOT_KEPT = 4096
#: the receiver resets a stream idle this many times the sender's idle time
RECEIVER_IDLE_FACTOR = 2.0

MessageHandler = Callable[[str, bytes], Awaitable[None]]
#: ``open(peer_id, protocols)``: a new stream of the first protocol the peer accepts
Opener = Callable[[str, Sequence[str]], Awaitable[Stream]]


@dataclass(eq=False)
class _Live:
    """One open outbound message stream and the task watching it."""

    stream: Stream
    last_used: float
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


@dataclass(eq=False)
class _Outbound:
    """The outbound stream of one (peer, protocol): at most one live stream at a time."""

    lock: trio.Lock = field(default_factory=trio.Lock)
    live: _Live | None = None


class MessageStreams:
    """The mesh's one-way message streams (see the module doc)."""

    def __init__(self, open_stream: Opener, is_live: Callable[[str, Stream], bool],
                 stats: collections.Counter[str], heard: Callable[[str], None], idle: float):
        """``is_live(peer_id, stream)``: whether ``stream`` is on a connection the swarm still
        holds; ``heard(peer_id)``: a message arrived from it (liveness); ``idle``: seconds
        after which an unused outbound stream is closed."""
        self._open = open_stream
        self._is_live = is_live
        self.stats = stats
        self._heard = heard
        self.idle = idle
        #: declared message protocols -> their one-shot predecessor (None: none)
        self._one_shot_of: dict[str, str | None] = {}
        self._out: dict[str, dict[str, _Outbound]] = {}
        #: (peer, protocol) -> until when that peer is asked for the predecessor only
        self._one_shot_peers: collections.OrderedDict[tuple[str, str], float] = \
            collections.OrderedDict()
        self._nursery: trio.Nursery | None = None

    def declare(self, protocol: str, one_shot: str | None) -> None:
        self._one_shot_of[protocol] = one_shot

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run the outbound streams' watchers; ends (resetting every stream) when cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._out.clear()

    # -- sending -------------------------------------------------------------------------------

    async def send(self, peer_id: str, protocol: str, data: bytes) -> None:
        """Write ``data`` to ``peer_id`` as one message of ``protocol`` (see the module doc)."""
        if protocol not in self._one_shot_of:
            raise MeshError(f"{protocol} is not a declared message protocol")
        if self._nursery is None:
            raise MeshError("the mesh is not running")
        one_shot = self._one_shot_of[protocol]
        if one_shot is not None and self._one_shot_only(peer_id, protocol):
            await self._send_one_shot(await self._open(peer_id, [one_shot]), data)
            return
        out = self._out.setdefault(peer_id, {}).setdefault(protocol, _Outbound())
        async with out.lock:
            while True:
                live = out.live
                fresh = live is None
                if live is None:
                    stream = await self._open(peer_id, [protocol, one_shot] if one_shot
                                              else [protocol])
                    if stream.protocol != protocol:
                        self._remember_one_shot(peer_id, protocol)
                        await self._send_one_shot(stream, data)
                        return
                    live = await self._keep(out, stream)
                try:
                    await live.stream.send_frame(data)
                except MeshError:
                    self._drop(out, live)
                    if fresh:
                        raise
                    self.stats["message_stream_replaced"] += 1
                    log.debug("message stream %s to %s failed; writing on a new one",
                              protocol, peer_id)
                    continue
                except BaseException:
                    # cancelled midway: part of a frame may be on the wire
                    self._drop(out, live)
                    raise
                live.last_used = trio.current_time()
                return

    async def _send_one_shot(self, stream: Stream, data: bytes) -> None:
        self.stats["message_one_shot_sent"] += 1
        try:
            await stream.send_all(data)
            await stream.close_write()
        finally:
            await stream.close()

    def _one_shot_only(self, peer_id: str, protocol: str) -> bool:
        until = self._one_shot_peers.get((peer_id, protocol))
        if until is None:
            return False
        if trio.current_time() < until:
            return True
        del self._one_shot_peers[(peer_id, protocol)]
        return False

    def _remember_one_shot(self, peer_id: str, protocol: str) -> None:
        key = (peer_id, protocol)
        self._one_shot_peers.pop(key, None)
        self._one_shot_peers[key] = trio.current_time() + ONE_SHOT_MEMORY
        while len(self._one_shot_peers) > ONE_SHOT_KEPT:
            self._one_shot_peers.popitem(last=False)

    async def _keep(self, out: _Outbound, stream: Stream) -> _Live:
        if self._nursery is None:  # the mesh stopped while the stream opened
            await stream.reset()
            raise MeshError("the mesh is not running")
        live = out.live = _Live(stream, trio.current_time())
        self.stats["message_streams_opened"] += 1
        self._nursery.start_soon(self._watch, out, live)
        return live

    def _drop(self, out: _Outbound, live: _Live) -> None:
        """Forget ``live``; its watcher resets the stream."""
        if out.live is live:
            out.live = None
        live.scope.cancel()

    async def _watch(self, out: _Outbound, live: _Live) -> None:
        """Until ``live`` is dropped: drop it when the receiver ends it, close it when idle."""
        stream = live.stream
        closing = False
        try:
            with live.scope:
                while not closing:
                    with trio.move_on_at(live.last_used + self.idle):
                        # The receiver never writes: any answer is its end (or a breach).
                        await stream.wait_data()
                        if not stream.reset_here:  # not a write of ours that failed
                            self.stats["message_streams_ended_by_peer"] += 1
                        return
                    async with out.lock:  # no write is in progress
                        if out.live is not live:
                            return
                        closing = trio.current_time() >= live.last_used + self.idle
                        if closing:
                            out.live = None
                self.stats["message_streams_idle_closed"] += 1
                await stream.close_write()
                await stream.close()
        except MeshError as exc:
            log.debug("closing the idle %s stream to %s failed: %s", stream.protocol,
                      stream.peer_id, exc)
        except Exception:  # a watcher must not take the mesh's nursery down
            log.warning("watching the %s stream to %s failed", stream.protocol,
                        stream.peer_id, exc_info=True)
        finally:
            if out.live is live:
                out.live = None
            if not closing:
                with trio.CancelScope(shield=True):
                    await stream.reset()

    def connection_changed(self, peer_id: str, connected: bool) -> None:
        """A connection to ``peer_id`` opened or closed: drop its streams on closed ones; with
        no connection left, forget the peer (a restarted peer may speak a newer version)."""
        streams = self._out.get(peer_id)
        for out in (streams or {}).values():
            live = out.live
            if live is not None and not self._is_live(peer_id, live.stream):
                self.stats["message_streams_conn_closed"] += 1
                self._drop(out, live)
        if not connected:
            for protocol in self._one_shot_of:
                self._one_shot_peers.pop((peer_id, protocol), None)
            if streams is not None and not any(o.lock.locked() or o.live
                                               for o in streams.values()):
                del self._out[peer_id]

    def open_streams(self, peer_id: str) -> int:
        """Outbound message streams open to ``peer_id`` now (tests, status)."""
        return sum(1 for o in self._out.get(peer_id, {}).values() if o.live is not None)

    # -- receiving -----------------------------------------------------------------------------

    def stream_handler(self, handler: MessageHandler, max_bytes: int):
        """The stream handler of a message protocol: every frame to ``handler``, in order."""

        async def serve(peer: str, stream: Stream) -> None:
            self.stats["message_streams_served"] += 1
            while True:
                with trio.move_on_after(RECEIVER_IDLE_FACTOR * self.idle) as waiting:
                    more = await stream.wait_data()
                if waiting.cancelled_caught:
                    self.stats["message_streams_idle_reset"] += 1
                    await stream.reset()
                    return
                data = await stream.receive_frame(max_bytes, stream.timeout) if more else None
                if data is None:
                    return
                self._heard(peer)
                await self._deliver(handler, peer, data, stream.protocol)

        return serve

    def one_shot_handler(self, handler: MessageHandler, max_bytes: int):
        """The stream handler of a one-shot predecessor: one message, then the stream ends."""

        async def serve(peer: str, stream: Stream) -> None:
            data = await stream.receive_all(max_bytes, stream.timeout)
            await stream.close()
            await self._deliver(handler, peer, data, stream.protocol)

        return serve

    async def _deliver(self, handler: MessageHandler, peer: str, data: bytes,
                       protocol: str) -> None:
        try:
            await handler(peer, data)
        except Exception as exc:  # one message's failure must not end the stream
            self.stats["handler_error"] += 1
            log.warning("message handler of %s failed for peer %s: %s: %s", protocol, peer,
                        type(exc).__name__, exc)
            log.debug("handler traceback", exc_info=True)
