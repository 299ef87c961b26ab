"""The emulator's sockets: a small HTTP/1.1 server written directly on trio sockets.

Unit's control API is not a general web server and neither is this: one request per connection,
every response closes the connection, and the framing quirks clients can observe are reproduced:

* the request line and headers must fit in 1024 bytes, otherwise the connection is closed
  without a response (the unread rest makes the kernel send a reset, as with Unit);
* without ``Content-Length`` the body is whatever arrived together with the headers (chunked
  transfer coding is not decoded, so a chunked body usually fails as invalid JSON);
* an invalid or oversized ``Content-Length``, a malformed request line, or a client that closes
  before sending the whole body also end in a closed connection without a response;
* responses carry ``Server: Unit/1.35.0``, ``Date``, ``Content-Type: application/json``,
  ``Content-Length`` and ``Connection: close``, with Unit's pretty-printed JSON body;
* on a unix control socket an answer is written only as far as the socket's send buffer takes
  it, then the connection is closed (see :meth:`UnitEmulator._send_cut`), as Unit 1.35 does.

Bad input never takes the server down: each connection is handled in its own task and any
failure closes only that connection.
"""

from __future__ import annotations

import copy
import errno
import json
import logging
import os
import re
import socket as stdsocket
import stat
from dataclasses import dataclass
from email.utils import formatdate
from functools import partial
from http import HTTPStatus
from pathlib import Path

import trio

from unit_p2p.unit.emulator.controller import Controller, Reply
from unit_p2p.unit.emulator.jsonparse import dumps_pretty
from unit_p2p.unit.emulator.state import EmulatorError, StateDir

__all__ = ["Address", "Request", "UnitEmulator", "parse_address", "read_request"]

log = logging.getLogger("unit_p2p.unit.emulator")

SERVER_HEADER = "Unit/1.35.0"
#: Unit's controller reads the request line and headers into a 1024-byte buffer.
HEADER_LIMIT = 1024
#: Unit has no body limit on the control API; the emulator refuses absurd sizes to stay safe.
BODY_LIMIT = 256 * 1024 * 1024
#: A connection that does not deliver its request within this time is closed.
READ_TIMEOUT = 60.0

#: Big GET answers are kept printed (see ``UnitEmulator._printed``): from this size, this many.
_PRINT_CACHE_MIN = 64 * 1024
_PRINT_CACHE_ENTRIES = 4
#: A whole answer up to this size always fits in a fresh unix socket's send buffer.
_QUICK_WHOLE_MAX = 64 * 1024

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_METHOD = re.compile(r"[A-Z][A-Z_-]*")


@dataclass(frozen=True)
class Address:
    kind: str  # "unix" or "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_address(spec: str) -> Address:
    """``unix:/path.sock``, ``HOST:PORT`` or ``http://HOST:PORT`` (HOST an IP literal)."""
    if spec.startswith("unix:"):
        path = spec[5:]
        if not path:
            raise EmulatorError(f"{spec!r}: a unix socket address needs a path")
        return Address("unix", path=path)
    rest = spec.removeprefix("http://").rstrip("/")
    if rest.startswith("["):
        host, sep, port_text = rest[1:].partition("]:")
    else:
        host, sep, port_text = rest.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise EmulatorError(
            f"{spec!r}: expected unix:/path.sock, 127.0.0.1:PORT or http://127.0.0.1:PORT"
        )
    try:
        stdsocket.inet_pton(stdsocket.AF_INET6 if ":" in host else stdsocket.AF_INET, host)
    except OSError:
        raise EmulatorError(f"{spec!r}: the host must be an IP address") from None
    return Address("tcp", host=host, port=int(port_text))


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


