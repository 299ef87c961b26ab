"""The messages that carry an origin-signed head: ``announce`` (the sender's own head),
``broadcast`` (the head with its small document), ``have`` (a document the sender holds), and
``nohead`` (the heads exchange of an agent with no revision yet)."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from unit_p2p.errors import WireError
from unit_p2p.sync.revision import Head
from unit_p2p.sync.wire import fields
from unit_p2p.sync.wire.fields import MAX_MESSAGE_BYTES, MAX_SIZE, BaseMessage

#: the largest document a ``broadcast`` carries (a bigger one is announced and pulled): a few
#: times a typical Unit config, small enough that gossip's duplicate copies cost little
MAX_INLINE_BYTES = 16 * 1024


class _SignedHead(BaseMessage):
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
        return fields.mesh(obj), Head(fields.revision(obj), fields.digest(obj),
                                      fields.integer(obj, "size", 0, MAX_SIZE),
                                      fields.signature(obj))


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
    #: pushed by a host whose gossip reaches nobody (its gossip mesh is empty): the receiver
    #: floods it on, else nobody would
    flood: bool = False

    TYPE = "broadcast"
    FIELDS = _SignedHead.FIELDS | {"flood"}
    MAX_BYTES = MAX_MESSAGE_BYTES + MAX_INLINE_BYTES
    HAS_BODY = True

    def to_obj(self) -> dict:
        return {**super().to_obj(), "flood": self.flood}

    def body(self) -> bytes:
        return self.document

    @classmethod
    def from_parts(cls, obj: dict, body: bytes) -> Broadcast:
        if type(obj["flood"]) is not bool:
            raise WireError("schema", "flood must be true or false")
        mesh, head = cls.signed_head(obj)
        if len(body) > MAX_INLINE_BYTES:
            raise WireError("too_large", f"broadcast: a document of {len(body)} bytes > "
                            f"{MAX_INLINE_BYTES}")
        if head.size != len(body):
            raise WireError("schema", f"broadcast: a body of {len(body)} bytes, the head says "
                            f"{head.size}")
        return cls(mesh, head, body, obj["flood"])


@dataclass(frozen=True)
class Have(_SignedHead):
    """A revision whose document the sender holds (verified, maybe not applied yet)."""

    mesh: str
    head: Head

    TYPE = "have"


@dataclass(frozen=True)
class NoHead(BaseMessage):
    mesh: str

    TYPE = "nohead"
    FIELDS = frozenset({"mesh"})

    def to_obj(self) -> dict:
        return {"mesh": self.mesh}

    @classmethod
    def from_obj(cls, obj: dict) -> NoHead:
        return cls(fields.mesh(obj))
