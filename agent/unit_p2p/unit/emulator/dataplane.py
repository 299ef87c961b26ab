"""What a configured listener serves: TLS with Unit's certificate choice, and a thin router.

The emulator serves its bound listeners (see :mod:`.listeners`) so that clients can check what
Unit would present on them, above all a TLS listener's certificate: a listener with
``tls.certificate`` does the TLS handshake with that bundle, or with several bundles picks one by
the client's server name (SNI) the way ``nxt_openssl_servername`` does. It then answers one
HTTP request and closes the connection.

The HTTP answer comes from the smallest part of Unit's router that tests need: ``pass`` to
``routes`` or ``routes/<name>`` (and on through ``pass`` actions), route steps matched on
``uri``, ``method``, ``host`` and ``scheme`` (exact strings and ``*`` wildcards, ``!``
negations, arrays), and ``return`` actions, answered like Unit (an error page for 400-599, an
empty body otherwise, ``Location`` if set; no step matches: 404). Everything the emulator does
not run -- applications, shares, proxies, upstreams, other match conditions, regular expressions,
variables -- is answered 503 with Unit's error page, so it can never pass for a real answer.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import unquote

import trio

from unit_p2p.unit.emulator.certs import Bundle

__all__ = ["TLSSetupError", "build_tls_context", "serve_listener_connection"]

log = logging.getLogger("unit_p2p.unit.emulator")

SERVER_HEADER = "Unit/1.35.0"
#: Unit's large_header_buffer_size default: a longer request head is not served.
HEAD_LIMIT = 8192
_MAX_PASSES = 16
_ERROR_PAGE = "<!DOCTYPE html><title>Error {0:03d}</title><p>Error {0:03d}.\r\n"


class TLSSetupError(ValueError):
    """OpenSSL refused a bundle when setting up a listener (Unit: the reconfiguration fails)."""


class _Unmodelled(Exception):
    """The request would reach something the emulator does not run."""


# ---------------------------------------------------------------------------- TLS


def _context_for(bundle: Bundle) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # OpenSSL loads a chain and key only from a file; the file lives in a private directory
    # for the duration of the call.
    with tempfile.TemporaryDirectory(prefix="unit-emulator-tls-") as tmp:
        path = os.path.join(tmp, "bundle.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(bundle.pem)
        try:
            ctx.load_cert_chain(path)
        except ssl.SSLError as exc:
            raise TLSSetupError(str(exc)) from exc
    return ctx


def build_tls_context(bundles: list[Bundle]) -> ssl.SSLContext:
    """The context a listener with ``tls.certificate`` = these bundles serves with.

    The first bundle is the default. With several, the client's server name picks one:
    lower-cased, an exact name first, then the name with its first label cut off (which
    matches a ``*.example.com`` certificate); names come from each bundle's first certificate
    (DNS alt names, else the common name), and a name in two bundles belongs to the one listed
    first. No server name, an empty one or one with a leading dot: the default.
    """
    contexts = [_context_for(b) for b in bundles]
    default = contexts[0]
    if len(bundles) == 1:
        return default
    by_name: dict[str, ssl.SSLContext] = {}
    # Unit inserts the names from the last bundle to the first; a repeated name is taken over.
    for bundle, ctx in reversed(list(zip(bundles, contexts, strict=True))):
        for name in bundle.server_names:
            if name.startswith("*"):
                name = name[1:]
                if not name.startswith("."):
                    continue  # Unit ignores "*" not followed by "."
            by_name[name] = ctx

    def pick(sslobj, server_name: str | None, _ctx) -> None:
        if not server_name or server_name.startswith("."):
            return
        name = server_name.lower()
        chosen = by_name.get(name)
        if chosen is None:
            dot = name.find(".", 1)
            if dot > 0:
                chosen = by_name.get(name[dot:])
        if chosen is not None and chosen is not default:
            sslobj.context = chosen

    default.sni_callback = pick
    return default


# ------------------------------------------------------------------------ routing


def _pattern_match(pattern: str, value: str) -> bool:
    """A Unit pattern without its "!": exact, or with "*" standing for any run of characters."""
    if pattern.startswith("~"):
        raise _Unmodelled("regular expression pattern")
    parts = pattern.split("*")
    if len(parts) == 1:
        return value == pattern
    head, tail = parts[0], parts[-1]
    if len(value) < len(head) + len(tail) or not value.startswith(head) or not value.endswith(tail):
        return False
    pos, end = len(head), len(value) - len(tail)
    for middle in parts[1:-1]:
        found = value.find(middle, pos, end)
        if found < 0:
            return False
        pos = found + len(middle)
    return True


def _condition(patterns: object, value: str, fold) -> bool:
    """A match condition: one pattern or an array; negated ("!") patterns must all fail and,
    if there are positive ones, one of them must match."""
    items = patterns if isinstance(patterns, list) else [patterns]
    positive = False
    matched = False
    for item in items:
        if not isinstance(item, str):
            raise _Unmodelled("non-string pattern")
        negated = item.startswith("!")
        text = fold(item[1:] if negated else item)
        if negated:
            if _pattern_match(text, value):
                return False
        else:
            positive = True
            matched = matched or _pattern_match(text, value)
    return matched or not positive


#: the match conditions the emulator evaluates, with how a pattern is folded before comparing
#: (Unit compares hosts and schemes lower-cased, methods upper-cased, URIs as they are)
_CONDITIONS = {"uri": str, "method": str.upper, "host": str.lower, "scheme": str.lower}


def _matches(match: dict, request: dict) -> bool:
    for key, patterns in match.items():
        fold = _CONDITIONS.get(key)
        if fold is None:
            raise _Unmodelled(f"match on {key!r}")
        if not _condition(patterns, request[key], fold):
            return False
    return True


def _route(conf: dict, listener: dict, request: dict) -> tuple[int, str | None]:
    """The status (and Location) Unit's router would answer with."""
    target = listener.get("pass")
    if target is None and "application" in listener:
        raise _Unmodelled("application")
    for _ in range(_MAX_PASSES):
        if not isinstance(target, str) or "$" in target:
            raise _Unmodelled("variable pass")
        kind, _, name = target.partition("/")
        if kind != "routes":
            raise _Unmodelled(kind)
        routes = conf.get("routes")
        steps = routes.get(name) if name and isinstance(routes, dict) else routes
        step = next(
            (
                s
                for s in (steps if isinstance(steps, list) else [])
                if isinstance(s, dict) and _matches(s.get("match") or {}, request)
            ),
            None,
        )
        if step is None:
            return 404, None
        action = step.get("action")
        if not isinstance(action, dict):
            raise _Unmodelled("action")
        if "pass" in action:
            target = action["pass"]
            continue
        if "return" in action:
            return action["return"], action.get("location")
        raise _Unmodelled("share or proxy action")
    raise _Unmodelled("pass loop")


