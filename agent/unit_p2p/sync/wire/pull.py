"""The messages of a pull (``/unit-p2p/config``): ``pull`` a digest, answered ``served`` (then
the document's bytes) or ``error`` with a short code."""

from __future__ import annotations

import re
from dataclasses import dataclass

from unit_p2p.errors import WireError
from unit_p2p.sync.wire import fields
from unit_p2p.sync.wire.fields import MAX_SIZE, BaseMessage


@dataclass(frozen=True)
class Pull(BaseMessage):
    mesh: str
    digest: str

    TYPE = "pull"
    FIELDS = frozenset({"mesh", "digest"})

    def to_obj(self) -> dict:
        return {"mesh": self.mesh, "digest": self.digest}

    @classmethod
    def from_obj(cls, obj: dict) -> Pull:
        return cls(fields.mesh(obj), fields.digest(obj))


@dataclass(frozen=True)
class Served(BaseMessage):
    digest: str
    size: int

    TYPE = "served"
    FIELDS = frozenset({"digest", "size"})

    def to_obj(self) -> dict:
        return {"digest": self.digest, "size": self.size}

    @classmethod
    def from_obj(cls, obj: dict) -> Served:
        return cls(fields.digest(obj), fields.integer(obj, "size", 0, MAX_SIZE))


@dataclass(frozen=True)
class ServeError(BaseMessage):
    reason: str

    TYPE = "error"
    FIELDS = frozenset({"reason"})

    def to_obj(self) -> dict:
        return {"reason": self.reason}

    @classmethod
    def from_obj(cls, obj: dict) -> ServeError:
        reason = fields.text(obj, "reason", 64)
        if not re.fullmatch(r"[a-z_]{1,64}", reason):
            raise WireError("schema", "error reason must be a short code")
        return cls(reason)
