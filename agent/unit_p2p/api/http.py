"""HTTP/1.1 for the agent's local API: h11 (the sans-IO parser hypercorn, httpcore and uvicorn
use) driven by trio, one task per connection.

Why not a general ASGI server: the API is a handful of JSON routes on a local socket, and the
server's one duty is that nothing a client does (hang up mid-body, trickle bytes, open hundreds
of connections, send garbage) ends more than that client's own connection. Here each connection
is one task that reads, answers and closes in sequence, so no two tasks ever touch one stream,
and every failure of a connection is caught at that connection's boundary. Every phase has a
deadline, bodies have a size cap, and connections beyond ``Limits.max_connections`` (per
listener) get an immediate 503 ``busy``.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol

import h11
import trio

log = logging.getLogger("unit_p2p.api.http")

_RECV = 64 * 1024
# accept() failures that mean "out of descriptors or memory for now": wait and try again
_ACCEPT_RETRY = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
# how long, and how much, to keep reading after our last answer so the client gets to read it
# (closing with unread input makes the kernel send a reset that can destroy the answer)
_LINGER_S, _LINGER_BYTES = 1.0, 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """The bounds one listener enforces (docs/api.md, "Limits")."""

    max_connections: int = 64
    head_timeout: float = 5.0  # the whole request head, from connect or the previous answer
    body_timeout: float = 10.0  # the whole body, from the end of the head
    send_timeout: float = 10.0  # the whole answer
    max_head: int = 16 * 1024
    max_body: int = 17 * 1024 * 1024


@dataclass
class Request:
    method: str
    path: str  # without the query string
    headers: dict[bytes, bytes]  # names in lower case
    body: bytes = b""


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def json_response(status: int, document: Any) -> Response:
    return Response(status, json.dumps(document).encode() + b"\n")


def problem(status: int, error: str, detail: str) -> Response:
    """The API's error document: ``{"error": short code, "detail": one sentence}``."""
    return json_response(status, {"error": error, "detail": detail})


class Service(Protocol):
    def admit(self, request: Request) -> Response | None:
        """An answer given before the body is read (route unknown, not authorized), or None."""

    async def respond(self, request: Request) -> Response:
        """The answer to a complete request."""


class _Closing(Exception):
    """End this connection after sending ``response`` (if any)."""

    def __init__(self, response: Response | None = None):
        super().__init__()
        self.response = response


async def serve_listener(listener: trio.SocketListener, service: Service, limits: Limits,
                         *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Accept and serve connections until cancelled; never raises for a client's doing."""
    active = [0]  # connections being served
    turning_away = [0]  # connections being told 503
    async with trio.open_nursery() as nursery:
        task_status.started()
        starved = False  # out of descriptors: said once per episode, not ten times a second
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_RETRY:
                    raise
                if not starved:
                    log.warning("API cannot accept connections (%s); retrying every 0.1 s",
                                exc.strerror)
                starved = True
                await trio.sleep(0.1)
                continue
            if starved:
                log.warning("API accepts connections again")
                starved = False
            if active[0] < limits.max_connections:
                active[0] += 1
                nursery.start_soon(_counted, active, _serve_connection, stream, service, limits)
            elif turning_away[0] < limits.max_connections:
                turning_away[0] += 1
                nursery.start_soon(_counted, turning_away, _turn_away, stream, limits)
            else:
                await stream.aclose()


async def _counted(counter: list[int], job: Callable[..., Awaitable[None]], *args: Any) -> None:
    try:
        await job(*args)
    finally:
        counter[0] -= 1


async def _serve_connection(stream: trio.SocketStream, service: Service, limits: Limits) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head)
    answered_early = False  # we answer and close while the client may still be sending
    try:
        try:
            while await _one_exchange(conn, stream, service, limits):
                conn.start_next_cycle()
        except _Closing as closing:
            if closing.response is not None and conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                answered_early = True
                closing.response.headers.append((b"connection", b"close"))
                with trio.move_on_after(limits.send_timeout):
                    await _send_response(conn, stream, closing.response)
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                answered_early = True
                status = exc.error_status_hint
                answer = problem(status, "bad_request" if status == 400 else _code(status),
                                 f"malformed HTTP request: {str(exc)[:200]}")
                answer.headers.append((b"connection", b"close"))
                with trio.move_on_after(limits.send_timeout):
                    await _send_response(conn, stream, answer)
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError,
            OSError):
        pass  # the client went away or broke the exchange: this connection ends, nothing else
    except Exception:
        # A bug of ours in one request must not stop the API for every other client.
        log.exception("API connection failed")
    finally:
        await _close(stream, linger=answered_early)


