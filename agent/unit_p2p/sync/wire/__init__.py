"""The wire messages of unit-p2p, encoded as small versioned JSON objects and decoded strictly.

Everything that arrives from a peer passes through :func:`decode` (or :func:`decode_served`),
which either returns a typed message or raises :class:`~unit_p2p.errors.WireError` with a short
reason used as a metrics label. Nothing from the wire reaches the reconciler unvalidated.

Messages (``v`` is the wire version, 1):

- ``announce``: a signed head, the sender's own — gossip, direct pushes and the heads exchange.
- ``broadcast``: a signed head with its document: the header line, a newline, then exactly
  ``size`` bytes of the document (as a pull answer carries it). Only for documents of at most
  ``MAX_INLINE_BYTES``: the publisher's gossip flood carries the document itself, so a host
  needs no pull.
- ``have``: a signed head whose document the sender holds, fetched and verified but not yet
  applied: "pull it from me". It says nothing about the sender's own head.
- ``nohead``: the heads exchange of an agent that has no revision yet.
- ``report``: "agent P applied / failed to apply revision R".
- ``reports``: many reports about one revision (a subtree's, forwarded towards the origin as
  one message); each entry is a ``report`` without the fields they share. Its own size bound,
  ``MAX_REPORTS_BYTES``.
- ``pull``: "send me the document with this digest".
- ``served`` / ``error``: the answer to a pull; ``served`` is followed by the document bytes.
- ``wave``: where a staged rollout stands ("wave k of R open", "halted", "aborted",
  "complete"), signed by the trusted peer that moved it (sync/rollout.py).
- ``query``: a rollout driver asks a host for its own report on a revision (answered with a
  ``report``, or ``error`` ``pending``).

The package's modules: ``fields`` (the message base and the strict field decoders), ``heads``,
``reports``, ``pull`` and ``rollout`` (the message classes, each with its codec); this module is
the entry: the type registry, ``encode`` / ``decode`` and the pull answer's framing. Callers
import this module only (``from unit_p2p.sync import wire``) and use the names it exports.
"""

from __future__ import annotations

import json
from typing import Any

from unit_p2p.errors import WireError
from unit_p2p.jsonstrict import unique_keys
from unit_p2p.sync.wire.fields import (
    MAX_MESSAGE_BYTES,
    VERSION,
    BaseMessage,
    valid_mesh_name,
)
from unit_p2p.sync.wire.heads import MAX_INLINE_BYTES, Announce, Broadcast, Have, NoHead
from unit_p2p.sync.wire.pull import Pull, Served, ServeError
from unit_p2p.sync.wire.reports import (
    MAX_REPORTS_BYTES,
    MAX_REPORTS_ENTRIES,
    Report,
    Reports,
    pack_reports,
)
from unit_p2p.sync.wire.rollout import WAVE_STATES, Query, Wave

__all__ = [
    "MAX_ANY_BYTES", "MAX_INLINE_BYTES", "MAX_MESSAGE_BYTES", "MAX_REPORTS_BYTES",
    "MAX_REPORTS_ENTRIES", "PROTO_HEADS", "PROTO_NOTIFY",
    "PROTO_NOTIFY_ONE_SHOT", "PROTO_PULL", "PROTO_ROLLOUT",
    "STREAM_TIMEOUT", "VERSION", "WAVE_STATES", "Announce", "Broadcast", "Have", "Message",
    "NoHead", "Pull", "Query", "Report", "Reports", "ServeError", "Served", "Wave", "decode",
    "decode_served", "encode", "encode_served", "pack_reports", "served_kind", "valid_mesh_name",
]

#: bound on one request/answer exchange over a stream (pulls have their own, larger bound)
STREAM_TIMEOUT = 10.0

# protocol ids of the stream protocols
PROTO_PULL = "/unit-p2p/config/1.0.0"
PROTO_HEADS = "/unit-p2p/heads/1.0.0"
#: one-way messages, many per stream (one long-lived stream per peer: mesh/notify.py)
PROTO_NOTIFY = "/unit-p2p/notify/2.0.0"
#: its predecessor, one message per stream: still served, and sent to agents that speak only it
PROTO_NOTIFY_ONE_SHOT = "/unit-p2p/notify/1.0.0"
PROTO_ROLLOUT = "/unit-p2p/rollout/1.0.0"

