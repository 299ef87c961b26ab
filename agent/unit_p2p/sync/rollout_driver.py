"""The driver of a staged rollout: opens the next wave when the current one applied and passed
its health gates, halts it (and reverts) past ``max_failures``; resume, abort and the status view.

It runs on the publisher, or on whichever trusted host resumed the rollout. Reports travel to the
revision's origin as for any revision; a host the driver has not heard from is asked directly
(``/unit-p2p/rollout/1.0.0``), so a driver on another host than the origin sees the wave too.
Only the current wave is waited for: a signed "wave k open" vouches that its signer saw waves 1 to
k-1 through (a host resuming after the publisher died need not hear from it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import trio

from unit_p2p.errors import MeshError, PublishRefused, SyncError, UnknownRevision
from unit_p2p.sync import wire
from unit_p2p.sync.convergence import APPLIED, FAILED
from unit_p2p.sync.revision import Revision
from unit_p2p.sync.waves import ABORTED, COMPLETE, HALTED, OPEN, TERMINAL, Rollout

log = logging.getLogger("unit_p2p.sync.rollout")

#: a driver asks the hosts of the current wave it has no report from this often (seconds, doubling
#: up to QUERY_MAX while none answers); the origin, to whom reports travel anyway, waits
#: ORIGIN_QUERY_AFTER before it asks the first time
QUERY_EVERY = 2.0
QUERY_MAX = 60.0
ORIGIN_QUERY_AFTER = 5.0
#: ``protocol`` label of the message counters for rollout queries
ROLLOUT = "rollout"


class Driver:
    """``rollouts`` is this host's record of rollouts (sync/rollout.py: ``by_revision``,
    ``changed``, ``move``, ``reported``, ``save``); ``host`` the reconciler, read-only but for
    ``publisher.rollback`` (a revert) and ``_spawn``."""

    def __init__(self, rollouts: Any, host: Any):
        self.rollouts = rollouts
        self.host = host
        self._running: set[Revision] = set()

    def start(self, rev: Revision) -> None:
        if rev not in self._running:
            self._running.add(rev)
            self.host.spawn(self._drive, rev)

    async def _drive(self, rev: Revision) -> None:
        try:
            await self._drive_until_done(rev)
        except (SyncError, MeshError) as exc:
            log.error("rollout %s: the driver stopped: %s", rev, exc)
        finally:
            self._running.discard(rev)
            self.rollouts.notify()

    async def _drive_until_done(self, rev: Revision) -> None:
        r = self.rollouts.by_revision[rev]
        assert r.plan is not None
        origin = rev.origin == self.host.peer_id
        # the first question after ORIGIN_QUERY_AFTER (the origin) or at once (anyone else),
        # then QUERY_EVERY apart, doubling up to QUERY_MAX while nobody new answers: a host
        # that is down is not dialled every 2 s for as long as the wave waits for it
        every = QUERY_EVERY
        next_ask = trio.current_time() + (ORIGIN_QUERY_AFTER if origin else 0.0)
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
                await self.rollouts.move(rev, HALTED, state.wave, why)
                if r.plan.auto_revert:
                    await self.revert(rev)
                return
            if not pending:
                if state.wave == len(r.plan.waves):
                    await self.rollouts.move(rev, COMPLETE, state.wave)
                    return
                await self.rollouts.move(rev, OPEN, state.wave + 1)
                every = QUERY_EVERY
                continue
            if trio.current_time() >= next_ask:
                await self.ask(r, pending)
                still = [p for p in pending if p not in r.reports]
                every = QUERY_EVERY if len(still) < len(pending) else min(every * 2, QUERY_MAX)
                next_ask = trio.current_time() + every
                continue
            with trio.move_on_after(max(0.0, next_ask - trio.current_time())):
                await self.rollouts.changed.wait()

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
        r = self.rollouts.by_revision[rev]
        r.reverted_by = str(result.revision)
        await self.rollouts.save()
        log.warning("rollout %s reverted: %s published again as %s", rev, target,
                    result.revision)
        return r.reverted_by

    async def resume(self, spec: str | None, next_wave: bool = False) -> Rollout:
        """Continue a rollout from this host: an open one is driven from its current wave (its
        driver may have died with its host); a halted one, or with ``next_wave`` an open one
        whose wave cannot finish (a host of it is gone), opens its next wave."""
        r = self._find(spec)
        if r.plan is None:
            raise UnknownRevision("unknown_rollout", f"this host does not hold the plan of "
                                  f"{r.revision} (its document was never fetched here)")
        state = r.wave
        assert state is not None
        if state.state in TERMINAL:
            raise PublishRefused("rollout_finished", f"rollout {r.revision} is {state.state}")
        if state.state == HALTED or next_wave:
            if state.wave == len(r.plan.waves):
                await self.rollouts.move(r.revision, COMPLETE, state.wave,
                                         "resumed past the last wave's failures or silence")
                return r
            await self.rollouts.move(r.revision, OPEN, state.wave + 1)
        self.start(r.revision)
        return r

    async def abort(self, spec: str | None, revert: bool) -> Rollout:
        r = self._find(spec)
        state = r.wave
        assert state is not None
        if state.state in TERMINAL:
            raise PublishRefused("rollout_finished", f"rollout {r.revision} is {state.state}")
        await self.rollouts.move(r.revision, ABORTED, state.wave, "aborted by an operator")
        if revert or (r.plan is not None and r.plan.auto_revert):
            await self.revert(r.revision)
        return r

    def _find(self, spec: str | None) -> Rollout:
        if spec in (None, "", "latest"):
            r = self.rollouts.latest()
            if r is None:
                raise UnknownRevision("unknown_rollout", "no staged rollout is known here")
            return r
        try:
            rev = Revision.parse(spec)
        except ValueError:
            matches = [r for r in self.rollouts.by_revision.values()
                       if str(r.revision.counter) == spec and r.wave is not None]
            if len(matches) != 1:
                raise UnknownRevision("unknown_rollout",
                                      f"no single staged rollout {spec!r} here") from None
            return matches[0]
        r = self.rollouts.by_revision.get(rev)
        if r is None or r.wave is None:
            raise UnknownRevision("unknown_rollout", f"no staged rollout {rev} known here")
        return r

    async def wait_done(self, rev: Revision, wait: bool, timeout: float) -> dict:
        """With ``wait``, until this host's driver of ``rev`` is done (the rollout is no longer
        open and, with auto-revert, the revert is published) or ``timeout``; then where it
        stands."""
        if wait:
            with trio.move_on_after(timeout):
                while rev in self._running:
                    await self.rollouts.changed.wait()
        return await self.view(str(rev), gather=False)

    # --- where it stands ---------------------------------------------------------------------

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
        data = await self.host.spread.ask(peer, wire.PROTO_ROLLOUT, ROLLOUT,
                                          wire.Query(self.host.mesh_name, r.revision))
        if data is None:
            return
        msg = self.host.admission.message(peer, data, ROLLOUT)
        if isinstance(msg, wire.Report) and msg.peer == peer and msg.revision == r.revision:
            self.rollouts.reported(peer, msg)
            self.host.convergence.record(peer, msg.revision, msg.status, msg.reason)

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
            "reverted_by": r.reverted_by, "driving": r.revision in self._running,
            "waves": self.tally(r) if r.plan else [],
        }