async def _one_exchange(conn: h11.Connection, stream: trio.SocketStream, service: Service,
                        limits: Limits) -> bool:
    """Read one request and answer it; True when the connection can carry another."""
    with trio.move_on_after(limits.head_timeout) as head_deadline:
        event = await _next_event(conn, stream)
    if head_deadline.cancelled_caught:
        if conn.their_state is h11.IDLE and not conn.trailing_data[0]:
            raise _Closing()  # an idle keep-alive connection: just close it
        raise _Closing(problem(408, "request_timeout",
                               f"request head not received within {limits.head_timeout:g} s"))
    if isinstance(event, h11.ConnectionClosed):
        return False
    assert isinstance(event, h11.Request), event
    target = event.target.decode("ascii", "replace")
    request = Request(event.method.decode("ascii", "replace"), target.split("?", 1)[0],
                      dict(event.headers))

    if request.method == "HEAD":  # no route serves HEAD, and its answer may carry no body
        early: Response | None = Response(405, b"", headers=[(b"allow", b"GET, POST")])
    else:
        early = service.admit(request)
    if early is not None:
        if b"transfer-encoding" not in request.headers and request.headers.get(
                b"content-length", b"0") == b"0":
            conn.next_event()  # the EndOfMessage of a request without a body, already parsed
        if conn.their_state is not h11.DONE:  # body not read: this connection cannot go on
            raise _Closing(early)
        await _send_response(conn, stream, early, limits.send_timeout)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    length = request.headers.get(b"content-length")
    # h11 checked that it is digits; there may be thousands of them
    if length is not None and (len(length) > 12 or int(length) > limits.max_body):
        raise _Closing(_too_large(limits))
    if conn.they_are_waiting_for_100_continue:
        await stream.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
    chunks, size = [], 0
    with trio.move_on_after(limits.body_timeout) as body_deadline:
        while True:
            event = await _next_event(conn, stream)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limits.max_body:
                    raise _Closing(_too_large(limits))
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            else:  # ConnectionClosed: the client hung up before the whole body arrived
                raise _Closing()
    if body_deadline.cancelled_caught:
        raise _Closing(problem(408, "request_timeout",
                               f"request body not received within {limits.body_timeout:g} s"))
    request.body = b"".join(chunks)

    try:
        response = await service.respond(request)
    except Exception:
        log.exception("API %s %s failed", request.method, request.path[:200])
        raise _Closing(problem(500, "internal_error",
                               "the agent failed to answer; the reason is in its log")) from None
    await _send_response(conn, stream, response, limits.send_timeout)
    return conn.our_state is h11.DONE and conn.their_state is h11.DONE


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(_RECV))


async def _send_response(conn: h11.Connection, stream: trio.SocketStream, response: Response,
                         timeout: float | None = None) -> None:
    headers = [(b"content-type", response.content_type.encode()),
               (b"content-length", str(len(response.body)).encode()), *response.headers]
    data = (conn.send(h11.Response(status_code=response.status, headers=headers,
                                   reason=_reason(response.status)))
            + conn.send(h11.Data(data=response.body)) + conn.send(h11.EndOfMessage()))
    if timeout is None:
        await stream.send_all(data)
        return
    with trio.move_on_after(timeout) as deadline:
        await stream.send_all(data)
    if deadline.cancelled_caught:
        raise _Closing()


def _too_large(limits: Limits) -> Response:
    return problem(413, "too_large", f"request body over {limits.max_body} bytes")


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _code(status: int) -> str:
    return _reason(status).decode().lower().replace(" ", "_") or f"http_{status}"


async def _turn_away(stream: trio.SocketStream, limits: Limits) -> None:
    answer = problem(503, "busy", f"the API serves at most {limits.max_connections} connections "
                                  "at once; retry shortly")
    data = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\nretry-after: 1\r\n\r\n"
            % len(answer.body)) + answer.body
    try:
        with trio.move_on_after(_LINGER_S):
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await _close(stream, linger=True)


async def _close(stream: trio.SocketStream, *, linger: bool) -> None:
    """Close; with ``linger``, first half-close and read what the client still sends for a
    moment, so that it gets to read the answer we sent before its request was complete."""
    try:
        if linger:
            with trio.move_on_after(_LINGER_S):
                await stream.send_eof()
                drained = 0
                while drained < _LINGER_BYTES:
                    data = await stream.receive_some(_RECV)
                    if not data:
                        break
                    drained += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await stream.aclose()  # closes the socket even when the server is being cancelled
