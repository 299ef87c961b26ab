"""HTTP to a local control socket: ``unix:/path`` or loopback TCP.

Both the NGINX Unit connector and the agent API client talk through :class:`Endpoint`, so the
address syntax, the timeouts and the translation of lower-layer errors (``requests``, urllib3,
``OSError``) into one "unreachable" error live here once. What an answer *means* (Unit's error
bodies, the agent's) is the caller's business.

:meth:`Endpoint.request` goes through ``requests`` (the agent API client). Unit is spoken to with
:meth:`Endpoint.exchange`, one plain HTTP/1.1 request per connection on a bare socket: Unit
closes every connection after one answer anyway, its answers always carry ``Content-Length``,
and an answer Unit cut short must be seen as exactly that (the bytes that arrived, and how many
were announced), where ``requests`` would only raise. It also costs a fraction of a ``requests``
call, which matters when a big value has to be read in thousands of small pieces.

Addresses: ``unix:/run/x.sock`` (also ``unix:///run/x.sock`` or a bare absolute path),
``http://127.0.0.1:8080`` or ``127.0.0.1:8080`` (``[::1]:8080`` for IPv6).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
import urllib3.connection
import urllib3.connectionpool
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError

__all__ = ["Address", "Answer", "Endpoint", "Unreachable", "make_session", "parse_address"]

#: ``unreachable(kind, message, path)`` builds the caller's own exception for a request to
#: ``path`` that got no answer. ``kind`` is one of "missing" (no socket file), "denied" (no
#: permission on it), "refused", "timeout", "closed" (connected, but the peer closed or reset
#: without a complete answer), "failed" (any other connect error).
Unreachable = Callable[[str, str, str], Exception]


@dataclass(frozen=True)
class Address:
    """A parsed control address. ``str()`` gives the canonical form used in messages."""

    socket_path: str | None = None
    host: str | None = None
    port: int | None = None

    @property
    def base_url(self) -> str:
        # Over a unix socket the host part only fills the Host header; nothing resolves it.
        if self.socket_path is not None:
            return "http://localhost"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __str__(self) -> str:
        return f"unix:{self.socket_path}" if self.socket_path is not None else self.base_url


def parse_address(address: str) -> Address:
    """Parse ``unix:/path``, ``http://HOST:PORT`` or ``HOST:PORT``; ``ValueError`` says why not."""
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"empty control address {address!r}")
    address = address.strip()
    if address.startswith("unix:") or address.startswith("/"):
        path = address.removeprefix("unix:")
        if path.startswith("//"):  # unix:///run/x.sock
            path = path[2:]
        if not path:
            raise ValueError(f"{address!r}: no socket path after 'unix:'")
        return Address(socket_path=path)
    url = address if "://" in address else f"http://{address}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"{address!r}: {e}") from None
    if parts.scheme != "http":
        raise ValueError(f"{address!r}: only unix:/path or http://HOST:PORT is supported")
    if not parts.hostname or port is None:
        raise ValueError(f"{address!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{address!r}: an address has no path, query or credentials")
    return Address(host=parts.hostname, port=port)


# As many connections as trio runs worker threads by default, so concurrent calls through
# AsyncUnitClient never make urllib3 discard connections (and warn about it).
_POOL_SIZE = 40


class _UnixConnection(urllib3.connection.HTTPConnection):
    def __init__(self, *args, socket_path: str, **kwargs):
        super().__init__(*args, **kwargs)
        self._socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        # urllib3 has already resolved the connect timeout into self.timeout.
        timeout = self.timeout if isinstance(self.timeout, int | float) else None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            _connect_unix(sock, self._socket_path, timeout)
        except TimeoutError as e:
            sock.close()
            raise ConnectTimeoutError(self, f"connect to {self._socket_path} timed out") from e
        except OSError as e:
            sock.close()
            # The same wrapping urllib3 does for TCP, so _translate sees one shape for both.
            raise NewConnectionError(self, f"cannot connect to {self._socket_path}: {e}") from e
        return sock