async def read_request(
    stream: trio.abc.ReceiveStream, header_limit: int = HEADER_LIMIT, initial: bytes = b""
) -> Request | None:
    """Read one request (``initial``: bytes of it already read); None means "close without
    answering" (Unit's reaction)."""
    buf = bytearray(initial)
    while True:
        end = _HEADER_END.search(buf)
        if end is not None:
            break
        if len(buf) >= header_limit:
            return None
        chunk = await stream.receive_some(header_limit - len(buf))
        if not chunk:
            return None
        buf += chunk
    parsed = _parse_head(bytes(buf[: end.start()]))
    if parsed is None:
        return None
    method, target, headers, length = parsed
    leftover = bytes(buf[end.end() :])
    if length is None:
        # Unit's quirk: without a length, the body is what came with the headers.
        return Request(method, target, headers, leftover)
    body = bytearray(leftover[:length])
    while len(body) < length:
        chunk = await stream.receive_some(min(length - len(body), 1 << 20))
        if not chunk:
            return None
        body += chunk
    return Request(method, target, headers, bytes(body))


def _parse_head(head: bytes) -> tuple[str, str, list[tuple[str, str]], int | None] | None:
    """Request line and headers: method, target, headers, Content-Length; None if malformed."""
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    try:
        method, target, version = lines[0].decode("utf-8", "surrogateescape").split(" ")
    except ValueError:
        return None
    if not _METHOD.fullmatch(method) or not target.startswith("/"):
        return None
    if not version.startswith("HTTP/1."):
        return None
    headers: list[tuple[str, str]] = []
    length: int | None = None
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            return None
        key = name.strip().decode("latin-1")
        text = value.strip().decode("latin-1")
        headers.append((key, text))
        if key.lower() == "content-length":
            if not text.isdigit() or not text.isascii() or int(text) > BODY_LIMIT:
                return None
            length = int(text)
    return method, target, headers, length


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # an injected status without a standard name
        return "Unknown"


