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
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from unit_p2p.errors import WireError
from unit_p2p.jsonstrict import unique_keys
from unit_p2p.settings import MESH_NAME_RE
from unit_p2p.sync.revision import DIGEST_RE, Head, Revision

#: 2: a report names the agent it is about (``peer``), so it can be forwarded towards the origin
VERSION = 2
#: announcements, reports, heads and pull requests are tiny; anything larger is hostile
MAX_MESSAGE_BYTES = 4096
#: the largest document a ``broadcast`` carries (a bigger one is announced and pulled): a few
#: times a typical Unit config, small enough that gossip's duplicate copies cost little
MAX_INLINE_BYTES = 16 * 1024
#: a ``reports`` batch: about 340 "applied" entries (a failed one carries its reason, up to 512)
MAX_REPORTS_BYTES = 32 * 1024
MAX_REPORTS_ENTRIES = 512
_MAX_REASON = 512
_PEER_RE = re.compile(r"[1-9A-HJ-NP-Za-km-z]{16,128}")
_MAX_SIZE = 1 << 40

#: bound on one request/answer exchange over a stream (pulls have their own, larger bound)
STREAM_TIMEOUT = 10.0

# protocol ids of the stream protocols
PROTO_PULL = "/unit-p2p/config/1.0.0"
PROTO_HEADS = "/unit-p2p/heads/1.0.0"
PROTO_NOTIFY = "/unit-p2p/notify/1.0.0"
PROTO_ROLLOUT = "/unit-p2p/rollout/1.0.0"


def valid_mesh_name(name: str) -> bool:
    return MESH_NAME_RE.fullmatch(name) is not None


