"""A staged rollout's record on a host, and the signed ``wave`` messages that move it.

"Wave k of R open", "R halted at wave k", "R aborted", "R complete": any trusted peer may sign
one (so a rollout whose publisher died can be resumed or aborted from any trusted host; who is in
which wave stays the origin's, in the plan inside the signed document). A later move carries a
higher sequence number; an aborted or complete rollout never moves again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from unit_p2p.sync import wire
from unit_p2p.sync.plan import Plan
from unit_p2p.sync.revision import Document, Revision

OPEN, HALTED, ABORTED, COMPLETE = wire.WAVE_STATES
TERMINAL = (ABORTED, COMPLETE)


def plan_of(doc: Document) -> Plan | None:
    """The rollout plan a revision's document carries (checked when it was read), or None."""
    raw = doc.members.get("rollout")
    return Plan.from_json(raw) if raw is not None else None


def wave_payload(mesh: str, msg: wire.Wave) -> bytes:
    # Domain-separated from revision signatures: one can never be replayed as the other.
    return (f"unit-p2p/wave/v1\n{mesh}\n{msg.revision}\n{msg.digest}\n{msg.state}\n{msg.wave}\n"
            f"{msg.seq}\n{msg.signer}\n{msg.reason or ''}").encode()


def sign_wave(private_key: Any, mesh: str, revision: Revision, digest: str, state: str,
              wave: int, seq: int, signer: str, reason: str | None) -> wire.Wave:
    unsigned = wire.Wave(mesh, revision, digest, state, wave, seq, reason, signer, b"")
    signature = private_key.sign(wave_payload(mesh, unsigned))
    return wire.Wave(mesh, revision, digest, state, wave, seq, reason, signer, signature)


def wave_refusal(mesh: str, msg: wire.Wave, trust: Any) -> tuple[str, str] | None:
    """Why a wave message may not be believed (reason, detail), or None."""
    if not trust.is_trusted(msg.signer):
        return "untrusted_signer", f"wave of {msg.revision} signed by {msg.signer}, not trusted"
    from libp2p.peer.id import ID

    try:
        key = ID.from_base58(msg.signer).extract_public_key()
        ok = key is not None and bool(key.verify(wave_payload(mesh, msg), msg.signature))
    except Exception:  # malformed ID or signature from the wire: not verifiable
        ok = False
    if not ok:
        return "bad_signature", f"wave of {msg.revision}: signature of {msg.signer} does not verify"
    return None


def later(new: wire.Wave, old: wire.Wave | None) -> bool:
    """Does ``new`` replace ``old``? A terminal state is never left; otherwise the higher
    sequence number wins, the signer breaking a tie the same way everywhere."""
    if old is None:
        return True
    if old.state in TERMINAL:
        return False
    return (new.seq, new.signer.encode()) > (old.seq, old.signer.encode())


@dataclass
class Rollout:
    revision: Revision
    digest: str
    plan: Plan | None = None
    wave: wire.Wave | None = None
    #: what each host reported for this revision (explicit reports and query answers only: a
    #: peer's head says it applied, not that its gate passed)
    reports: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    #: this host's own outcome (gate included), None while it has none
    own: tuple[str, str | None] | None = None
    reverted_by: str | None = None
    rounds_after_end: int = 0

    def to_json(self) -> dict:
        return {"revision": str(self.revision), "digest": self.digest,
                "plan": self.plan.to_json() if self.plan else None,
                "wave": wire.encode(self.wave).decode() if self.wave else None,
                "own": list(self.own) if self.own else None, "reverted_by": self.reverted_by}

    @classmethod
    def from_json(cls, raw: dict) -> Rollout:
        wave = wire.decode(raw["wave"].encode()) if raw.get("wave") else None
        if wave is not None and not isinstance(wave, wire.Wave):
            raise ValueError("not a wave message")
        own = tuple(raw["own"]) if raw.get("own") else None
        return cls(Revision.parse(raw["revision"]), raw["digest"],
                   Plan.from_json(raw["plan"]) if raw.get("plan") else None, wave,
                   own=own, reverted_by=raw.get("reverted_by"))  # type: ignore[arg-type]