def render(reply: Reply, body: bytes | None = None) -> bytes:
    """The whole answer; ``body`` is ``reply.body`` already printed, if the caller has it."""
    if body is None:
        body = dumps_pretty(reply.body)
    phrase = _phrase(reply.status)
    head = (
        f"HTTP/1.1 {reply.status} {phrase}\r\n"
        f"Server: {SERVER_HEADER}\r\n"
        f"Date: {formatdate(usegmt=True)}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _plain_json(status: int, body: object) -> bytes:
    data = (json.dumps(body) + "\n").encode()
    phrase = _phrase(status)
    return (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode("ascii") + data


def _check_unix_path(path: str) -> None:
    """Remove a stale socket file; refuse to touch anything else or a live socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise EmulatorError(f"{path} exists and is not a socket")
    probe = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: a leftover from a process that died
        return
    finally:
        probe.close()
    raise EmulatorError(f"{path}: another process is already listening there")


class _Endpoint:
    """One listening socket whose accept loop can be stopped and restarted."""

    def __init__(self, address: Address, handler, quick=None):
        self.address = address
        self.handler = handler
        #: ``quick(conn)`` may answer a connection at once (returns None) or return the bytes it
        #: read, which the handler task then gets along with the connection.
        self.quick = quick
        self.sock: trio.socket.SocketType | None = None
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()

    async def open(self) -> None:
        if self.address.kind == "unix":
            await trio.to_thread.run_sync(_check_unix_path, self.address.path)
            sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
            try:
                await sock.bind(self.address.path)
            except OSError as exc:
                sock.close()
                raise EmulatorError(f"cannot listen on {self.address}: {exc.strerror}") from exc
        else:
            family = stdsocket.AF_INET6 if ":" in self.address.host else stdsocket.AF_INET
            sock = trio.socket.socket(family, stdsocket.SOCK_STREAM)
            # The control port must be reusable at once when a test restarts the socket.
            sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
            try:
                await sock.bind((self.address.host, self.address.port))
            except OSError as exc:
                sock.close()
                raise EmulatorError(f"cannot listen on {self.address}: {exc.strerror}") from exc
            # Keep the port a test got from port 0, so the socket comes back at the same place.
            self.address = Address("tcp", host=self.address.host, port=sock.getsockname()[1])
        sock.listen(128)
        self.sock = sock

    def start(self, nursery: trio.Nursery) -> None:
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()
        nursery.start_soon(self._accept_loop, nursery, self._scope, self._stopped)

    async def _accept_loop(self, nursery, scope, stopped) -> None:
        try:
            with scope:
                while True:
                    try:
                        conn, _ = await self.sock.accept()  # type: ignore[union-attr]
                    except OSError as exc:
                        if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                            continue  # the client gave up before we accepted
                        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                            log.warning("accept on %s: %s; backing off", self.address, exc)
                            await trio.sleep(0.1)
                            continue
                        raise
                    initial = b"" if self.quick is None else self.quick(conn)
                    if initial is not None:
                        nursery.start_soon(self.handler, conn, initial)
        finally:
            stopped.set()

    async def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            await self._stopped.wait()
            self._scope = None
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            if self.address.kind == "unix":
                Path(self.address.path).unlink(missing_ok=True)


class UnitEmulator:
    """An NGINX Unit 1.35 control API stand-in, for tests and demos (see the package docs)."""

    def __init__(
        self,
        control: str,
        *,
        state_dir: Path | None = None,
        admin: str | None = None,
        bind_listeners: bool = True,
        all_addresses: bool = False,
        modules: dict[str, dict[str, str]] | None = None,
        read_timeout: float = READ_TIMEOUT,
        cut_unix_answers: bool = True,
        njs: bool = True,
    ):
        #: cut answers on a unix control socket as Unit 1.35 does; may be switched at any time
        self.cut_unix_answers = cut_unix_answers
        self._control = _Endpoint(parse_address(control), self._serve_control)
        if self._control.address.kind == "unix":
            self._control.quick = self._quick_get
        self._admin = _Endpoint(parse_address(admin), self._serve_admin) if admin else None
        self._controller = Controller(
            state_dir=StateDir(Path(state_dir)) if state_dir is not None else None,
            modules=modules,
            bind_listeners=bind_listeners,
            all_addresses=all_addresses,
            njs=njs,
        )
        self._read_timeout = read_timeout
        self._nursery: trio.Nursery | None = None
        self._listening = False
        #: answers on the unix control socket that were cut short (see ``_send_cut``)
        self.cut_answers = 0
        self._printed_cache: dict[str, bytes] = {}
        self._printed_version = -1

    # ------------------------------------------------------------- inspection

    @property
    def control_address(self) -> str:
        """``unix:/path`` or ``HOST:PORT`` (the real port once serving, if 0 was asked)."""
        return str(self._control.address)

    @property
    def admin_address(self) -> str | None:
        return str(self._admin.address) if self._admin else None

    @property
    def config(self) -> object:
        """A copy of the current configuration tree."""
        return copy.deepcopy(self._controller.conf)

    @property
    def certificates(self) -> dict[str, bytes]:
        """The uploaded bundles by name, as uploaded (PEM, private key included): what a test
        compares with what it published; Unit itself never gives the PEM back."""
        return {name: bundle.pem for name, bundle in self._controller.certs.items()}

    @property
    def js_modules(self) -> dict[str, str] | None:
        """The uploaded JS modules by name (None for a Unit built without njs)."""
        scripts = self._controller.scripts
        return None if scripts is None else dict(scripts)

    @property
    def put_count(self) -> int:
        """PUT requests received on /config, whatever their outcome."""
        return self._controller.put_count

    @property
    def applied_count(self) -> int:
        """Configuration writes (PUT/POST/DELETE) that were applied."""
        return self._controller.applied_count

    @property
    def listening(self) -> bool:
        return self._listening

    # --------------------------------------------------------- fault injection

    def fail_next_puts(self, n: int = 1, status: int = 500) -> None:
        """The next ``n`` valid PUTs on /config answer ``status`` with "Failed to apply new
        configuration." and change nothing, as when Unit cannot bind a listener."""
        self._controller.fail_next_puts(n, status)

    async def stop_listening(self) -> None:
        """Close the control socket (a unix socket file disappears): connections are refused
        until :meth:`start_listening`. Requests already being handled are answered."""
        if self._listening:
            await self._control.stop()
            self._listening = False

    async def start_listening(self) -> None:
        """Listen again at the same path or port."""
        if self._nursery is None:
            raise RuntimeError("the emulator is not serving")
        if not self._listening:
            await self._control.open()
            self._control.start(self._nursery)
            self._listening = True

    # ------------------------------------------------------------------ serve

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await trio.to_thread.run_sync(self._controller.load_state)
        try:
            # Sockets are opened before the nursery exists so that a failure surfaces as a
            # plain EmulatorError rather than inside an exception group.
            if self._admin is not None:
                await self._admin.open()
            await self._control.open()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(
                    partial(self._controller.serve_listeners, read_timeout=self._read_timeout)
                )
                if self._admin is not None:
                    self._admin.start(nursery)
                self._control.start(nursery)
                self._listening = True
                task_status.started(self.control_address)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._listening = False
            self._control.close()
            if self._admin is not None:
                self._admin.close()
            self._controller.close()

    async def _serve_connection(
        self, sock, header_limit: int, respond, cut: bool, initial: bytes = b""
    ) -> None:
        """One request, one response, close; any failure ends only this connection."""
        stream = trio.SocketStream(sock)
        try:
            async with stream:
                # The deadline is for a client that never finishes its request; handling and
                # sending a large answer on a loaded machine may take longer and must not be cut.
                request = None
                with trio.move_on_after(self._read_timeout):
                    request = await read_request(stream, header_limit, initial)
                if request is None:
                    return
                answer = await respond(request)
                if cut:
                    self._send_cut(sock, answer)
                    return
                await stream.send_all(answer)
                await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("connection dropped by the client: %s", exc)
        except Exception:
            # A bug must not take the whole emulator down; it is logged with its traceback.
            log.exception("request failed")

    def _quick_get(self, sock: trio.socket.SocketType) -> bytes | None:
        """Answer a GET under /config on the unix control socket without a task, when the whole
        request is already there: the common request of a client reading a big configuration in
        pieces, thousands of times. Anything else returns what it read, for the task."""
        try:
            data = os.read(sock.fileno(), HEADER_LIMIT)
        except BlockingIOError:
            return b""
        except OSError:
            sock.close()
            return None
        end = _HEADER_END.search(data) if data.startswith(b"GET ") else None
        parsed = _parse_head(data[: end.start()]) if end is not None else None
        if parsed is None or parsed[3]:  # incomplete, malformed, or a GET with a body
            return data
        reply = self._controller.read(parsed[1])
        if reply is None:
            return data
        answer = render(reply, self._printed(Request("GET", parsed[1], parsed[2], b""), reply))
        if self.cut_unix_answers:
            self._send_cut(sock, answer)
        elif len(answer) > _QUICK_WHOLE_MAX:
            # A whole answer may not fit in the send buffer at once: send it from a task.
            self._nursery.start_soon(self._send_whole, sock, answer)  # type: ignore[union-attr]
            return None
        else:
            self._send_cut(sock, answer)  # fits in the buffer of a fresh unix socket
        sock.close()
        return None

    async def _send_whole(self, sock: trio.socket.SocketType, answer: bytes) -> None:
        stream = trio.SocketStream(sock)
        try:
            async with stream:
                await stream.send_all(answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("connection dropped by the client: %s", exc)

    async def _serve_control(self, sock: trio.socket.SocketType, initial: bytes = b"") -> None:
        async def respond(request: Request) -> bytes:
            reply = await self._controller.handle(request.method, request.target, request.body)
            return render(reply, self._printed(request, reply))

        cut = self.cut_unix_answers and self._control.address.kind == "unix"
        await self._serve_connection(sock, HEADER_LIMIT, respond, cut, initial)

    def _printed(self, request: Request, reply: Reply) -> bytes | None:
        """A big GET answer under /config printed once per configuration, not once per read:
        printing 2.7 MB costs the emulator half a second of pure Python (Unit: milliseconds),
        and a client reading a cut answer in pieces asks for it more than once."""
        if request.method != "GET" or reply.status != 200:
            return None
        if not request.target.startswith("/config"):
            return None
        version = self._controller.applied_count
        if version != self._printed_version:
            self._printed_cache.clear()
            self._printed_version = version
        body = self._printed_cache.get(request.target)
        if body is None:
            body = dumps_pretty(reply.body)
            if len(body) >= _PRINT_CACHE_MIN:
                if len(self._printed_cache) >= _PRINT_CACHE_ENTRIES:
                    self._printed_cache.pop(next(iter(self._printed_cache)))
                self._printed_cache[request.target] = body
        return body

    def _send_cut(self, sock: trio.socket.SocketType, answer: bytes) -> None:
        """Write ``answer`` as far as the send buffer takes it without waiting, then stop.

        Unit 1.35 answers this way on a unix control socket: what does not fit in the socket's
        send buffer (``net.core.wmem_default``, about 210 KiB of answer) is dropped and the
        connection closed, unless the client happened to read fast enough to make room.
        Data already queued stays readable for the client after the close (unix sockets queue
        it on the receiving side), so the client sees a short body and then EOF.
        """
        view = memoryview(answer)
        sent = 0
        try:
            while sent < len(view):
                sent += os.write(sock.fileno(), view[sent:])
        except BlockingIOError:
            self.cut_answers += 1
            log.debug("answer cut at %d of %d bytes (send buffer full)", sent, len(view))
        except OSError as exc:  # the client went away
            log.debug("connection dropped by the client: %s", exc)

    async def _serve_admin(self, sock: trio.socket.SocketType, initial: bytes = b"") -> None:
        async def respond(request: Request) -> bytes:
            return _plain_json(*await self._admin_reply(request))

        await self._serve_connection(sock, 64 * 1024, respond, False, initial)

    def _admin_state(self) -> dict:
        return {
            "control": self.control_address,
            "listening": self._listening,
            "put_count": self.put_count,
            "applied_count": self.applied_count,
            "pending_failures": self._controller.pending_failures,
            "config": self._controller.conf,
        }

    async def _admin_reply(self, request: Request) -> tuple[int, object]:
        path = request.target.split("?", 1)[0]
        routes = {"/state", "/fail-next-puts", "/stop-listening", "/start-listening"}
        if path not in routes:
            return 404, {"error": "not_found", "detail": f"no admin endpoint {path}"}
        if path == "/state":
            if request.method != "GET":
                return 405, {"error": "method_not_allowed", "detail": "use GET"}
            return 200, self._admin_state()
        if request.method != "POST":
            return 405, {"error": "method_not_allowed", "detail": "use POST"}
        if path == "/fail-next-puts":
            try:
                args = json.loads(request.body or b"{}")
                if not isinstance(args, dict):
                    raise ValueError("the body must be a JSON object")
                n, status = args.get("n", 1), args.get("status", 500)
                if not isinstance(n, int) or not isinstance(status, int):
                    raise ValueError('"n" and "status" must be integers')
                self.fail_next_puts(n, status)
            except ValueError as exc:
                return 400, {"error": "bad_request", "detail": str(exc)}
        elif path == "/stop-listening":
            await self.stop_listening()
        else:
            try:
                await self.start_listening()
            except EmulatorError as exc:
                return 500, {"error": "listen_failed", "detail": str(exc)}
        return 200, self._admin_state()
