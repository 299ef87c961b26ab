"""A small client for NGINX Unit's control API (``/config`` and friends).

Unit's answers map to ``unit_p2p.errors``:

    400 "Invalid JSON."                      UnitInvalidJSON      (detail, location)
    400 "Invalid configuration."             UnitInvalidConfig    (detail)
    404 any ("Value doesn't exist.", ...)    UnitPathNotFound
    405 any ("Method isn't allowed.", ...)   UnitMethodNotAllowed
    500 "Failed to apply new configuration." UnitApplyFailed      (Unit keeps the old config)
    any other error status                   UnitRejected
    no answer at all                         UnitUnreachable

"No answer" includes Unit closing the connection without a response, which real Unit 1.35
does when the request line plus headers exceed 1024 bytes or Content-Length is malformed (the
recorded transcripts show ``status: null``). We map that to UnitUnreachable rather than
UnitRejected because there is no status or error body to carry, and from the caller's side
it is indistinguishable from Unit dying mid-request; the message names the likely cause and
the path length so an over-long key is easy to spot.

Every call has a connect and read timeout. ``AsyncUnitClient`` runs the same calls in a worker
thread so the trio loop never waits on Unit.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import trio

from unit_p2p.errors import (
    UnitApplyFailed,
    UnitError,
    UnitInvalidConfig,
    UnitInvalidJSON,
    UnitMethodNotAllowed,
    UnitPathNotFound,
    UnitRejected,
    UnitUnreachable,
)
from unit_p2p.httpunix import Endpoint

__all__ = ["AsyncUnitClient", "UnitClient", "UnitPath", "unit_path"]

#: a Unit path: ``"/config/listeners/127.0.0.1:8080"`` or segments ``["config", "routes", 0]``
UnitPath = str | Sequence[str | int]

# Unit drops requests whose request line + headers exceed this many bytes (no answer at all).
_UNIT_HEADER_BUFFER = 1024


def unit_path(*segments: str | int) -> str:
    """Join raw keys into a Unit path, percent-encoding what Unit would split on.

    ``unit_path("config", "listeners", "unix:/run/a.sock")`` gives
    ``/config/listeners/unix:%2Frun%2Fa.sock``; Unit decodes ``%XX`` in each segment.
    """
    if not segments:
        raise ValueError("a Unit path needs at least one segment")
    return "/" + "/".join(quote(str(s), safe=":*[]@!$'()") for s in segments)


def _as_path(path: UnitPath) -> str:
    if isinstance(path, str):
        if not path.startswith("/"):
            raise ValueError(f"a Unit path starts with '/': {path!r}")
        return path
    return unit_path(*path)


_BY_STATUS: dict[int, type[UnitRejected]] = {
    404: UnitPathNotFound,
    405: UnitMethodNotAllowed,
}
_BY_ERROR: dict[tuple[int, str], type[UnitRejected]] = {
    (400, "Invalid JSON."): UnitInvalidJSON,
    (400, "Invalid configuration."): UnitInvalidConfig,
    (500, "Failed to apply new configuration."): UnitApplyFailed,
}


def _rejection(status: int, body: bytes, method: str, path: str) -> UnitRejected:
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
        text = body[:200].decode("utf-8", "replace").strip()
        return UnitRejected(status, f"(no Unit error body) {text!r}", method=method, path=path)
    error = doc["error"]
    cls = _BY_ERROR.get((status, error)) or _BY_STATUS.get(status, UnitRejected)
    location = doc.get("location") if isinstance(doc.get("location"), dict) else None
    return cls(status, error, doc.get("detail"), location, method=method, path=path)


class UnitClient:
    """Blocking client for one Unit control address (``unix:/path`` or ``127.0.0.1:PORT``)."""

    def __init__(self, address: str, timeout: float = 10.0):
        self._endpoint = Endpoint(
            address, timeout=timeout, name="NGINX Unit", unreachable=self._unreachable
        )
        self.address = str(self._endpoint.address)
        self.timeout = self._endpoint.timeout

    def get(self, path: UnitPath = "/config") -> Any:
        return self._call("GET", path)

    def put(self, path: UnitPath, value: Any) -> Any:
        return self._call("PUT", path, value)

    def post(self, path: UnitPath, value: Any) -> Any:
        """Append ``value`` to the array at ``path`` (Unit allows POST on arrays only)."""
        return self._call("POST", path, value)

    def delete(self, path: UnitPath) -> Any:
        return self._call("DELETE", path)

    def _call(self, method: str, path: UnitPath, value: Any = None) -> Any:
        p = _as_path(path)
        body = None
        headers = {}
        if method in ("PUT", "POST"):
            # A fixed Content-Length body: Unit's control API does not support chunked bodies.
            # allow_nan=False: Unit would reject NaN/Infinity as invalid JSON anyway.
            body = json.dumps(
                value, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode()
            headers["Content-Type"] = "application/json"
        response = self._endpoint.request(method, p, body=body, headers=headers)
        if response.status_code >= 400:
            raise _rejection(response.status_code, response.content, method, p)
        try:
            return json.loads(response.content)
        except ValueError:
            raise UnitError(
                f"NGINX Unit at {self.address} answered {method} {p} with"
                f" {response.status_code} but no JSON: {response.content[:200]!r}"
            ) from None

    @staticmethod
    def _unreachable(kind: str, message: str, path: str) -> UnitUnreachable:
        if kind == "closed":
            message += (
                f"; Unit does this when the request line and headers exceed"
                f" {_UNIT_HEADER_BUFFER} bytes (this path is {len(path)} bytes)"
                " or when it stops mid-request"
            )
        return UnitUnreachable(message)

    def close(self) -> None:
        self._endpoint.close()

    def __enter__(self) -> UnitClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncUnitClient:
    """The same calls as :class:`UnitClient`, awaitable from trio.

    Each call runs in a worker thread with ``abandon_on_cancel``: cancelling the caller returns at
    once; the abandoned thread finishes within the client's timeout and its result is dropped.
    """

    def __init__(self, address: str, timeout: float = 10.0):
        self.sync = UnitClient(address, timeout)
        self.address = self.sync.address

    async def _run(self, fn, *args) -> Any:
        return await trio.to_thread.run_sync(functools.partial(fn, *args), abandon_on_cancel=True)

    async def get(self, path: UnitPath = "/config") -> Any:
        return await self._run(self.sync.get, path)

    async def put(self, path: UnitPath, value: Any) -> Any:
        return await self._run(self.sync.put, path, value)

    async def post(self, path: UnitPath, value: Any) -> Any:
        return await self._run(self.sync.post, path, value)

    async def delete(self, path: UnitPath) -> Any:
        return await self._run(self.sync.delete, path)

    def close(self) -> None:
        self.sync.close()
