"""Staged rollouts: a revision that reaches the fleet in waves, each gated on the last one's health.

Who is in which wave is the origin's decision, written in the revision's document (the
``rollout`` member of its envelope, a ``Plan``) and so covered by the origin's signature: no
relayer can widen a wave. Where the rollout stands is a small ``wave`` message ("wave k of R
open", "halted", "aborted", "complete") that any trusted peer may sign, so a rollout whose
publisher died can be resumed or aborted from any trusted host; a later move carries a higher
sequence number and a terminal state (aborted, complete) is never left.

Every host fetches and holds a staged revision (it may serve it) but applies it only once its
wave is open. After applying, a host runs its health gate (sync/health.py) and reports
``applied`` or ``failed`` with the gate's reason. The driver (the publisher, or whoever resumed
the rollout) opens wave k+1 when every host of waves 1..k applied and passed; when more than
``max_failures`` failed it halts the rollout and, with ``auto_revert``, publishes the previous
document as a new revision, so hosts that took the revision go back and the others stay.
"""

from __future__ import annotations

import json
import logging
import random
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from unit_p2p.errors import MeshError, PublishRefused, SyncError, UnknownRevision, WireError
from unit_p2p.fsutil import atomic_write
from unit_p2p.sync import wire
from unit_p2p.sync.convergence import APPLIED, FAILED
from unit_p2p.sync.health import GateResult, HealthGate
from unit_p2p.sync.plan import Plan
from unit_p2p.sync.revision import Document, Head, Revision

log = logging.getLogger("unit_p2p.sync.rollout")

OPEN, HALTED, ABORTED, COMPLETE = wire.WAVE_STATES
TERMINAL = (ABORTED, COMPLETE)
#: rollouts whose state this host keeps (state_dir/rollouts.json)
KEPT = 16
#: a driver asks the hosts of the open waves it has no report from this often (seconds); the
#: origin, to whom reports travel anyway, waits this long before it asks the first time
QUERY_EVERY = 2.0
ORIGIN_QUERY_AFTER = 5.0
#: anti-entropy rounds a finished rollout's state is still pushed (late hosts learn it)
PUSH_ROUNDS_AFTER_END = 6


def plan_of(doc: Document) -> Plan | None:
    """The rollout plan a revision's document carries (checked when it was read), or None."""
    raw = doc.members.get("rollout")
    return Plan.from_json(raw) if raw is not None else None


# --- wave messages: where a rollout stands (signed by any trusted peer) ----------------------


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


def _later(new: wire.Wave, old: wire.Wave | None) -> bool:
    """Does ``new`` replace ``old``? A terminal state is never left; otherwise the higher
    sequence number wins, the signer breaking a tie the same way everywhere."""
    if old is None:
        return True
    if old.state in TERMINAL:
        return False
    return (new.seq, new.signer.encode()) > (old.seq, old.signer.encode())


# --- a host's part -----------------------------------------------------------------------------


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


