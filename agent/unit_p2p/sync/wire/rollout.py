"""The messages of staged rollouts (sync/rollout.py): ``wave`` (where a rollout stands, signed
by the trusted peer that moved it) and ``query`` (a driver asking a host how a revision went)."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from unit_p2p.errors import WireError
from unit_p2p.sync.revision import Revision
from unit_p2p.sync.wire import fields
from unit_p2p.sync.wire.fields import BaseMessage

#: where a rollout stands; ``wave`` is the last opened wave (1-based)
WAVE_STATES = ("open", "halted", "aborted", "complete")
_MAX_WAVES = 1000


@dataclass(frozen=True)
class Wave(BaseMessage):
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
        reason = fields.reason(obj)
        return cls(fields.mesh(obj), fields.revision(obj), fields.digest(obj), state,
                   fields.integer(obj, "wave", 0, _MAX_WAVES),
                   fields.integer(obj, "seq", 0, 1 << 40), reason,
                   fields.peer(obj, "signer"), fields.signature(obj))


@dataclass(frozen=True)
class Query(BaseMessage):
    """"How did revision R go on your host?" (a rollout driver gathering a wave's state)."""

    mesh: str
    revision: Revision

    TYPE = "query"
    FIELDS = frozenset({"mesh", "revision"})

    def to_obj(self) -> dict:
        return {"mesh": self.mesh, "revision": str(self.revision)}

    @classmethod
    def from_obj(cls, obj: dict) -> Query:
        return cls(fields.mesh(obj), fields.revision(obj))
