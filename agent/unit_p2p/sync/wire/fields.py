"""What every wire message is made of: the ``BaseMessage`` base (a type tag, a field set, a size
bound and both directions of a codec) and the strict decoders of the fields messages share.

Each decoder takes the decoded JSON object and a key, returns the value typed, or raises
``WireError("schema", ...)``: a message's ``from_obj`` is a list of these calls.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import ClassVar

from unit_p2p.errors import WireError
from unit_p2p.settings import MESH_NAME_RE
from unit_p2p.sync.revision import DIGEST_RE, Revision

#: 2: a report names the agent it is about (``peer``), so it can be forwarded towards the origin
VERSION = 2
#: announcements, reports, heads and pull requests are tiny; anything larger is hostile
MAX_MESSAGE_BYTES = 4096
#: the longest reason a report or a wave message carries
MAX_REASON = 512
#: the largest document size a head or a pull answer may name
MAX_SIZE = 1 << 40
_PEER_RE = re.compile(r"[1-9A-HJ-NP-Za-km-z]{16,128}")


def valid_mesh_name(name: str) -> bool:
    return MESH_NAME_RE.fullmatch(name) is not None


class BaseMessage:
    """One wire message: its ``TYPE`` tag, its fields and both directions of its codec live
    here together, so a new message type is one class (and one entry in ``wire.Message``)."""

    TYPE: ClassVar[str] = ""
    FIELDS: ClassVar[frozenset[str]] = frozenset()
    #: the largest encoding of this message accepted
    MAX_BYTES: ClassVar[int] = MAX_MESSAGE_BYTES
    #: a message with a body: the JSON header line, ``\n``, then the body's bytes as they are
    HAS_BODY: ClassVar[bool] = False

    def to_obj(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_obj(cls, obj: dict) -> BaseMessage:
        raise NotImplementedError

    def body(self) -> bytes:
        return b""

    @classmethod
    def from_parts(cls, obj: dict, body: bytes) -> BaseMessage:
        """The message of a header and its body (``HAS_BODY`` types)."""
        raise NotImplementedError

    def encoded(self) -> bytes:
        """The bytes of this message: the header line (the version, the type, the fields),
        then, for a message with a body, a newline and the body."""
        obj = {"v": VERSION, "type": self.TYPE, **self.to_obj()}
        header = json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode()
        return header + b"\n" + self.body() if self.HAS_BODY else header


# --- strict field decoders --------------------------------------------------------------------


def text(obj: dict, key: str, max_len: int = 256) -> str:
    value = obj[key]
    if type(value) is not str or not value or len(value) > max_len:
        raise WireError("schema", f"{key} must be a non-empty string of at most {max_len} chars")
    return value


def integer(obj: dict, key: str, lo: int, hi: int) -> int:
    value = obj[key]
    if type(value) is not int or not lo <= value <= hi:
        raise WireError("schema", f"{key} must be an integer in [{lo}, {hi}]")
    return value


def reason(obj: dict) -> str | None:
    """``reason``: null, or a string of at most MAX_REASON chars."""
    return None if obj["reason"] is None else text(obj, "reason", MAX_REASON)


def mesh(obj: dict) -> str:
    name = text(obj, "mesh", 64)
    if not valid_mesh_name(name):
        raise WireError("schema", "mesh is not a valid mesh name")
    return name


def digest(obj: dict) -> str:
    value = text(obj, "digest", 71)
    if not DIGEST_RE.match(value):
        raise WireError("schema", "digest must be sha256:<64 hex>")
    return value


def peer(obj: dict, key: str) -> str:
    value = text(obj, key, 128)
    if not _PEER_RE.fullmatch(value):
        raise WireError("schema", f"{key} must be a base58 peer ID")
    return value


def signature(obj: dict) -> bytes:
    try:
        value = base64.b64decode(text(obj, "signature", 128), validate=True)
    except (binascii.Error, ValueError):
        raise WireError("schema", "signature is not base64") from None
    if len(value) != 64:
        raise WireError("schema", "signature must be 64 bytes (Ed25519)")
    return value


def revision(obj: dict) -> Revision:
    try:
        return Revision.parse(text(obj, "revision", 128))
    except ValueError as exc:
        raise WireError("schema", str(exc)) from None