Message = (Announce | Broadcast | Have | NoHead | Report | Reports | Pull | Served | ServeError
           | Wave | Query)
_TYPES: dict[str, type[BaseMessage]] = {cls.TYPE: cls for cls in Message.__args__}
#: the largest message of any type: what a stream that may carry any of them reads at most
MAX_ANY_BYTES = max(cls.MAX_BYTES for cls in _TYPES.values())
_ENVELOPE = frozenset({"v", "type"})


# --- encoding ---------------------------------------------------------------------------------


def encode(msg: Message) -> bytes:
    if not isinstance(msg, BaseMessage) or _TYPES.get(msg.TYPE) is not type(msg):
        raise TypeError(f"not a wire message: {msg!r}")
    return msg.encoded()


def encode_served(digest: str, document: bytes) -> bytes:
    """A pull answer: one header line, then exactly the document's bytes."""
    return encode(Served(digest, len(document))) + b"\n" + document


# --- strict decoding --------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise WireError("malformed", f"non-standard JSON constant {name}")


def decode(data: bytes) -> Message:
    """Decode one message, or raise WireError. Never raises anything else."""
    if not isinstance(data, bytes | bytearray):
        raise WireError("malformed", "not bytes")
    if len(data) > MAX_ANY_BYTES:
        raise WireError("too_large", f"{len(data)} bytes > {MAX_ANY_BYTES}")
    # Our JSON never holds a raw newline, so the first one ends the header of a message with a
    # body (a trailing newline alone is whitespace, as JSON has it).
    header, _, body = bytes(data).partition(b"\n")
    try:
        obj = json.loads(header.decode("utf-8"), object_pairs_hook=unique_keys,
                         parse_constant=_reject_constant)
    except WireError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise WireError("malformed", f"not JSON: {str(exc)[:80]}") from None
    if not isinstance(obj, dict):
        raise WireError("malformed", "not a JSON object")
    version = obj.get("v")
    if type(version) is not int:
        raise WireError("schema", "missing wire version")
    if version != VERSION:
        raise WireError("unsupported_version",
                        f"wire version {version}, this agent speaks {VERSION}")
    kind = obj.get("type")
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError("schema", f"unknown message type {str(kind)[:32]!r}")
    if len(data) > cls.MAX_BYTES:
        raise WireError("too_large", f"{kind}: {len(data)} bytes > {cls.MAX_BYTES}")
    fields = cls.FIELDS | _ENVELOPE
    if set(obj) != fields:
        extra, missing = sorted(set(obj) - fields), sorted(fields - set(obj))
        raise WireError("schema", f"{kind}: unexpected {extra} missing {missing}")
    if cls.HAS_BODY:
        return cls.from_parts(obj, body)
    if body.strip():
        raise WireError("malformed", f"{kind}: bytes after the message")
    return cls.from_obj(obj)


def served_kind(data: bytes) -> str:
    """The kind of a pull answer for counting (``served``, ``error`` or ``invalid``), without
    validating it."""
    header = bytes(data[:MAX_MESSAGE_BYTES]).partition(b"\n")[0]
    for cls in (Served, ServeError):
        if b'"type":"%s"' % cls.TYPE.encode() in header:
            return cls.TYPE
    return "invalid"


def decode_served(data: bytes, expected_digest: str, max_bytes: int) -> bytes:
    """Split a pull answer into header and document; checks the header, not the digest
    (the caller verifies the digest against the document, see revision.Document)."""
    header, sep, document = bytes(data).partition(b"\n")
    if not sep:
        raise WireError("malformed", "pull answer without a header line")
    msg = decode(header)
    if isinstance(msg, ServeError):
        raise WireError("not_served", f"peer answered {msg.reason}")
    if not isinstance(msg, Served):
        raise WireError("schema", "pull answer header is not 'served'")
    if msg.digest != expected_digest:
        raise WireError("digest_mismatch", "peer served another digest than asked for")
    if msg.size > max_bytes:
        raise WireError("too_large", f"document of {msg.size} bytes > cap {max_bytes}")
    if len(document) != msg.size:
        raise WireError("truncated", f"got {len(document)} of {msg.size} document bytes")
    return document