class _Message:
    """One wire message: its ``TYPE`` tag, its fields and both directions of its codec live
    here together, so a new message type is one class (and one entry in ``Message``)."""

    TYPE: ClassVar[str] = ""
    FIELDS: ClassVar[frozenset[str]] = frozenset()
    #: the largest encoding of this message accepted
    MAX_BYTES: ClassVar[int] = MAX_MESSAGE_BYTES
    #: a message with a body: the JSON header line, ``\n``, then the body's bytes as they are
    HAS_BODY: ClassVar[bool] = False

    def to_obj(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_obj(cls, obj: dict) -> _Message:
        raise NotImplementedError

    def body(self) -> bytes:
        return b""

    @classmethod
    def from_parts(cls, obj: dict, body: bytes) -> _Message:
        """The message of a header and its body (``HAS_BODY`` types)."""
        raise NotImplementedError


class _SignedHead(_Message):
    """The codec of the messages that carry an origin-signed head."""

    mesh: str
    head: Head

    FIELDS = frozenset({"mesh", "revision", "digest", "size", "signature"})

    def to_obj(self) -> dict:
        h = self.head
        return {"mesh": self.mesh, "revision": str(h.revision), "digest": h.digest,
                "size": h.size, "signature": base64.b64encode(h.signature).decode()}

    @classmethod
    def from_obj(cls, obj: dict):
        return cls(*_SignedHead.signed_head(obj))

    @staticmethod
    def signed_head(obj: dict) -> tuple[str, Head]:
        return _mesh(obj), Head(_revision(obj), _digest(obj), _int(obj, "size", 0, _MAX_SIZE),
                                _signature(obj))


@dataclass(frozen=True)
class Announce(_SignedHead):
    """The sender's own head."""

    mesh: str
    head: Head

    TYPE = "announce"


@dataclass(frozen=True)
class Broadcast(_SignedHead):
    """The origin's signed head with its document (at most MAX_INLINE_BYTES): what a publisher
    gossips and pushes when the document is small. The digest is checked against the document
    by whoever decodes it into a ``Document``, before anything relays or applies it."""

    mesh: str
    head: Head
    document: bytes

    TYPE = "broadcast"
    MAX_BYTES = MAX_MESSAGE_BYTES + MAX_INLINE_BYTES
    HAS_BODY = True

    def body(self) -> bytes:
        return self.document

    @classmethod
    def from_parts(cls, obj: dict, body: bytes) -> Broadcast:
        mesh, head = cls.signed_head(obj)
        if len(body) > MAX_INLINE_BYTES:
            raise WireError("too_large", f"broadcast: a document of {len(body)} bytes > "
                            f"{MAX_INLINE_BYTES}")
        if head.size != len(body):
            raise WireError("schema", f"broadcast: a body of {len(body)} bytes, the head says "
                            f"{head.size}")
        return cls(mesh, head, body)


@dataclass(frozen=True)
class Have(_SignedHead):
    """A revision whose document the sender holds (verified, maybe not applied yet)."""

    mesh: str
    head: Head

    TYPE = "have"


@dataclass(frozen=True)
class NoHead(_Message):
    mesh: str

    TYPE = "nohead"
    FIELDS = frozenset({"mesh"})

    def to_obj(self) -> dict:
        return {"mesh": self.mesh}

    @classmethod
    def from_obj(cls, obj: dict) -> NoHead:
        return cls(_mesh(obj))


@dataclass(frozen=True)
class Report(_Message):
    mesh: str
    revision: Revision
    digest: str
    status: str  # "applied" | "failed"
    reason: str | None
    peer: str  # the agent this report is about (the sender may be forwarding it)

    TYPE = "report"
    FIELDS = frozenset({"mesh", "revision", "digest", "status", "reason", "peer"})

    def to_obj(self) -> dict:
        return {"mesh": self.mesh, "revision": str(self.revision), "digest": self.digest,
                "status": self.status, "reason": self.reason, "peer": self.peer}

    @classmethod
    def from_obj(cls, obj: dict) -> Report:
        status = obj["status"]
        if status not in ("applied", "failed"):
            raise WireError("schema", "status must be applied or failed")
        reason = obj["reason"]
        if reason is not None:
            reason = _str(obj, "reason", _MAX_REASON)
        if (status == "failed") != (reason is not None):
            raise WireError("schema", "a failed report needs a reason, an applied one has none")
        return cls(_mesh(obj), _revision(obj), _digest(obj), status, reason,
                   _peer(obj, "peer"))


@dataclass(frozen=True)
class Reports(_Message):
    """Reports about one revision (and digest), from any agents: a batch a peer forwards towards
    the origin. Entries are ``Report``s, encoded by Report's own codec without the fields they
    share (``SHARED``), so a field added to Report travels in batches too."""

    mesh: str
    revision: Revision
    digest: str
    reports: tuple[Report, ...]

    TYPE = "reports"
    SHARED: ClassVar[frozenset[str]] = frozenset({"mesh", "revision", "digest"})
    FIELDS = SHARED | {"reports"}
    MAX_BYTES = MAX_REPORTS_BYTES

    def to_obj(self) -> dict:
        return {"mesh": self.mesh, "revision": str(self.revision), "digest": self.digest,
                "reports": [_entry(r) for r in self.reports]}

    @classmethod
    def from_obj(cls, obj: dict) -> Reports:
        mesh, revision, digest = _mesh(obj), _revision(obj), _digest(obj)
        entries = obj["reports"]
        if type(entries) is not list or not 1 <= len(entries) <= MAX_REPORTS_ENTRIES:
            raise WireError("schema", f"reports must be a list of 1 to {MAX_REPORTS_ENTRIES}")
        keys = Report.FIELDS - cls.SHARED
        reports, peers = [], set()
        for entry in entries:
            if type(entry) is not dict or set(entry) != keys:
                raise WireError("schema", f"a reports entry must have exactly {sorted(keys)}")
            report = Report.from_obj({**entry, "mesh": mesh, "revision": str(revision),
                                      "digest": digest})
            if report.peer in peers:
                raise WireError("schema", "two reports about one peer")
            peers.add(report.peer)
            reports.append(report)
        return cls(mesh, revision, digest, tuple(reports))


def _entry(report: Report) -> dict:
    return {k: v for k, v in report.to_obj().items() if k not in Reports.SHARED}


def pack_reports(reports: list[Report]) -> list[Reports]:
    """``reports`` as few ``Reports`` messages as their bounds allow: one per revision and digest
    (in first-seen order), split where one would pass MAX_REPORTS_BYTES or MAX_REPORTS_ENTRIES.
    A later report about the same peer replaces an earlier one."""
    groups: dict[tuple[str, Revision, str], dict[str, Report]] = {}
    for r in reports:
        groups.setdefault((r.mesh, r.revision, r.digest), {})[r.peer] = r
    out = []
    for (mesh, revision, digest), by_peer in groups.items():
        room = MAX_REPORTS_BYTES - len(encode(Reports(mesh, revision, digest, ())))
        batch: list[Report] = []
        used = 0
        for r in by_peer.values():
            size = len(json.dumps(_entry(r), separators=(",", ":"), ensure_ascii=True)) + 1
            if batch and (used + size > room or len(batch) == MAX_REPORTS_ENTRIES):
                out.append(Reports(mesh, revision, digest, tuple(batch)))
                batch, used = [], 0
            batch.append(r)
            used += size
        out.append(Reports(mesh, revision, digest, tuple(batch)))
    return out


@dataclass(frozen=True)
class Pull(_Message):
    mesh: str
    digest: str

    TYPE = "pull"
    FIELDS = frozenset({"mesh", "digest"})

    def to_obj(self) -> dict:
        return {"mesh": self.mesh, "digest": self.digest}

    @classmethod
    def from_obj(cls, obj: dict) -> Pull:
        return cls(_mesh(obj), _digest(obj))


@dataclass(frozen=True)
class Served(_Message):
    digest: str
    size: int

    TYPE = "served"
    FIELDS = frozenset({"digest", "size"})

    def to_obj(self) -> dict:
        return {"digest": self.digest, "size": self.size}

    @classmethod
    def from_obj(cls, obj: dict) -> Served:
        return cls(_digest(obj), _int(obj, "size", 0, _MAX_SIZE))


@dataclass(frozen=True)
class ServeError(_Message):
    reason: str

    TYPE = "error"
    FIELDS = frozenset({"reason"})

    def to_obj(self) -> dict:
        return {"reason": self.reason}

    @classmethod
    def from_obj(cls, obj: dict) -> ServeError:
        reason = _str(obj, "reason", 64)
        if not re.fullmatch(r"[a-z_]{1,64}", reason):
            raise WireError("schema", "error reason must be a short code")
        return cls(reason)


#: where a rollout stands; ``wave`` is the last opened wave (1-based)
WAVE_STATES = ("open", "halted", "aborted", "complete")
_MAX_WAVES = 1000


@dataclass(frozen=True)
class Wave(_Message):
    """A staged rollout of ``revision`` moved: its state, the last opened wave, a sequence
    number (a later move has a higher one), and the trusted peer that signed it."""

    mesh: str
    revision: Revision
    digest: str
    state: str
    wave: int
    seq: int
    reason: str | None
    signer: str
    signature: bytes

    TYPE = "wave"
    FIELDS = frozenset({"mesh", "revision", "digest", "state", "wave", "seq", "reason",
                        "signer", "signature"})

    def to_obj(self) -> dict:
        return {"mesh": self.mesh, "revision": str(self.revision), "digest": self.digest,
                "state": self.state, "wave": self.wave, "seq": self.seq, "reason": self.reason,
                "signer": self.signer, "signature": base64.b64encode(self.signature).decode()}

    @classmethod
    def from_obj(cls, obj: dict) -> Wave:
        state = obj["state"]
        if state not in WAVE_STATES:
            raise WireError("schema", f"state must be one of {', '.join(WAVE_STATES)}")
        reason = obj["reason"]
        if reason is not None:
            reason = _str(obj, "reason", _MAX_REASON)
        return cls(_mesh(obj), _revision(obj), _digest(obj), state,
                   _int(obj, "wave", 0, _MAX_WAVES), _int(obj, "seq", 0, 1 << 40), reason,
                   _peer(obj, "signer"), _signature(obj))


@dataclass(frozen=True)
class Query(_Message):
    """"How did revision R go on your host?" (a rollout driver gathering a wave's state)."""

    mesh: str
    revision: Revision

    TYPE = "query"
    FIELDS = frozenset({"mesh", "revision"})

    def to_obj(self) -> dict:
        return {"mesh": self.mesh, "revision": str(self.revision)}

    @classmethod
    def from_obj(cls, obj: dict) -> Query:
        return cls(_mesh(obj), _revision(obj))


Message = (Announce | Broadcast | Have | NoHead | Report | Reports | Pull | Served | ServeError
           | Wave | Query)
_TYPES: dict[str, type[_Message]] = {cls.TYPE: cls for cls in Message.__args__}
#: the largest message of any type: what a stream that may carry any of them reads at most
MAX_ANY_BYTES = max(cls.MAX_BYTES for cls in _TYPES.values())
_ENVELOPE = frozenset({"v", "type"})


# --- encoding ---------------------------------------------------------------------------------


def encode(msg: Message) -> bytes:
    if not isinstance(msg, _Message) or _TYPES.get(msg.TYPE) is not type(msg):
        raise TypeError(f"not a wire message: {msg!r}")
    obj = {"v": VERSION, "type": msg.TYPE, **msg.to_obj()}
    header = json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode()
    return header + b"\n" + msg.body() if msg.HAS_BODY else header


def encode_served(digest: str, document: bytes) -> bytes:
    """A pull answer: one header line, then exactly the document's bytes."""
    return encode(Served(digest, len(document))) + b"\n" + document


# --- strict decoding --------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise WireError("malformed", f"non-standard JSON constant {name}")


def _str(obj: dict, key: str, max_len: int = 256) -> str:
    value = obj[key]
    if type(value) is not str or not value or len(value) > max_len:
        raise WireError("schema", f"{key} must be a non-empty string of at most {max_len} chars")
    return value


def _int(obj: dict, key: str, lo: int, hi: int) -> int:
    value = obj[key]
    if type(value) is not int or not lo <= value <= hi:
        raise WireError("schema", f"{key} must be an integer in [{lo}, {hi}]")
    return value


def _mesh(obj: dict) -> str:
    mesh = _str(obj, "mesh", 64)
    if not valid_mesh_name(mesh):
        raise WireError("schema", "mesh is not a valid mesh name")
    return mesh


def _digest(obj: dict) -> str:
    digest = _str(obj, "digest", 71)
    if not DIGEST_RE.match(digest):
        raise WireError("schema", "digest must be sha256:<64 hex>")
    return digest


def _peer(obj: dict, key: str) -> str:
    peer = _str(obj, key, 128)
    if not _PEER_RE.fullmatch(peer):
        raise WireError("schema", f"{key} must be a base58 peer ID")
    return peer


def _signature(obj: dict) -> bytes:
    try:
        signature = base64.b64decode(_str(obj, "signature", 128), validate=True)
    except (binascii.Error, ValueError):
        raise WireError("schema", "signature is not base64") from None
    if len(signature) != 64:
        raise WireError("schema", "signature must be 64 bytes (Ed25519)")
    return signature


def _revision(obj: dict) -> Revision:
    try:
        return Revision.parse(_str(obj, "revision", 128))
    except ValueError as exc:
        raise WireError("schema", str(exc)) from None


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
