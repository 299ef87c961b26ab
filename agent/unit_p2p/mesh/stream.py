"""A bounded, size-capped wrapper around one libp2p stream.

yamux in py-libp2p 0.8.1 has no deadlines (``set_deadline`` raises NotImplementedError), so every
operation here runs under ``trio.fail_after``. Requests and responses are delimited by a yamux
half-close (FIN): ``close_write`` sends it, the other side's ``receive_all`` reads to EOF with a
size cap. We do not use py-libp2p's varint-prefixed ``read_exactly`` helper: it gives up on large
bodies (~406 KB over mplex, 1 MiB over yamux when data trickles in; notes).
"""

from __future__ import annotations

import logging

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamEOF

from ..errors import MeshError, WireError
from .guard import reset_quietly

log = logging.getLogger(__name__)

#: default bound (s) for one send/close/open; large documents get proportionally more time
DEFAULT_TIMEOUT = 30.0
READ_CHUNK = 64 * 1024


class Stream:
    """One request/response stream with a remote peer."""

    def __init__(self, raw: INetStream, peer_id: str, protocol: str,
                 timeout: float = DEFAULT_TIMEOUT):
        self.raw = raw
        self.peer_id = peer_id
        self.protocol = protocol
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<Stream {self.protocol} peer={self.peer_id}>"

    async def send_all(self, data: bytes) -> None:
        try:
            with trio.fail_after(self.timeout):
                await self.raw.write(data)
        except trio.TooSlowError as exc:
            await self.reset()
            raise MeshError(f"send to {self.peer_id} timed out after {self.timeout} s") from exc
        except Exception as exc:
            await self.reset()
            raise MeshError(f"send to {self.peer_id} failed: {type(exc).__name__}: {exc}") from exc

    async def close_write(self) -> None:
        """Half-close: the peer's ``receive_all`` sees EOF; we can still read its answer."""
        try:
            with trio.fail_after(self.timeout):
                await self.raw.close_write()
        except trio.TooSlowError as exc:
            await self.reset()
            raise MeshError(f"half-close to {self.peer_id} timed out") from exc
        except Exception as exc:
            await self.reset()
            raise MeshError(f"half-close to {self.peer_id} failed: {exc}") from exc

    # The timeout is part of the interface the sync layer was promised; it bounds the whole read.
    async def receive_all(self, max_bytes: int, timeout: float) -> bytes:  # noqa: ASYNC109
        """Read until the peer half-closes. Over ``max_bytes``: reset + WireError("too_large")."""
        chunks: list[bytes] = []
        total = 0
        try:
            with trio.fail_after(timeout):
                while True:
                    try:
                        chunk = await self.raw.read(min(READ_CHUNK, max_bytes - total + 1))
                    except StreamEOF:
                        break
                    if not chunk:
                        break
                    total += len(chunk)
                    if total > max_bytes:
                        await self.reset()
                        raise WireError(
                            "too_large",
                            f"{self.protocol} from {self.peer_id} exceeds {max_bytes} bytes",
                        )
                    chunks.append(chunk)
        except trio.TooSlowError as exc:
            await self.reset()
            raise MeshError(
                f"receive from {self.peer_id} timed out after {timeout} s ({total} bytes read)"
            ) from exc
        except WireError:
            raise
        except Exception as exc:
            await self.reset()
            raise MeshError(
                f"receive from {self.peer_id} failed: {type(exc).__name__}: {exc}"
            ) from exc
        return b"".join(chunks)

    async def reset(self) -> None:
        await reset_quietly(self.raw)

    async def close(self) -> None:
        try:
            with trio.fail_after(self.timeout):
                await self.raw.close()
        except Exception:
            # close() of an already reset/closed stream: nothing left to release but the stream
            log.debug("stream close failed; resetting", exc_info=True)
            await self.reset()
