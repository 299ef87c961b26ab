"""A small client for NGINX Unit's control API (``/config`` and friends).

Unit's answers map to ``unit_p2p.errors``:

    400 "Invalid JSON."                      UnitInvalidJSON      (detail, location)
    400 "Invalid configuration."             UnitInvalidConfig    (detail)
    404 any ("Value doesn't exist.", ...)    UnitPathNotFound
    405 any ("Method isn't allowed.", ...)   UnitMethodNotAllowed
    500 "Failed to apply new configuration." UnitApplyFailed      (Unit keeps the old config)
    any other error status                   UnitRejected
    no answer at all                         UnitUnreachable
    an answer cut short, even in pieces      UnitShortAnswer

"No answer" includes Unit closing the connection without a response, which real Unit 1.35
does when the request line plus headers exceed 1024 bytes or Content-Length is malformed (the
recorded transcripts show ``status: null``); the message names the header limit only when the
request was over it.

**Answers cut short.** On a unix control socket Unit 1.35 writes what fits in the socket's send
buffer (``net.core.wmem_default``, 212992 bytes on common Linux hosts) and closes the connection
without the rest, unless the client read fast enough to make room: answers above about 200 KiB
arrive short some of the time, above a megabyte nearly always. A short answer is recognised by
its Content-Length. A GET whose answer is cut is then read in pieces small enough to arrive
whole (see :class:`_PieceReader`); over loopback TCP answers were never cut.

Every call has a connect and read timeout. ``AsyncUnitClient`` runs the same calls in a worker
thread so the trio loop never waits on Unit.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
    UnitShortAnswer,
    UnitUnreachable,
)
from unit_p2p.httpunix import Answer, Endpoint

# Unit's own printer, as reproduced for the emulator (and checked byte for byte against recorded
# answers): an object read in pieces is checked against the length Unit announced for it.
from unit_p2p.unit.emulator.jsonparse import dumps_pretty

__all__ = ["AsyncUnitClient", "UnitClient", "UnitPath", "unit_path"]

log = logging.getLogger("unit_p2p.unit")

#: where Linux keeps the send buffer size a new unix socket starts with (Unit never sets its own)
_WMEM_DEFAULT = "/proc/sys/net/core/wmem_default"

#: a Unit path: ``"/config/listeners/127.0.0.1:8080"`` or segments ``["config", "routes", 0]``
UnitPath = str | Sequence[str | int]

# Unit drops requests whose request line + headers exceed this many bytes (no answer at all).
_UNIT_HEADER_BUFFER = 1024

#: How often a read in pieces starts over because Unit's configuration changed while it ran,
#: and how often one piece that cannot be split (a string longer than the send buffer) is
#: asked for again before the read fails with UnitShortAnswer.
PIECE_ATTEMPTS = 3

#: Requests for array elements in flight at once during a read in pieces.
PIECE_CONCURRENCY = 8
_BATCH = 64

# The members Unit allows at the top of /config. Members of an object that come after the cut
# cannot be listed (Unit has no such request), so for /config itself they are asked for by name.
_CONFIG_MEMBERS = ("settings", "listeners", "routes", "applications", "upstreams", "access_log")

_SAFE = ":*[]@!$'()"


def unit_path(*segments: str | int) -> str:
    """Join raw keys into a Unit path, percent-encoding what Unit would split on.

    ``unit_path("config", "listeners", "unix:/run/a.sock")`` gives
    ``/config/listeners/unix:%2Frun%2Fa.sock``; Unit decodes ``%XX`` in each segment.
    """
    if not segments:
        raise ValueError("a Unit path needs at least one segment")
    return "/" + "/".join(quote(str(s), safe=_SAFE) for s in segments)


def _child(path: str, segment: str | int) -> str:
    return f"{path.rstrip('/')}/{quote(str(segment), safe=_SAFE)}"


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


_DECODER = json.JSONDecoder()
_WS = re.compile(r"[ \t\r\n]*")


@dataclass
class _Partial:
    """What arrived of a container whose answer was cut short."""

    array: bool
    #: the complete elements, or (name, value) pairs of the complete members
    items: list = field(default_factory=list)
    #: (objects) the name of the member that was cut, if the name itself arrived
    key: str | None = None
    #: that member's value (or the array's element being cut), if it is a container
    inner: _Partial | None = None


def _scan(text: str, pos: int) -> _Partial | None:
    """The complete parts of the cut-short container at ``text[pos]`` (None: not a container).

    A value counts as complete only once the ``,`` after it has arrived: a number cut short
    (``12`` of ``1234``) would otherwise parse.
    """
    if text[pos : pos + 1] not in ("[", "{"):
        return None
    part = _Partial(array=text[pos] == "[")
    pos = _WS.match(text, pos + 1).end()
    while pos < len(text):
        name = None
        if not part.array:
            try:
                name, after = _DECODER.raw_decode(text, pos)
            except ValueError:
                return part
            after = _WS.match(text, after).end()
            if not isinstance(name, str) or text[after : after + 1] != ":":
                return part
            part.key = name
            pos = _WS.match(text, after + 1).end()
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except ValueError:
            part.inner = _scan(text, pos)
            return part
        sep = _WS.match(text, end).end()
        if text[sep : sep + 1] != ",":
            return part
        part.items.append(value if part.array else (name, value))
        part.key = None
        pos = _WS.match(text, sep + 1).end()
    return part


class _Retry(Exception):
    """A cut object could not be completed (members after the cut, which Unit cannot list, or
    a change while it was read): the read in pieces starts over."""


class _PieceReader:
    """Reads a value whose answer was cut, in pieces that arrive whole.

    A cut array keeps its complete elements and reads the rest one index at a time until Unit
    answers 404; a cut object keeps its complete members and reads the member that was cut by
    its own path. Pieces that are themselves cut are split the same way.
    """

    def __init__(self, client: UnitClient):
        self.client = client
        self._count = itertools.count(1)
        self.requests = 0

    def get(self, path: str) -> Any:
        """GET ``path``, whole if it arrives whole, else in pieces."""
        for _ in range(PIECE_ATTEMPTS):
            answer = self.client._exchange("GET", path)
            self.requests = next(self._count)
            if answer.complete:
                return self.client._result("GET", path, answer)
            value = self.complete(path, answer)
            if value is not _UNREAD:
                return value
        raise self.client._short("GET", path, answer, "a value that cannot be split")

    def complete(self, path: str, answer: Answer) -> Any:
        text = answer.body.decode("utf-8", "surrogateescape")
        part = _scan(text, _WS.match(text).end())
        if part is None:
            return _UNREAD
        return self._fill(path, part, answer.expected)

    def _fill(self, path: str, part: _Partial, length: int | None) -> Any:
        if part.array:
            out = list(part.items)
            with ThreadPoolExecutor(PIECE_CONCURRENCY) as pool:
                while True:
                    # A batch of indices at a time, in parallel: each piece is one short
                    # exchange, so waiting for them one by one would leave both sides idle.
                    batch = [_child(path, i) for i in range(len(out), len(out) + _BATCH)]
                    for future in [pool.submit(self.get, sub) for sub in batch]:
                        try:
                            out.append(future.result())
                        except UnitPathNotFound:
                            return out
        out = dict(part.items)
        if part.key is not None:
            sub = _child(path, part.key)
            if part.inner is not None and part.inner.array:
                out[part.key] = self._fill(sub, part.inner, None)
            else:
                out[part.key] = self.get(sub)
        if path.rstrip("/") == "/config":
            for name in _CONFIG_MEMBERS:
                if name not in out:
                    with contextlib.suppress(UnitPathNotFound):
                        out[name] = self.get(_child(path, name))
            return out
        if length is None or len(dumps_pretty(out)) != length:
            # Members after the cut exist (Unit cannot list them), or the object changed
            # meanwhile. (A float Unit prints unlike Python, 1.50, also ends here: it only
            # costs the retries, then UnitShortAnswer.)
            raise _Retry(path)
        return out


#: a cut answer that could not be completed this time (a cut string, or a _Retry)
_UNREAD = object()


class UnitClient:
    """Blocking client for one Unit control address (``unix:/path`` or ``127.0.0.1:PORT``)."""

    def __init__(self, address: str, timeout: float = 10.0):
        self._endpoint = Endpoint(
            address, timeout=timeout, name="NGINX Unit", unreachable=self._unreachable
        )
        self.address = str(self._endpoint.address)
        self.timeout = self._endpoint.timeout
        #: GETs whose answer was cut short and then read in pieces (with how many requests)
        self.piecewise_reads = 0
        self.piece_requests = 0

    def get(self, path: UnitPath = "/config") -> Any:
        """GET ``path``. An answer Unit cuts short is read again in pieces, reassembled and
        checked: the answer read once more afterwards must announce the same length and start
        with the same bytes, else Unit's configuration changed meanwhile and the read starts
        over (at most ``PIECE_ATTEMPTS`` times, then UnitShortAnswer)."""
        p = _as_path(path)
        answer = self._exchange("GET", p)
        for _ in range(PIECE_ATTEMPTS):
            if answer.complete:
                return self._result("GET", p, answer)
            reader = _PieceReader(self)
            try:
                value = reader.complete(p, answer)
            except _Retry:
                value = _UNREAD
            finally:
                self.piecewise_reads += 1
                self.piece_requests += reader.requests
                if self.piecewise_reads == 1:
                    self._explain_cut(p, answer, reader.requests)
            check = self._exchange("GET", p)
            if check.complete or value is _UNREAD:
                answer = check
                continue
            n = min(len(answer.body), len(check.body))
            if check.expected == answer.expected and check.body[:n] == answer.body[:n]:
                return value
            answer = check
        if answer.complete:
            return self._result("GET", p, answer)
        raise self._short("GET", p, answer, f"{PIECE_ATTEMPTS} attempts to read it in pieces")

    def _explain_cut(self, path: str, answer: Answer, requests: int) -> None:
        """Say once per client why reads got slow, and the host setting that ends it: a read in
        pieces costs one request per cut array element (18,000 for a 1.6 MB config, about 1 s
        of this agent's CPU), a whole answer one."""
        try:
            with open(_WMEM_DEFAULT) as f:
                buffer = f"net.core.wmem_default = {int(f.read())} bytes"
        except (OSError, ValueError):
            buffer = "net.core.wmem_default"
        log.warning(
            "Unit cut its %s-byte answer to GET %s after %d bytes (its control socket's send "
            "buffer, %s); read in pieces with %d requests. Unit answers whole when the send "
            "buffer holds the answer: raise net.core.wmem_default above the config's size "
            "(docs/unit.md), or use a loopback TCP control socket",
            answer.expected, path, len(answer.body), buffer, requests)

    def put(self, path: UnitPath, value: Any) -> Any:
        return self._call("PUT", path, value)

    def put_raw(self, path: UnitPath, body: bytes) -> Any:
        """PUT ``body`` as it is: a certificate bundle (PEM) or a JS module's text, which Unit
        takes unwrapped (``PUT /certificates/NAME``, ``PUT /js_modules/NAME``)."""
        p = _as_path(path)
        return self._result("PUT", p, self._exchange("PUT", p, bytes(body),
                                                     {"Content-Type": "application/octet-stream"}))

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
        return self._result(method, p, self._exchange(method, p, body, headers))

    def _exchange(self, method: str, path: str, body=None, headers=None) -> Answer:
        return self._endpoint.exchange(method, path, body=body, headers=headers)

    def _result(self, method: str, path: str, answer: Answer) -> Any:
        if not answer.complete:
            raise self._short(method, path, answer, "no second try for this method")
        if answer.status >= 400:
            raise _rejection(answer.status, answer.body, method, path)
        try:
            return _DECODER.decode(answer.body.decode("utf-8", "surrogateescape"))
        except ValueError:
            raise UnitError(
                f"NGINX Unit at {self.address} answered {method} {path} with"
                f" {answer.status} but no JSON: {answer.body[:200]!r}"
            ) from None

    def _short(self, method: str, path: str, answer: Answer, tried: str) -> UnitShortAnswer:
        hint = ""
        if self._endpoint.address.socket_path is not None:
            hint = (
                "; Unit 1.35 drops what does not fit in a unix control socket's send buffer"
                " (a loopback TCP control socket does not have this problem)"
            )
        return UnitShortAnswer(
            f"NGINX Unit at {self.address} cut its answer to {method} {path} short:"
            f" {len(answer.body)} of {answer.expected} body bytes arrived ({tried}){hint}",
            path=path, received=len(answer.body), expected=answer.expected or 0,
        )

    @staticmethod
    def _unreachable(kind: str, message: str, path: str) -> UnitUnreachable:
        if kind == "closed" and len(path) > _UNIT_HEADER_BUFFER - 100:
            message += (
                f"; Unit closes the connection unanswered when the request line and headers"
                f" exceed {_UNIT_HEADER_BUFFER} bytes, and this path alone is {len(path)} bytes"
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

    async def put_raw(self, path: UnitPath, body: bytes) -> Any:
        return await self._run(self.sync.put_raw, path, body)

    async def post(self, path: UnitPath, value: Any) -> Any:
        return await self._run(self.sync.post, path, value)

    async def delete(self, path: UnitPath) -> Any:
        return await self._run(self.sync.delete, path)

    def close(self) -> None:
        self.sync.close()
