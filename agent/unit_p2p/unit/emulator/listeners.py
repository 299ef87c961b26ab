"""Listener addresses: Unit's address syntax, and holding loopback listener sockets.

Real Unit binds a socket for every configured listener, and a configuration whose listener
cannot be bound (typically: the port is already in use) is refused with 500 "Failed to apply new
configuration." while the old configuration stays. The emulator reproduces that by *holding*
the listener sockets of the current configuration: each loopback TCP listener
(``127.x.x.x:PORT``, ``[::1]:PORT``) is bound, without ``SO_REUSEADDR`` and without ``listen()``,
for as long as it is configured. So a second emulator (or any other program) configured for the
same port fails exactly like a second Unit would, and nothing is ever served: a client connecting
to such a port gets "connection refused".

For safety the emulator binds nothing else: wildcard (``*:PORT``) and non-loopback listeners are
accepted as if they had been bound. A unix-socket listener is not bound either (no file is
created), but its directory must exist: Unit cannot create the socket otherwise and answers 500.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass

__all__ = ["ListenerAddress", "ListenerBindError", "ListenerSockets", "parse_listener"]

_UNIX_PATH_MAX = 107  # sizeof(sun_path) - 1 on Linux


@dataclass(frozen=True)
class ListenerAddress:
    family: str  # "inet", "inet6" or "unix"
    host: str  # "" for the wildcard, or the unix path
    port: int  # 0 for unix

    @property
    def bindable_on_loopback(self) -> bool:
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
        # No SO_REUSEADDR: a port that anything else has bound must fail here.
        sock.bind((addr.host, addr.port))
    except OSError as exc:
        sock.close()
        raise ListenerBindError(
            exc.errno, f"cannot bind {addr.host}:{addr.port}: {exc.strerror}"
        ) from exc
    return sock


class ListenerSockets:
    """The bound sockets of the currently configured listeners.

    :meth:`prepare` binds what a new configuration adds and fails without side effects;
    :meth:`commit` then releases what it removed. Both are quick, non-blocking syscalls.
    """

    def __init__(self, *, enabled: bool = True):
        self.enabled = enabled
        self._held: dict[ListenerAddress, socket.socket] = {}

    def addresses(self) -> list[ListenerAddress]:
        return list(self._held)

    def prepare(self, listener_names: list[str]) -> dict[ListenerAddress, socket.socket]:
        """Bind every loopback listener of ``listener_names`` not held yet.

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
        if not self.enabled:
            return fresh
        try:
            for name in listener_names:
                addr = parse_listener(name)
                if addr is None or not addr.bindable_on_loopback:
                    continue
                if addr in self._held or addr in fresh:
                    continue
                fresh[addr] = _bind(addr)
        except ListenerBindError:
            for sock in fresh.values():
                sock.close()
            raise
        return fresh

    def commit(self, listener_names: list[str], fresh: dict[ListenerAddress, socket.socket]):
        wanted = {parse_listener(n) for n in listener_names}
        for addr in list(self._held):
            if addr not in wanted:
                self._held.pop(addr).close()
        self._held.update(fresh)

    def abort(self, fresh: dict[ListenerAddress, socket.socket]) -> None:
        for sock in fresh.values():
            sock.close()

    def close(self) -> None:
        for sock in self._held.values():
            sock.close()
        self._held.clear()
