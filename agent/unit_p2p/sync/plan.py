"""A staged rollout's plan: which hosts are in which wave, and how many may fail.

The plan is the ``rollout`` member of a revision's document envelope (sync/revision.py), so the
origin's signature covers it and no relayer can widen a wave. sync/rollout.py moves a rollout
through its waves; this module only builds and checks plans (no I/O, no imports of the sync
layer: the envelope's check runs inside revision.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from unit_p2p.errors import BadDocument

#: the wave of everyone a plan does not list (only ever the last wave)
EVERYONE = "*"
MAX_WAVES = 1000
PEER_RE = re.compile(r"[1-9A-HJ-NP-Za-km-z]{16,128}")
_STAGE_RE = re.compile(r"^(?:([1-9][0-9]{0,5})|([1-9][0-9]?(?:\.[0-9]+)?|100)%)$")


class PlanError(ValueError):
    """A staged publish's stages cannot make a plan (the API answers 400)."""


# --- the plan: who is in which wave (signed by the origin, inside the document) -------------


@dataclass(frozen=True)
class Plan:
    waves: tuple[tuple[str, ...], ...]
    max_failures: int = 0
    auto_revert: bool = False

    def to_json(self) -> dict:
        return {"waves": [list(w) for w in self.waves], "max_failures": self.max_failures,
                "auto_revert": self.auto_revert}

    @classmethod
    def from_json(cls, raw: Any) -> Plan:
        """Raises PlanError for anything but a well-formed plan."""
        if not isinstance(raw, dict) or set(raw) != {"waves", "max_failures", "auto_revert"}:
            raise PlanError("a rollout plan is {waves, max_failures, auto_revert}")
        waves, max_failures, auto_revert = raw["waves"], raw["max_failures"], raw["auto_revert"]
        if not isinstance(waves, list) or not 1 <= len(waves) <= MAX_WAVES:
            raise PlanError("waves must be a list of 1 to 1000 waves")
        if type(max_failures) is not int or max_failures < 0 or type(auto_revert) is not bool:
            raise PlanError("max_failures must be an integer >= 0 and auto_revert a boolean")
        seen: set[str] = set()
        out = []
        for i, wave in enumerate(waves):
            if not isinstance(wave, list) or not wave or not all(
                    isinstance(p, str) and (p == EVERYONE or PEER_RE.fullmatch(p))
                    for p in wave):
                raise PlanError(f"wave {i + 1} must be a non-empty list of peer IDs")
            if EVERYONE in wave and (wave != [EVERYONE] or i != len(waves) - 1):
                raise PlanError('"*" (everyone else) is only ever the whole last wave')
            if seen & set(wave) or len(set(wave)) != len(wave):
                raise PlanError(f"wave {i + 1} repeats a peer")
            seen |= set(wave)
            out.append(tuple(wave))
        return cls(tuple(out), max_failures, auto_revert)

    def wave_of(self, peer: str) -> int | None:
        """The 1-based wave ``peer`` belongs to, or None (not in the plan)."""
        for i, wave in enumerate(self.waves, 1):
            if peer in wave or wave == (EVERYONE,):
                return i
        return None

    def members(self, k: int, known: Iterable[str]) -> list[str]:
        """Wave ``k``'s hosts; for "everyone else", the ``known`` hosts no earlier wave lists."""
        wave = self.waves[k - 1]
        if wave != (EVERYONE,):
            return list(wave)
        listed = {p for w in self.waves for p in w}
        return sorted(set(known) - listed)


def make_plan(stages: Sequence[Any], publisher: str, peers: Iterable[str], *,
              max_failures: int = 0, auto_revert: bool = False) -> Plan:
    """Waves from ``stages``: each a cumulative host count (``1``), a cumulative share of the
    fleet (``"10%"``), or an explicit list of peer IDs. The fleet is the publisher and the
    trusted ``peers`` it knows; the publisher is the first host of wave 1 (publishing applies it
    there first), the others follow in peer ID order, so the canaries are the same hosts from
    one rollout to the next. The last stage must be ``100%``: it becomes "everyone else", so
    hosts unknown at publish time take the revision when the last wave opens."""
    if not stages:
        raise PlanError("--stages needs at least one stage")
    order = [publisher, *sorted(set(peers) - {publisher})]
    fleet = len(order)
    waves: list[list[str]] = []
    taken: set[str] = set()
    for i, stage in enumerate(stages):
        last = i == len(stages) - 1
        if isinstance(stage, list):
            wave = [p for p in stage if p not in taken]
            bad = [p for p in stage if not isinstance(p, str) or not PEER_RE.fullmatch(p)]
            if bad or not wave:
                raise PlanError(f"stage {i + 1}: a list of peer IDs not in an earlier stage")
            if i == 0 and publisher not in stage:
                wave.insert(0, publisher)
            if last:
                raise PlanError("the last stage must be 100% (every host)")
        else:
            text = str(stage).strip()
            m = _STAGE_RE.match(text) if not isinstance(stage, bool) else None
            if m is None:
                raise PlanError(f"stage {text[:20]!r} is not a host count (3), a share (10%) "
                                "or a list of peer IDs")
            if last:
                if text != "100%":
                    raise PlanError("the last stage must be 100% (every host), so hosts the "
                                    "publisher does not know of take it too")
                waves.append([EVERYONE])
                break
            size = int(m.group(1)) if m.group(1) else math.ceil(fleet * float(m.group(2)) / 100)
            wave = [p for p in order[:size] if p not in taken]
            if not wave:
                raise PlanError(f"stage {text!r} adds no host to the stages before it "
                                f"(the fleet has {fleet} hosts known here)")
        taken |= set(wave)
        waves.append(wave)
    return Plan(tuple(tuple(w) for w in waves), max_failures, auto_revert)


def parse_stages(text: str) -> list[str]:
    """``--stages 1,10%,100%`` as the API's list."""
    return [s.strip() for s in text.split(",") if s.strip()]


def check_rollout(value: Any) -> None:
    """The envelope's check of its ``rollout`` member: raises BadDocument unless it is a plan."""
    try:
        Plan.from_json(value)
    except PlanError as exc:
        raise BadDocument("bad_document", f"rollout plan: {exc}") from None