class Rollouts:
    """This host's view of the staged rollouts it knows, and the driver when it runs one.

    ``host`` is the reconciler (read-only, except for the calls named here): its peer ID,
    private key, mesh, trust, candidates, convergence, spread, admission, publisher, head and
    ``_spawn``/``_wake_apply``.
    """

    def __init__(self, host: Any, state_dir: Path, gate: HealthGate):
        self.host = host
        self.path = Path(state_dir) / "rollouts.json"
        self.gate = gate
        self.by_revision: OrderedDict[Revision, Rollout] = OrderedDict()
        #: staged revisions fetched here whose wave is not open: (head, holders)
        self.held: dict[Revision, tuple[Head, set[str]]] = {}
        self._drivers: set[Revision] = set()
        self.changed = trio.Event()

    # --- persistence ----------------------------------------------------------------------

    def load(self) -> None:
        try:
            raw = json.loads(self.path.read_bytes())
            for item in raw["rollouts"]:
                r = Rollout.from_json(item)
                self.by_revision[r.revision] = r
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, WireError) as exc:
            log.warning("rollouts.json unreadable, starting without it: %s", exc)

    async def _save(self) -> None:
        body = json.dumps({"rollouts": [r.to_json() for r in self.by_revision.values()]},
                          indent=1).encode()
        await trio.to_thread.run_sync(atomic_write, self.path, body)

    def _rollout(self, revision: Revision, digest: str) -> Rollout:
        r = self.by_revision.get(revision)
        if r is None:
            r = self.by_revision[revision] = Rollout(revision, digest)
            while len(self.by_revision) > KEPT:
                self.by_revision.popitem(last=False)
        return r

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    # --- may this host apply it? ----------------------------------------------------------

    def may_apply(self, head: Head, plan: Plan | None) -> bool:
        """False: ``head`` is staged and this host's wave is not open; it is held (the
        reconciler drops its candidate) until a wave message opens it."""
        if plan is None:
            return True
        r = self._rollout(head.revision, head.digest)
        r.plan = plan
        state = r.wave
        mine = plan.wave_of(self.host.peer_id)
        if state is not None and state.state == COMPLETE:
            return True
        if state is not None and state.state != ABORTED and mine is not None \
                and mine <= state.wave:
            return True
        holders = self.held.get(head.revision, (head, set()))[1]
        self.held[head.revision] = (head, holders)
        log.info("holding staged revision %s: %s", head.revision,
                 "rollout aborted" if state is not None and state.state == ABORTED else
                 f"this host is in wave {mine}, open: {state.wave if state else 0}")
        return False

    def holds(self, peer: str, head: Head) -> bool:
        """A held revision announced again: note the holder, nothing to apply."""
        held = self.held.get(head.revision)
        if held is None or held[0].digest != head.digest:
            return False
        held[1].add(peer)
        return True

    def _release(self, revision: Revision) -> None:
        """Its wave opened: hand the held revision back to the apply loop."""
        held = self.held.pop(revision, None)
        if held is None:
            return
        head, holders = held
        mine = self.host.head
        if mine is not None and mine.revision >= revision:
            return
        for peer in holders or {head.revision.origin}:
            self.host.candidates.propose(peer, head)
        self.host._wake_apply()

    # --- this host applied it: the gate, then the report -------------------------------------

    def applied(self, head: Head) -> None:
        """Replaces the plain "applied" report: the gate runs first (when configured)."""
        self.host._spawn(self._gate_and_report, head)

    async def _gate_and_report(self, head: Head) -> None:
        result = await self.gate.check() if self.gate.configured else GateResult(True)
        status, reason = (APPLIED, None) if result.passed else (FAILED, result.reason)
        rev = head.revision
        r = self.by_revision.get(rev)
        if r is not None:
            r.own = (status, reason)
            r.reports[self.host.peer_id] = (status, reason)
            await self._save()
            self._notify()
        self.host.convergence.record(self.host.peer_id, rev, status, reason)
        await self.host.spread.report(rev, head.digest, status, reason)

    def reported(self, peer: str, report: wire.Report) -> None:
        r = self.by_revision.get(report.revision)
        if r is not None and r.digest == report.digest:
            r.reports[peer] = (report.status, report.reason)
            self._notify()

    def failed_here(self, revision: Revision, reason: str) -> None:
        """This host could not apply it (Unit refused it): its own outcome for queries."""
        r = self.by_revision.get(revision)
        if r is not None:
            r.own = (FAILED, reason)
            r.reports[self.host.peer_id] = r.own
            self._notify()

    # --- wave messages ----------------------------------------------------------------------

    def on_wave(self, sender: str, msg: wire.Wave) -> None:
        """A wave message from ``sender`` (admitted: trusted, decoded, this mesh)."""
        adm = self.host.admission
        why = wave_refusal(self.host.mesh_name, msg, self.host.trust)
        if why is not None:
            adm.refuse(sender, *why)
            return
        r = self.by_revision.get(msg.revision)
        held = self.held.get(msg.revision)
        digest = r.digest if r is not None else held[0].digest if held else None
        if digest is not None and digest != msg.digest:
            adm.refuse(sender, "equivocation",
                       f"wave of {msg.revision} names {msg.digest}, the revision is {digest}")
            return
        self.host._spawn(self._merge, msg)

    async def _merge(self, msg: wire.Wave, spread: bool = False) -> bool:
        """Take ``msg`` if it is later than what we know; ``spread``: we moved the rollout, so
        we flood it (one gossip and a push per connection). Receivers do not relay it again:
        the mover's flood reached the mesh, anti-entropy covers a host it missed."""
        r = self._rollout(msg.revision, msg.digest)
        if not _later(msg, r.wave):
            return False
        r.wave = msg
        r.rounds_after_end = 0
        await self._save()
        self._notify()
        log.info("rollout %s: %s wave %d (seq %d, by %s)%s", msg.revision, msg.state, msg.wave,
                 msg.seq, msg.signer, f": {msg.reason}" if msg.reason else "")
        if msg.state == ABORTED:
            if msg.revision in self.held:
                self.held.pop(msg.revision)
                self.host.candidates.give_up(msg.revision, "rollout aborted")
        elif msg.revision in self.held and r.plan is not None:
            mine = r.plan.wave_of(self.host.peer_id)
            if msg.state == COMPLETE or (mine is not None and mine <= msg.wave):
                self._release(msg.revision)
        if spread:
            await self.host.spread.broadcast(msg)
        return True

    async def move(self, rev: Revision, state: str, wave: int, reason: str | None = None
                   ) -> wire.Wave:
        """Sign and spread the rollout's next state (this host moves it)."""
        r = self.by_revision[rev]
        seq = (r.wave.seq + 1) if r.wave else 1
        msg = sign_wave(self.host.private_key, self.host.mesh_name, rev, r.digest, state, wave,
                        seq, self.host.peer_id, reason)
        await self._merge(msg, spread=True)
        return msg

    def latest(self) -> Rollout | None:
        staged = [r for r in self.by_revision.values() if r.wave is not None]
        return max(staged, key=lambda r: r.revision) if staged else None

    def connected(self, peer: str) -> None:
        """A new connection learns where the latest rollout stands (a restarted host too)."""
        r = self.latest()
        if r is not None and r.wave is not None and self.host.trust.is_trusted(peer):
            self.host._spawn(self.host.spread.push, peer, r.wave)

    def round(self) -> None:
        """An anti-entropy round: while a rollout runs (and a few rounds after it ended), push
        its state to one random connected peer, so a host that missed a flood learns it."""
        r = self.latest()
        if r is None or r.wave is None:
            return
        if r.wave.state in TERMINAL:
            if r.rounds_after_end >= PUSH_ROUNDS_AFTER_END:
                return
            r.rounds_after_end += 1
        peers = [p for p in self.host.mesh.connected_peers() if self.host.trust.is_trusted(p)]
        if peers:
            self.host._spawn(self.host.spread.push, random.choice(peers), r.wave)

    # --- starting, driving, resuming, aborting ------------------------------------------------

    async def started(self, head: Head, plan: Plan) -> None:
        """This host published ``head`` with ``plan``: open wave 1, run its own gate, drive."""
        r = self._rollout(head.revision, head.digest)
        r.plan = plan
        await self.move(head.revision, OPEN, 1)
        self.applied(head)
        self._start_driver(head.revision)

    def _start_driver(self, rev: Revision) -> None:
        if rev not in self._drivers:
            self._drivers.add(rev)
            self.host._spawn(self._drive, rev)

    async def _drive(self, rev: Revision) -> None:
        try:
            await self._drive_until_done(rev)
        except (SyncError, MeshError) as exc:
            log.error("rollout %s: the driver stopped: %s", rev, exc)
        finally:
            self._drivers.discard(rev)

    async def _drive_until_done(self, rev: Revision) -> None:
        r = self.by_revision[rev]
        assert r.plan is not None
        origin = rev.origin == self.host.peer_id
        asked_at = trio.current_time() + (ORIGIN_QUERY_AFTER if origin else 0.0) - QUERY_EVERY
        while True:
            state = r.wave
            assert state is not None
            if state.state != OPEN:
                return
            mine = self.host.head
            if mine is not None and mine.revision > rev:
                log.info("rollout %s: superseded by %s, the driver stops", rev, mine.revision)
                return
            waves = self.tally(r)
            # Failures count over every open wave; only the current wave is waited for: a
            # signed "wave k open" says its signer saw waves 1..k-1 through (so a host that
            # resumes after the driver died need not hear from, say, the dead publisher).
            failed = {p: why for w in waves[:state.wave] for p, why in w["failed"].items()}
            pending = waves[state.wave - 1]["pending"]
            if len(failed) > r.plan.max_failures:
                why = (f"{len(failed)} host(s) failed, more than max_failures "
                       f"{r.plan.max_failures}: " + "; ".join(
                           f"{p[-10:]}: {w}" for p, w in sorted(failed.items())))[:480]
                await self.move(rev, HALTED, state.wave, why)
                if r.plan.auto_revert:
                    await self.revert(rev)
                return
            if not pending:
                if state.wave == len(r.plan.waves):
                    await self.move(rev, COMPLETE, state.wave)
                    return
                await self.move(rev, OPEN, state.wave + 1)
                continue
            if trio.current_time() - asked_at >= QUERY_EVERY:
                asked_at = trio.current_time()
                await self.ask(r, pending)
                continue
            with trio.move_on_after(QUERY_EVERY):
                await self.changed.wait()

    async def revert(self, rev: Revision) -> str | None:
        """Publish the document before ``rev`` as a new revision (a rollback); None when this
        host's head is neither ``rev`` nor older (something newer won: nothing to revert)."""
        head = self.host.head
        if head is None or head.revision > rev:
            return None
        spec = "previous" if head.revision == rev else "head"
        try:
            target, result = await self.host.publisher.rollback(spec, force=True)
        except UnknownRevision as exc:
            log.error("rollout %s: cannot revert, no previous document here: %s", rev, exc)
            return None
        r = self.by_revision[rev]
        r.reverted_by = str(result.revision)
        await self._save()
        self._notify()
        log.warning("rollout %s reverted: %s published again as %s", rev, target,
                    result.revision)
        return r.reverted_by

    async def resume(self, spec: str | None) -> Rollout:
        """Continue a rollout from this host: an open one is driven from its current wave (its
        driver may have died with its host); a halted one opens its next wave."""
        r = self._find(spec)
        if r.plan is None:
            raise UnknownRevision("unknown_rollout", f"this host does not hold the plan of "
                                  f"{r.revision} (its document was never fetched here)")
        state = r.wave
        assert state is not None
        if state.state in TERMINAL:
            raise PublishRefused("rollout_finished", f"rollout {r.revision} is {state.state}")
        if state.state == HALTED:
            if state.wave == len(r.plan.waves):
                await self.move(r.revision, COMPLETE, state.wave, "resumed past its failures")
                return r
            await self.move(r.revision, OPEN, state.wave + 1)
        self._start_driver(r.revision)
        return r

    async def abort(self, spec: str | None, revert: bool) -> Rollout:
        r = self._find(spec)
        state = r.wave
        assert state is not None
        if state.state in TERMINAL:
            raise PublishRefused("rollout_finished", f"rollout {r.revision} is {state.state}")
        await self.move(r.revision, ABORTED, state.wave, "aborted by an operator")
        if revert or (r.plan is not None and r.plan.auto_revert):
            await self.revert(r.revision)
        return r

    def _find(self, spec: str | None) -> Rollout:
        if spec in (None, "", "latest"):
            r = self.latest()
            if r is None:
                raise UnknownRevision("unknown_rollout", "no staged rollout is known here")
            return r
        try:
            rev = Revision.parse(spec)
        except ValueError:
            matches = [r for r in self.by_revision.values()
                       if str(r.revision.counter) == spec and r.wave is not None]
            if len(matches) != 1:
                raise UnknownRevision("unknown_rollout",
                                      f"no single staged rollout {spec!r} here") from None
            return matches[0]
        r = self.by_revision.get(rev)
        if r is None or r.wave is None:
            raise UnknownRevision("unknown_rollout", f"no staged rollout {rev} known here")
        return r

    async def wait_done(self, rev: Revision, wait: bool, timeout: float) -> dict:
        """With ``wait``, until the rollout of ``rev`` is no longer open (or ``timeout``);
        then where it stands."""
        if wait:
            with trio.move_on_after(timeout):
                while (r := self.by_revision[rev]).wave is not None \
                        and r.wave.state == OPEN and rev in self._drivers:
                    await self.changed.wait()
        return await self.view(str(rev), gather=False)

    # --- where it stands -----------------------------------------------------------------------

    def tally(self, r: Rollout) -> list[dict]:
        """Per wave: its hosts, who applied (gate passed), who failed and why, who is pending."""
        assert r.plan is not None
        state = r.wave
        known = set(self.host.convergence.targets()) | set(r.reports) | {self.host.peer_id}
        out = []
        for k in range(1, len(r.plan.waves) + 1):
            members = r.plan.members(k, known)
            applied, failed, pending = [], {}, []
            for p in members:
                status, reason = r.reports.get(p, (None, None))
                if status == APPLIED:
                    applied.append(p)
                elif status == FAILED:
                    failed[p] = reason or FAILED
                else:
                    pending.append(p)
            is_open = (state is not None and state.state != ABORTED and k <= state.wave) or (
                state is not None and state.state == COMPLETE)
            out.append({"wave": k, "open": is_open, "hosts": members, "applied": applied,
                        "failed": failed, "pending": pending})
        return out

    async def ask(self, r: Rollout, peers: Iterable[str]) -> None:
        """Ask ``peers`` directly how ``r`` went there (their answers are their own reports),
        all at once, each bounded."""
        async with trio.open_nursery() as nursery:
            for peer in peers:
                if peer != self.host.peer_id:
                    nursery.start_soon(self._ask_one, r, peer)

    async def _ask_one(self, r: Rollout, peer: str) -> None:
        spread = self.host.spread
        try:
            stream = await self.host.mesh.open_stream(peer, wire.PROTO_ROLLOUT)
            try:
                with trio.fail_after(wire.STREAM_TIMEOUT):
                    await stream.send_all(spread._encode(ROLLOUT,
                                                         wire.Query(self.host.mesh_name,
                                                                    r.revision)))
                    await stream.close_write()
                    data = await stream.receive_all(wire.MAX_MESSAGE_BYTES, wire.STREAM_TIMEOUT)
            finally:
                await stream.close()
        except (MeshError, WireError, trio.TooSlowError) as exc:
            log.debug("rollout query to %s failed: %s", peer, exc)
            return
        msg = self.host.admission.message(peer, data, ROLLOUT)
        if isinstance(msg, wire.Report) and msg.peer == peer and msg.revision == r.revision:
            self.reported(peer, msg)
            self.host.convergence.record(peer, msg.revision, msg.status, msg.reason)

    async def serve_query(self, peer: str, stream: Any) -> None:
        """The ``/unit-p2p/rollout`` handler: our own outcome for the revision asked about."""
        data = await stream.receive_all(wire.MAX_MESSAGE_BYTES, wire.STREAM_TIMEOUT)
        msg = self.host.admission.message(peer, data, ROLLOUT)
        answer: wire.Message = wire.ServeError("pending")
        if isinstance(msg, wire.Query):
            r = self.by_revision.get(msg.revision)
            if r is not None and r.own is not None:
                answer = wire.Report(self.host.mesh_name, r.revision, r.digest, r.own[0],
                                     r.own[1], self.host.peer_id)
        await stream.send_all(self.host.spread._encode(ROLLOUT, answer))
        await stream.close_write()
        await stream.close()

    async def view(self, spec: str | None, gather: bool = True) -> dict:
        """``rollout status``: the plan, the state, and wave by wave who applied, who failed and
        why, who is pending. ``gather``: first ask the pending hosts of the open waves directly
        (this host may not be the one reports travel to)."""
        r = self._find(spec)
        if r.plan is not None and gather and r.wave is not None:
            pending = [p for w in self.tally(r) if w["open"] for p in w["pending"]]
            if pending:
                with trio.move_on_after(wire.STREAM_TIMEOUT / 2):
                    await self.ask(r, pending)
        state = r.wave
        return {
            "revision": str(r.revision), "digest": r.digest,
            "state": state.state if state else None, "wave": state.wave if state else 0,
            "seq": state.seq if state else 0, "moved_by": state.signer if state else None,
            "reason": state.reason if state else None,
            "max_failures": r.plan.max_failures if r.plan else None,
            "auto_revert": r.plan.auto_revert if r.plan else None,
            "reverted_by": r.reverted_by, "driving": r.revision in self._drivers,
            "waves": self.tally(r) if r.plan else [],
        }


#: ``protocol`` label of the message counters for rollout queries
ROLLOUT = "rollout"


__all__ = ["Rollout", "Rollouts", "sign_wave", "wave_refusal"]


