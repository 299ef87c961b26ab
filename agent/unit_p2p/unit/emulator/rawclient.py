"""A byte-level HTTP client for the control API, for the self-check and the tests.

It sends exactly the bytes it is given and reads until the server closes, so tests can observe
what a client of Unit observes: the exact response bytes, or a connection closed (or reset)
without any response.
"""

from __future__ import annotations

import socket as stdsocket
from dataclasses import dataclass

import trio

from unit_p2p.unit.emulator.server import Address, parse_address

__all__ = ["RawResponse", "build_request", "exchange", "request"]


@dataclass
class RawResponse:
    status: int | None  # None: closed without a response
    headers: dict[str, str]
    body: bytes
    raw: bytes
    reset: bool = False


async def _connect(address: Address) -> trio.SocketStream:
    if address.kind == "unix":
        return await trio.open_unix_socket(address.path)
    return await trio.open_tcp_stream(address.host, address.port)


def build_request(
    method: str,
    path: str,
    body: bytes | None = None,
    headers: list[tuple[str, str]] | None = None,
    *,
    content_length: bool = True,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    if body is not None and content_length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def _parse(raw: bytes, reset: bool) -> RawResponse:
    if not raw:
        return RawResponse(None, {}, b"", raw, reset)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    return RawResponse(status, headers, body, raw, reset)


async def exchange(address: str | Address, data: bytes, *, half_close: bool = False) -> RawResponse:
    """Send ``data``, optionally shut down the write side, and read until the server closes."""
    addr = parse_address(address) if isinstance(address, str) else address
    stream = await _connect(addr)
    reset = False
    chunks: list[bytes] = []
    async with stream:
        try:
            await stream.send_all(data)
            if half_close:
                stream.socket.shutdown(stdsocket.SHUT_WR)
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
        except trio.BrokenResourceError:
            reset = True
    return _parse(b"".join(chunks), reset)


async def request(
    address: str | Address,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> RawResponse:
    return await exchange(address, build_request(method, path, body, headers))