def _connect_unix(sock: socket.socket, path: str, timeout: float | None) -> None:
    # With a timeout the socket is non-blocking underneath, and Linux then fails an AF_UNIX
    # connect with EAGAIN while the listener's backlog is full instead of waiting for room
    # (seen with a burst of concurrent calls). Wait for room until the connect timeout.
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"the backlog of {path} stayed full") from None
            time.sleep(0.005)


class _UnixPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _UnixConnection


class _UnixAdapter(HTTPAdapter):
    """Sends every request of its session to one unix socket, whatever the URL's host."""

    def __init__(self, socket_path: str):
        super().__init__(max_retries=0)
        self._pool = _UnixPool("localhost", socket_path=socket_path, maxsize=_POOL_SIZE)

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        return self._pool

    def get_connection(self, url, proxies=None):  # requests < 2.32
        return self._pool

    def close(self):
        self._pool.close()
        super().close()


def make_session(address: str | Address) -> requests.Session:
    """A ``requests.Session`` that talks to ``address``; send requests to its ``base_url``."""
    addr = parse_address(address) if isinstance(address, str) else address
    session = requests.Session()
    # Never route loopback/control traffic through an HTTP(S)_PROXY from the environment,
    # and never pick up .netrc credentials.
    session.trust_env = False
    if addr.socket_path is not None:
        session.mount("http://", _UnixAdapter(addr.socket_path))
    else:
        # No retries: a PUT that reached Unit must not be sent twice behind the caller's back.
        session.mount("http://", HTTPAdapter(max_retries=0, pool_maxsize=_POOL_SIZE))
    return session


@dataclass(frozen=True)
class Answer:
    """One answer read by :meth:`Endpoint.exchange`."""

    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes
    #: the announced Content-Length (None: none announced, the body ran to EOF)
    expected: int | None
    #: bytes of the request line and headers that were sent
    request_head: int

    @property
    def complete(self) -> bool:
        return self.expected is None or len(self.body) >= self.expected


_HEAD_END = b"\r\n\r\n"
_FIRST_RECV = 1 << 16
_RECV_SIZE = 1 << 20


