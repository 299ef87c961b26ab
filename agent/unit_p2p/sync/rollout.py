"""Staged rollouts: a revision that reaches the fleet in waves, each gated on the last one's health.

Who is in which wave is the origin's decision, written in the revision's document (the
``rollout`` member of its envelope, a ``Plan``) and so covered by the origin's signature: no
relayer can widen a wave. Where the rollout stands is a small ``wave`` message ("wave k of R
open", "halted", "aborted", "complete") that any trusted peer may sign, so a rollout whose
publisher died can be resumed or aborted from any trusted host; a later move carries a higher
sequence number and a terminal state (aborted, complete) is never left.

Every host fetches and holds a staged revision (it may serve it) but applies it only once its
wave is open. After applying, a host runs its health gate (sync/health.py) and reports
``applied`` or ``failed`` with the gate's reason. This module is a host's part: hold a staged
revision until its wave opens, run the gate, take and spread wave messages (sync/waves.py), answer
a driver's questions. The driver (sync/rollout_driver.py: the publisher, or whoever resumed the
rollout) opens the next wave, halts and reverts.
"""

from __future__ import annotations

import json
import logging
import random
from collections import OrderedDict
from pathlib import Path
from typing import Any

import trio

from unit_p2p.errors import WireError
from unit_p2p.fsutil import atomic_write
from unit_p2p.sync import wire
from unit_p2p.sync.convergence import APPLIED, FAILED
from unit_p2p.sync.health import GateResult, HealthGate
from unit_p2p.sync.plan import Plan
from unit_p2p.sync.revision import Head, Revision
from unit_p2p.sync.rollout_driver import ROLLOUT, Driver
from unit_p2p.sync.waves import (
    ABORTED,
    COMPLETE,
    OPEN,
    TERMINAL,
    Rollout,
    later,
    sign_wave,
    wave_refusal,
)

log = logging.getLogger("unit_p2p.sync.rollout")

#: rollouts whose state this host keeps (state_dir/rollouts.json)
KEPT = 16
#: anti-entropy rounds a finished rollout's state is still pushed (late hosts learn it)
PUSH_ROUNDS_AFTER_END = 6


class Rollouts:
    """This host's view of the staged rollouts it knows, and the driver when it runs one.

    ``host`` is the reconciler (read-only, except for the calls named here): its peer ID,
    private key, mesh, trust, candidates, convergence, spread, admission, publisher, head and
    ``spawn``/``wake_apply``.
    """

    def __init__(self, host: Any, state_dir: Path, gate: HealthGate):
        self.host = host
        self.path = Path(state_dir) / "rollouts.json"
        self.gate = gate
        self.by_revision: OrderedDict[Revision, Rollout] = OrderedDict()
        #: staged revisions fetched here whose wave is not open: (head, holders)
        self.held: dict[Revision, tuple[Head, set[str]]] = {}
        self.changed = trio.Event()
        self.driver = Driver(self, host)

    # --- persistence ----------------------------------------------------------------------

    async def load(self, head: Head | None) -> None:
        """Read the rollouts this host knew before it stopped. A staged head whose gate had not
        finished then (the agent stopped in between) runs it again: the driver waits for it. An
        open rollout this host drove is driven again."""
        await trio.to_thread.run_sync(self._load)
        r = self.by_revision.get(head.revision) if head is not None else None
        if head is not None and r is not None and r.plan is not None and r.own is None:
            self.applied(head)
        # An open rollout this host moved last was driven here: drive it again after a restart.
        latest = self.latest()
        if latest is not None and latest.plan is not None and latest.wave is not None \
                and latest.wave.state == OPEN and latest.wave.signer == self.host.peer_id:
            self.driver.start(latest.revision)

    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_bytes())
            for item in raw["rollouts"]:
                r = Rollout.from_json(item)
                self.by_revision[r.revision] = r
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, WireError) as exc:
            log.warning("rollouts.json unreadable, starting without it: %s", exc)

    async def save(self) -> None:
        """Persist, and wake whoever waits on a change (drivers, waits, status)."""
        await self._save()
        self.notify()

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

    def notify(self) -> None:
        """Wake whoever waits on ``changed`` (a wait on a rollout, its driver)."""
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
        if state is not None and state.state == ABORTED:
            self.host.candidates.give_up(head.revision, "rollout aborted")
            return False
        if state is not None and mine is not None and mine <= state.wave:
            return True
        current = self.host.head
        for old in [rev for rev in self.held if current is not None and rev <= current.revision]:
            del self.held[old]  # superseded while held
        holders = self.held.get(head.revision, (head, set()))[1]
        self.held[head.revision] = (head, holders)
        log.info("holding staged revision %s: this host is in wave %s, open: %s",
                 head.revision, mine, state.wave if state else 0)
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
        self.host.wake_apply()

    # --- this host applied it: the gate, then the report -------------------------------------

    def applied(self, head: Head) -> None:
        """Replaces the plain "applied" report: the gate runs first (when configured)."""
        self.host.spawn(self._gate_and_report, head)

    async def _gate_and_report(self, head: Head) -> None:
        if head.revision in self.by_revision:
            await self._save()  # with its plan: a restart during the gate runs it again
        result = await self.gate.check() if self.gate.configured else GateResult(True)
        status, reason = (APPLIED, None) if result.passed else (FAILED, result.reason)
        rev = head.revision
        r = self.by_revision.get(rev)
        if r is not None:
            r.own = (status, reason)
            r.reports[self.host.peer_id] = (status, reason)
            await self._save()
            self.notify()
        self.host.convergence.record(self.host.peer_id, rev, status, reason)
        await self.host.spread.report(rev, head.digest, status, reason)

    def reported(self, peer: str, report: wire.Report) -> None:
        r = self.by_revision.get(report.revision)
        if r is not None and r.digest == report.digest:
            r.reports[peer] = (report.status, report.reason)
            self.notify()

    def failed_here(self, revision: Revision, reason: str) -> None:
        """This host could not apply it (Unit refused it): its own outcome for queries."""
        r = self.by_revision.get(revision)
        if r is not None:
            r.own = (FAILED, reason)
            r.reports[self.host.peer_id] = r.own
            self.notify()

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
        self.host.spawn(self._merge, msg)

    async def _merge(self, msg: wire.Wave, spread: bool = False) -> bool:
        """Take ``msg`` if it is later than what we know; ``spread``: we moved the rollout, so
        we flood it (one gossip and a push per connection). Receivers do not relay it again:
        the mover's flood reached the mesh, anti-entropy covers a host it missed."""
        r = self._rollout(msg.revision, msg.digest)
        if not later(msg, r.wave):
            return False
        r.wave = msg
        r.rounds_after_end = 0
        await self._save()
        self.notify()
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
            self.host.spawn(self.host.spread.push, peer, r.wave)

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
            self.host.spawn(self.host.spread.push, random.choice(peers), r.wave)

    # --- starting, driving, resuming, aborting ------------------------------------------------

    async def started(self, head: Head, plan: Plan) -> None:
        """This host published ``head`` with ``plan``: open wave 1, run its own gate, drive."""
        r = self._rollout(head.revision, head.digest)
        r.plan = plan
        await self.move(head.revision, OPEN, 1)
        self.applied(head)
        self.driver.start(head.revision)

    # --- a driver asks us ----------------------------------------------------------------

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
        await stream.send_all(self.host.spread.encode(ROLLOUT, answer))
        await stream.close_write()
        await stream.close()



__all__ = ["Rollouts"]
