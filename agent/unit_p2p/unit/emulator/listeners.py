"""Listener addresses: Unit's address syntax, and the listener sockets the emulator serves.

Real Unit binds a socket for every configured listener, and a configuration whose listener
cannot be bound (typically: the port is already in use) is refused with 500 "Failed to apply new
configuration." while the old configuration stays. The emulator does the same for the listeners
it binds: by default the loopback TCP listeners (``127.x.x.x:PORT``, ``[::1]:PORT``); with
``all_addresses`` (for containers) every TCP listener, wildcard ``*:PORT`` included. A listener
socket is bound at validation time and listens from the moment its configuration is applied, as
long as it stays configured, so a second emulator (or any other program) configured for the
same port fails exactly like a second Unit would. Connections accepted on it are handed to the
serving callback (see :mod:`.dataplane`); a listener whose configuration changes keeps its
socket, so a rotated certificate applies to the next connection and nothing is dropped.

Without ``all_addresses`` the wildcard and non-loopback listeners are accepted as if they had
been bound, so the emulator cannot grab a public port. A unix-socket listener is not bound
either (no file is created), but its directory must exist: Unit cannot create the socket
otherwise and answers 500.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

__all__ = ["ListenerAddress", "ListenerBindError", "ListenerSockets", "parse_listener"]

_UNIX_PATH_MAX = 107  # sizeof(sun_path) - 1 on Linux
#: Unit's default listen() backlog
_BACKLOG = 511

log = logging.getLogger("unit_p2p.unit.emulator")

#: ``await handler(listener_name, stream)`` serves one accepted connection
Handler = Callable[[str, trio.SocketStream], Awaitable[None]]


@dataclass(frozen=True)
class ListenerAddress:
    family: str  # "inet", "inet6" or "unix"
    host: str  # "" for the wildcard, or the unix path
    port: int  # 0 for unix

    @property
    def on_loopback(self) -> bool:
        if self.family == "unix" or not self.host:
            return False
        return ipaddress.ip_address(self.host).is_loopback


class ListenerBindError(OSError):
    """A listener address could not be bound (the reason is in ``args``)."""


def _inet4(text: str) -> str | None:
    # nxt_inet_addr: exactly four decimal octets, no empty parts, nothing else.
    parts = text.split(".")
    if len(parts) != 4 or any(not p.isdigit() or not p.isascii() or int(p) > 255 for p in parts):
        return None
    return ".".join(str(int(p)) for p in parts)


def _port(text: str | None) -> int | None:
    if text is None:
        return 80
    if not text.isdigit() or not text.isascii():
        return None
    port = int(text)
    return port if 1 <= port <= 65535 else None


def parse_listener(name: str) -> ListenerAddress | None:
    """Parse a listener name as Unit's ``nxt_sockaddr_parse`` does; None if it is invalid."""
    if name.startswith("unix:"):
        path = name[5:]
        if not path or len(path.encode("utf-8", "surrogateescape")) > _UNIX_PATH_MAX:
            return None
        return ListenerAddress("unix", path, 0)
    if name.startswith("["):
        close = name.find("]")
        if close < 0:
            return None
        try:
            host = str(ipaddress.IPv6Address(name[1:close]))
        except ValueError:
            return None
        rest = name[close + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port = _port(rest[1:] if rest else None)
        return ListenerAddress("inet6", host, port) if port else None
    host_text, sep, port_text = name.partition(":")
    port = _port(port_text if sep else None)
    if port is None:
        return None
    if host_text == "*":
        return ListenerAddress("inet", "", port)
    host = _inet4(host_text)
    if host is None:
        return None
    if host == "0.0.0.0":
        host = ""
    return ListenerAddress("inet", host, port)


def _check_unix_dir(path: str) -> None:
    if path.startswith("@"):  # Linux abstract namespace: no file, nothing to check
        return
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise ListenerBindError(
            2, f"cannot bind unix:{path}: directory {directory} does not exist"
        )


def _bind(addr: ListenerAddress) -> socket.socket:
    family = socket.AF_INET6 if addr.family == "inet6" else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Like Unit: SO_REUSEADDR, so connections of a removed listener in TIME_WAIT do not
        # block it from coming back, while a port that something listens on still fails.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr.host, addr.port))
    except OSError as exc:
        sock.close()
        raise ListenerBindError(
            exc.errno, f"cannot bind {addr.host}:{addr.port}: {exc.strerror}"
        ) from exc
    return sock


@dataclass
class _Held:
    sock: socket.socket
    listening: bool = False
    #: the accept loop's scope, once it runs
    scope: trio.CancelScope | None = field(default=None)


class ListenerSockets:
    """The bound sockets of the currently configured listeners.

    :meth:`prepare` binds what a new configuration adds and fails without side effects;
    :meth:`commit` then makes them listen and releases what the configuration removed (both
    quick, non-blocking syscalls). :meth:`serve` accepts connections on every held socket,
    present and future, until it is cancelled.
    """

    def __init__(self, *, enabled: bool = True, all_addresses: bool = False):
        self.enabled = enabled
        self.all_addresses = all_addresses
        self._held: dict[ListenerAddress, _Held] = {}
        #: the configured name of each held address ("127.0.0.1:8443"), for the handler
        self._names: dict[ListenerAddress, str] = {}
        self._nursery: trio.Nursery | None = None
        self._handler: Handler | None = None

    def addresses(self) -> list[ListenerAddress]:
        return list(self._held)

    def binds(self, addr: ListenerAddress | None) -> bool:
        """Whether a listener at ``addr`` gets a real socket."""
        if not self.enabled or addr is None or addr.family == "unix":
            return False
        return self.all_addresses or addr.on_loopback

    def prepare(self, listener_names: list[str]) -> dict[ListenerAddress, socket.socket]:
        """Bind every listener of ``listener_names`` that gets a socket and is not held yet.

        Returns the newly bound sockets (to pass to :meth:`commit`); raises
        :class:`ListenerBindError` after closing whatever it bound on the way. A unix listener
        whose directory does not exist fails whether or not binding is enabled: it would fail
        on every Unit, so it is not a conflict between emulators sharing a configuration.
        """
        for name in listener_names:
            addr = parse_listener(name)
            if addr is not None and addr.family == "unix":
                _check_unix_dir(addr.host)
        fresh: dict[ListenerAddress, socket.socket] = {}
        try:
            for name in listener_names:
                addr = parse_listener(name)
                if not self.binds(addr) or addr in self._held or addr in fresh:
                    continue
                fresh[addr] = _bind(addr)  # type: ignore[index]
        except ListenerBindError:
            for sock in fresh.values():
                sock.close()
            raise
        return fresh

    def commit(self, listener_names: list[str], fresh: dict[ListenerAddress, socket.socket]):
        wanted = {parse_listener(n): n for n in listener_names}
        self._names = {a: n for a, n in wanted.items() if a is not None}
        for addr in list(self._held):
            if addr not in wanted:
                self._release(self._held.pop(addr))
        for addr, sock in fresh.items():
            held = self._held[addr] = _Held(sock)
            try:
                sock.listen(_BACKLOG)
                held.listening = True
            except OSError as exc:  # bound but not served: Unit would have failed the bind
                log.warning("listener %s:%s cannot listen: %s", addr.host, addr.port, exc)
            self._start(addr, held)

    def abort(self, fresh: dict[ListenerAddress, socket.socket]) -> None:
        for sock in fresh.values():
            sock.close()

    def close(self) -> None:
        for held in self._held.values():
            self._release(held)
        self._held.clear()

    async def serve(self, handler: Handler, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Accept on the held sockets (and those committed later) until cancelled; each
        connection is served by ``handler`` in its own task."""
        async with trio.open_nursery() as nursery:
            self._nursery, self._handler = nursery, handler
            try:
                for addr, held in self._held.items():
                    self._start(addr, held)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = self._handler = None

    def _start(self, addr: ListenerAddress, held: _Held) -> None:
        if self._nursery is None or not held.listening or held.scope is not None:
            return
        held.scope = trio.CancelScope()
        self._nursery.start_soon(self._accept_loop, addr, held)

    async def _accept_loop(self, addr: ListenerAddress, held: _Held) -> None:
        assert held.scope is not None and self._nursery is not None
        with held.scope:
            if held.scope.cancel_called:  # released before this task ran: the socket is closed
                return
            listener = trio.socket.from_stdlib_socket(held.sock)
            while True:
                try:
                    conn, _ = await listener.accept()
                except trio.ClosedResourceError:
                    return
                except OSError as exc:  # out of descriptors and the like: keep the listener
                    log.warning("listener %s:%s: accept failed: %s", addr.host, addr.port, exc)
                    await trio.sleep(0.1)
                    continue
                name = self._names.get(addr, f"{addr.host}:{addr.port}")
                self._nursery.start_soon(self._handler, name, trio.SocketStream(conn))

    def _release(self, held: _Held) -> None:
        # Closed here and now, not when the accept loop next runs, so that the port is free
        # as soon as the reconfiguration that removed it is answered.
        if held.scope is not None:
            held.scope.cancel()
            trio.lowlevel.notify_closing(held.sock)
        held.sock.close()