class Endpoint:
    """One control address, a session for it, a default timeout and one error translation."""

    def __init__(self, address: str, *, timeout: float, name: str, unreachable: Unreachable):
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, not {timeout!r}")
        self.address = parse_address(address)
        self.timeout = float(timeout)
        self.name = name
        self._unreachable = unreachable
        self._session = make_session(self.address)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> requests.Response:
        """Send one request; any status is returned, every failure to get one is translated."""
        t = self.timeout if timeout is None else timeout
        try:
            return self._session.request(
                method,
                self.address.base_url + path,
                data=body,
                headers=dict(headers or {}),
                timeout=(t, t),
                allow_redirects=False,
            )
        except _NO_ANSWER as e:
            kind, message = self._translate(e, method, path, t)
            raise self._unreachable(kind, message, path) from e
        except requests.RequestException:
            raise  # a bad request built by the caller (header, URL): a bug, not an outage
        except OSError as e:
            kind, message = self._translate(e, method, path, t)
            raise self._unreachable(kind, message, path) from e

    def exchange(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Answer:
        """One request on its own connection; the answer as it arrived, complete or not.

        Every failure to get a status line is translated like :meth:`request` does. An answer
        whose body stops short of its Content-Length is returned (``complete`` is False): what
        that means is the caller's decision.
        """
        t = self.timeout if timeout is None else timeout
        lines = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        where = f"{self.name} at {self.address}"
        try:
            sock = self._connect(t)
        except TimeoutError as e:
            raise self._unreachable(
                "timeout", f"{where} did not accept a connection within {t:g}s", path
            ) from e
        except OSError as e:
            kind, message = self._connect_failure(e)
            raise self._unreachable(kind, message, path) from e
        data = bytearray()
        try:
            with sock:
                sock.sendall(head + body if body else head)
                answer = _read_answer(sock, data, len(head))
        except TimeoutError as e:
            raise self._unreachable(
                "timeout", f"{where} did not answer {method} {path} within {t:g}s", path
            ) from e
        except OSError as e:
            answer = _parse_answer(data, len(head))
            if answer is None:
                raise self._unreachable(
                    "closed", f"{where} closed the connection without answering"
                    f" {method} {path} ({e})", path) from e
        if answer is None:
            raise self._unreachable(
                "closed", f"{where} closed the connection without answering {method} {path}",
                path)
        return answer

    def _connect(self, t: float) -> socket.socket:
        if self.address.socket_path is None:
            return socket.create_connection((self.address.host, self.address.port), timeout=t)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(t)
            _connect_unix(sock, self.address.socket_path, t)
        except BaseException:
            sock.close()
            raise
        return sock

    def _connect_failure(self, os_error: BaseException | None) -> tuple[str, str]:
        sock = self.address.socket_path
        if isinstance(os_error, FileNotFoundError):
            return "missing", f"{self.name}: socket {sock} does not exist"
        if isinstance(os_error, PermissionError):
            return "denied", f"{self.name}: permission denied on socket {sock}"
        if isinstance(os_error, ConnectionRefusedError):
            where = f"{self.name} at {self.address}"
            return "refused", f"{where} refused the connection (nothing listens there)"
        return "failed", f"{self.name} at {self.address}: cannot connect: {os_error}"

    def _translate(self, e: BaseException, method: str, path: str, t: float) -> tuple[str, str]:
        where = f"{self.name} at {self.address}"
        if isinstance(e, requests.ConnectTimeout):
            return "timeout", f"{where} did not accept a connection within {t:g}s"
        if isinstance(e, requests.Timeout):
            return "timeout", f"{where} did not answer {method} {path} within {t:g}s"
        chain = list(_causes(e))
        # requests' and urllib3's own errors are OSErrors too; we want the socket's.
        os_error = next(
            (c for c in chain if isinstance(c, OSError) and not isinstance(c, _WRAPPERS)), None
        )
        if any(isinstance(c, NewConnectionError) for c in chain):
            return self._connect_failure(os_error or e)
        return "closed", (
            f"{where} closed the connection without a complete answer to {method} {path}"
            f" ({os_error or e})"
        )

    def close(self) -> None:
        self._session.close()


def _read_answer(sock: socket.socket, data: bytearray, head_size: int) -> Answer | None:
    """Read until the announced body is complete or the peer closes (into ``data``, so a
    caller that catches an error still has what arrived)."""
    want: int | None = None
    size = _FIRST_RECV
    while True:
        # Small first (most answers are), then big reads to drain a big answer quickly.
        chunk = sock.recv(size)
        if not chunk:
            break
        data += chunk
        size = _RECV_SIZE
        if want is None and (end := data.find(_HEAD_END)) >= 0:
            answer = _parse_answer(data, head_size)
            if answer is None:
                return None
            want = end + 4 + answer.expected if answer.expected is not None else -1
        if want is not None and want >= 0 and len(data) >= want:
            break
    return _parse_answer(data, head_size)


def _parse_answer(data: bytearray, head_size: int) -> Answer | None:
    """The answer in ``data`` so far; None without a complete, well-formed status + headers."""
    end = data.find(_HEAD_END)
    if end < 0:
        return None
    lines = bytes(data[:end]).decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length", "")
    expected = int(length) if length.isdigit() else None
    body = bytes(data[end + 4 :])
    if expected is not None:
        body = body[:expected]
    return Answer(int(parts[1]), headers, body, expected, head_size)


_WRAPPERS = (requests.RequestException, HTTPError)
# What requests raises when no complete answer came back (ConnectTimeout is both).
_NO_ANSWER = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


def _causes(e: BaseException):
    """``e`` and everything it wraps: requests and urllib3 nest errors in ``args``/``reason``."""
    seen: set[int] = set()
    todo: list[object] = [e]
    while todo:
        cur = todo.pop(0)
        if not isinstance(cur, BaseException) or id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        todo.append(cur.__cause__)
        todo.append(cur.__context__)
        todo.append(getattr(cur, "reason", None))
        todo.extend(cur.args)
