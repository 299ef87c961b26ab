"""A bounded, size-capped, framed wrapper around one libp2p stream.

yamux in py-libp2p 0.8.1 has no deadlines (``set_deadline`` raises NotImplementedError), so every
operation here runs under ``trio.fail_after``.

Half-close works in 0.8.1 (``close_write`` sends a yamux FIN and the peer reads EOF), but EOF
cannot be trusted to mean "complete": after a remote RST the stream's bookkeeping is dropped and a
later read reports EOF, not reset (measured: a handler that raised looked like an empty, complete
answer). So the body is framed: every ``send_all`` writes ``0x01 + u32 length + bytes``, and
``close_write`` writes the end marker ``0x00`` before the FIN. ``receive_all`` returns only after
the end marker; EOF or reset before it is a MeshError, a frame over the cap is WireError
("too_large") raised from the header alone, before its bytes are buffered. We do not use
py-libp2p's varint-prefixed ``read_exactly`` helper: it gives up on large bodies (~406 KB over
mplex, 1 MiB over yamux when data trickles in; docs/libp2p.md).

The same frames carry a *message stream* (mesh/notify.py): one frame per message, many messages
on one long-lived stream, the end marker when the sender is done. ``send_frame`` writes one
message, ``receive_frame`` reads one, ``wait_data`` waits for the next without a deadline (the
caller's idle policy bounds it). A one-request body is a message stream of one message.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamEOF, StreamReset

from ..errors import MeshError, WireError
from .guard import reset_quietly

log = logging.getLogger(__name__)

#: default bound (s) for one send/close/open; large documents get proportionally more time
DEFAULT_TIMEOUT = 30.0
READ_CHUNK = 64 * 1024
FRAME_DATA = 0x01
FRAME_END = 0x00
_HEADER = struct.Struct(">BI")
#: largest single frame written; bigger payloads are split so no length nears 2**32
MAX_FRAME = 1024 * 1024


class Stream:
    """One request/response stream with a remote peer."""

    def __init__(self, raw: INetStream, peer_id: str, protocol: str,
                 timeout: float = DEFAULT_TIMEOUT):
        self.raw = raw
        self.peer_id = peer_id
        self.protocol = protocol
        self.timeout = timeout
        self._buffer = bytearray()
        self._ended = False
        #: this end reset the stream (a failed write or read, a refused frame)
        self.reset_here = False

    def __repr__(self) -> str:
        return f"<Stream {self.protocol} peer={self.peer_id}>"

    async def send_all(self, data: bytes) -> None:
        """Write ``data`` as the body's next frames (split at MAX_FRAME)."""
        view = memoryview(data)
        await self._write([view[offset:offset + MAX_FRAME]
                           for offset in range(0, len(view), MAX_FRAME)])

    async def send_frame(self, data: bytes) -> None:
        """Write ``data`` as exactly one frame: one message of a message stream."""
        if len(data) > MAX_FRAME:
            raise MeshError(f"a message of {len(data)} bytes exceeds one frame ({MAX_FRAME})")
        await self._write([data])

    async def _write(self, chunks: list) -> None:
        # A failed or timed-out write may have left part of a frame on the wire: reset, so the
        # reader never takes what follows for a frame header.
        try:
            with trio.fail_after(self.timeout):
                for chunk in chunks:
                    await self.raw.write(_HEADER.pack(FRAME_DATA, len(chunk)) + chunk)
        except trio.TooSlowError as exc:
            await self.reset()
            raise MeshError(f"send to {self.peer_id} timed out after {self.timeout} s") from exc
        except Exception as exc:
            await self.reset()
            raise MeshError(f"send to {self.peer_id} failed: {type(exc).__name__}: {exc}") from exc

    async def close_write(self) -> None:
        """End marker + half-close: the peer's ``receive_all`` returns; we can still read."""
        try:
            with trio.fail_after(self.timeout):
                await self.raw.write(bytes([FRAME_END]))
                await self.raw.close_write()
        except trio.TooSlowError as exc:
            await self.reset()
            raise MeshError(f"half-close to {self.peer_id} timed out") from exc
        except Exception as exc:
            await self.reset()
            raise MeshError(f"half-close to {self.peer_id} failed: {exc}") from exc

    # The timeout is part of the interface the sync layer was promised; it bounds the whole read.
    async def receive_all(self, max_bytes: int, timeout: float) -> bytes:
        """Read frames up to the end marker. Over ``max_bytes``: reset + WireError("too_large")."""
        if self._ended:
            raise MeshError(f"{self.protocol} from {self.peer_id}: body already received")
        chunks: list[bytes] = []
        total = 0
        async with self._reading(timeout, lambda: f"{total} bytes read"):
            while (frame := await self._next_frame(max_bytes - total)) is not None:
                chunks.append(frame)
                total += len(frame)
        return b"".join(chunks)

    async def receive_frame(self, max_bytes: int, timeout: float) -> bytes | None:
        """The next message of a message stream, or None when the sender ended the stream (the
        end marker, or EOF/reset between two frames). A frame over ``max_bytes``: reset +
        WireError("too_large") from its header alone; a frame cut short: MeshError."""
        if self._ended or not await self.wait_data():
            return None
        async with self._reading(timeout, lambda: "one frame"):
            return await self._next_frame(max_bytes)

    async def wait_data(self) -> bool:
        """Wait, without a deadline (bound it), until the peer sends something: True, or ends
        (EOF or reset) the stream: False. Nothing is consumed."""
        if self._buffer:
            return True
        if self._ended:
            return False
        try:
            chunk = await self.raw.read(READ_CHUNK)
        except (StreamEOF, StreamReset):
            chunk = b""
        except Exception as exc:
            await self.reset()
            raise MeshError(f"receive from {self.peer_id} failed: {type(exc).__name__}: "
                            f"{exc}") from exc
        if not chunk:
            self._ended = True
            return False
        self._buffer += chunk
        return True

    @asynccontextmanager
    async def _reading(self, timeout: float, progress: Callable[[], str]) -> AsyncIterator[None]:
        """Bound a read by ``timeout`` and translate its failures (after a reset) to MeshError;
        WireError and MeshError pass as they are."""
        try:
            with trio.fail_after(timeout):
                yield
        except trio.TooSlowError as exc:
            await self.reset()
            raise MeshError(
                f"receive from {self.peer_id} timed out after {timeout} s ({progress()})"
            ) from exc
        except (WireError, MeshError):
            raise
        except Exception as exc:
            await self.reset()
            raise MeshError(
                f"receive from {self.peer_id} failed: {type(exc).__name__}: {exc}"
            ) from exc

    async def _next_frame(self, max_bytes: int) -> bytes | None:
        """One frame's bytes, or None at the end marker (then the stream has ended)."""
        kind = (await self._read_exactly(1))[0]
        if kind == FRAME_END:
            self._ended = True
            return None
        if kind != FRAME_DATA:
            await self.reset()
            raise WireError("malformed", f"{self.protocol} from {self.peer_id}: "
                            f"unknown frame type {kind:#x}")
        (length,) = struct.unpack(">I", await self._read_exactly(4))
        if length > max_bytes:
            await self.reset()
            raise WireError("too_large", f"{self.protocol} from {self.peer_id}: a frame of "
                            f"{length} bytes exceeds the {max_bytes} bytes allowed")
        return await self._read_exactly(length)

    async def _read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            try:
                chunk = await self.raw.read(max(READ_CHUNK, n - len(self._buffer)))
            except StreamEOF:
                chunk = b""
            if not chunk:
                await self.reset()
                raise MeshError(f"{self.protocol} from {self.peer_id} ended before the end "
                                "marker (truncated or reset)")
            self._buffer += chunk
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    async def reset(self) -> None:
        self.reset_here = True
        await reset_quietly(self.raw)

    async def close(self) -> None:
        try:
            with trio.fail_after(self.timeout):
                await self.raw.close()
        except Exception:
            # close() of an already reset/closed stream: nothing left to release but the stream
            log.debug("stream close failed; resetting", exc_info=True)
            await self.reset()
