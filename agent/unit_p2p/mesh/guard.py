"""Nothing a peer sends may end the process.

In py-libp2p 0.8.1 an exception escaping any stream handler propagates through the swarm's
nursery and ends the whole process; a 66-byte malformed gossip RPC (a varint length, then 0xff
bytes on ``/meshsub/1.2.0``) killed a stock node 3/3 because the pubsub reader catches libp2p's
ParseError but not protobuf's DecodeError (docs/libp2p.md). Three layers of defence:

1. ``guard_swarm_handler``: the swarm's one inbound entry point (multistream negotiation plus the
   chosen handler) runs inside a catch-all, so even a handler we never saw is covered.
2. ``install_handler_guards``: every protocol handler, those registered before (identify, ping)
   and after (pubsub, DHT, ours) this call, is wrapped per protocol: untrusted peers are reset
   before the handler runs, exceptions are logged with the protocol name, counted, and the
   stream is reset.
3. ``guard_pubsub``: pubsub runs ``push_msg`` as a separate task of its own service; a message
   with an undecodable public key makes ``signature_validator`` raise there, which would stop
   the pubsub service. That method is wrapped too.

Call ``install_handler_guards`` before creating Pubsub/DHT so their handlers are wrapped as they
register.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.abc import INetStream

from .trust import TrustPolicy

log = logging.getLogger(__name__)

RawHandler = Callable[[INetStream], Awaitable[None]]


def remote_peer(stream: INetStream) -> str:
    try:
        return stream.muxed_conn.peer_id.to_base58()
    except Exception:  # a half-built stream; treat as anonymous (never trusted)
        return ""


async def reset_quietly(stream: Any) -> None:
    """Reset a stream that may already be dead, without letting that failure escape."""
    try:
        with trio.move_on_after(2):
            await stream.reset()
    except Exception:
        log.debug("stream reset failed", exc_info=True)


def _guarded(
    handler: RawHandler,
    *,
    label: str,
    trust: TrustPolicy,
    stats: collections.Counter[str],
) -> RawHandler:
    async def guarded(stream: INetStream) -> None:
        peer = remote_peer(stream)
        if not trust.is_trusted(peer):
            trust.reject("untrusted_stream", peer, label)
            await reset_quietly(stream)
            return
        try:
            await handler(stream)
        except Exception as exc:  # the point of this module: log, count, reset, survive
            stats["handler_error"] += 1
            log.warning("stream handler %s failed for peer %s: %s: %s",
                        label, peer, type(exc).__name__, exc)
            log.debug("handler traceback", exc_info=True)
            await reset_quietly(stream)

    guarded.__wrapped__ = handler  # type: ignore[attr-defined]
    return guarded


def guard_swarm_handler(host: Any, trust: TrustPolicy, stats: collections.Counter[str]) -> None:
    """Wrap the host's swarm-level stream handler (negotiation + dispatch)."""
    inner = host._swarm_stream_handler
    host.get_network().set_stream_handler(
        _guarded(inner, label="<negotiation>", trust=trust, stats=stats)
    )


def install_handler_guards(host: Any, trust: TrustPolicy, stats: collections.Counter[str]) -> None:
    """Wrap every protocol handler on ``host``, now and for later registrations."""
    for protocol, handler in list(host.multiselect.handlers.items()):
        if handler is not None and not hasattr(handler, "__wrapped__"):
            host.multiselect.handlers[protocol] = _guarded(
                handler, label=str(protocol), trust=trust, stats=stats
            )
    original = host.set_stream_handler

    def set_stream_handler(protocol_id: Any, stream_handler: RawHandler) -> None:
        original(protocol_id, _guarded(stream_handler, label=str(protocol_id),
                                       trust=trust, stats=stats))

    host.set_stream_handler = set_stream_handler


def guard_pubsub(pubsub: Any, stats: collections.Counter[str]) -> None:
    """Keep a malformed gossip message from stopping the pubsub service."""
    push_msg = pubsub.push_msg

    async def guarded_push_msg(msg_forwarder: Any, msg: Any) -> None:
        try:
            await push_msg(msg_forwarder, msg)
        except Exception as exc:
            if msg_forwarder == pubsub.my_id:
                raise  # our own publish: the caller must see it fail
            stats["gossip_malformed"] += 1
            log.warning("dropped a malformed gossip message from %s: %s: %s",
                        msg_forwarder, type(exc).__name__, exc)

    pubsub.push_msg = guarded_push_msg