def _response(status: int, location: str | None) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    head = [f"HTTP/1.1 {status} {phrase}"]
    body = b""
    if 400 <= status <= 599:
        body = _ERROR_PAGE.format(status).encode("ascii")
        head.append("Content-Type: text/html")
    elif location is not None:
        head.append(f"Location: {location}")
    head += [
        f"Server: {SERVER_HEADER}",
        f"Date: {formatdate(usegmt=True)}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def answer(conf: object, listener_name: str, head: bytes, scheme: str) -> bytes | None:
    """The whole response to a request head (without the blank line); None: close silently."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    method, target, _ = parts
    host = ""
    for line in lines[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == "host":
            host = value.strip().lower()
    # Matched without the port, as Unit does.
    host = host[: host.find("]") + 1] if host.startswith("[") else host.partition(":")[0]
    request = {
        "method": method,
        "uri": unquote(target.split("?", 1)[0]),
        "host": host.rstrip("."),
        "scheme": scheme,
    }
    listeners = conf.get("listeners") if isinstance(conf, dict) else None
    listener = listeners.get(listener_name) if isinstance(listeners, dict) else None
    if not isinstance(listener, dict):
        return None
    try:
        status, location = _route(conf, listener, request)  # type: ignore[arg-type]
    except _Unmodelled as exc:
        log.debug("listener %s: %s is not modelled, answering 503", listener_name, exc)
        status, location = 503, None
    return _response(status, location)


# ------------------------------------------------------------------- connections


async def _read_head(stream: trio.abc.ReceiveStream) -> bytes | None:
    buf = bytearray()
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            return bytes(buf[:end])
        if len(buf) >= HEAD_LIMIT:
            return None
        chunk = await stream.receive_some(HEAD_LIMIT)
        if not chunk:
            return None
        buf += chunk


async def serve_listener_connection(
    stream: trio.SocketStream,
    listener_name: str,
    conf: object,
    tls: ssl.SSLContext | None,
    *,
    timeout: float,
) -> None:
    """Serve one connection accepted on a listener: TLS handshake if the listener has TLS, one
    request, one answer, close. ``conf`` and ``tls`` are the configuration and the listener's
    TLS context current when the connection was accepted."""
    out: trio.abc.Stream = stream
    try:
        with trio.move_on_after(timeout):
            if tls is not None:
                out = trio.SSLStream(stream, tls, server_side=True, https_compatible=True)
                await out.do_handshake()
            head = await _read_head(out)
            if head is not None:
                response = answer(conf, listener_name, head, "https" if tls else "http")
                if response is not None:
                    await out.send_all(response)
            with trio.move_on_after(1):
                await out.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.debug("listener %s: connection ended: %s", listener_name, exc)
    finally:
        await trio.aclose_forcefully(out)
