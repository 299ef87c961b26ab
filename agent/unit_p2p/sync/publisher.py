"""Publishing: turn a config into a new revision of the mesh, and wait for the fleet to take it.

A publish runs the guards (too large, behind the mesh, a stale local config, a blank or shrunken
config), applies a given config to this host's Unit the way any host applies a revision (keeping
its host-local values), signs the new revision and hands it to spread. A rollback is a publish of
a kept document; a wait tallies the fleet's reports (sync/convergence.py). The reconciler owns the
state; this module only reads it and commits a new head through it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import trio

from unit_p2p.errors import PublishRefused, UnknownRevision
from unit_p2p.metrics import Metrics
from unit_p2p.settings import Settings
from unit_p2p.sync import changes, resources
from unit_p2p.sync.applier import Applier
from unit_p2p.sync.candidates import Candidates
from unit_p2p.sync.convergence import Convergence, PublishResult
from unit_p2p.sync.history import Revisions
from unit_p2p.sync.plan import Plan, PlanError, make_plan
from unit_p2p.sync.revision import (
    Document,
    Head,
    Revision,
    canonical_json,
    merge_exclusions,
    sign_revision,
)
from unit_p2p.sync.spread import Spread
from unit_p2p.sync.store import StateStore

log = logging.getLogger("unit_p2p.reconciler")


class PublishingHost(Protocol):
    """What a publish reads of the reconciler's state, and the one change it makes to it."""

    settings: Settings
    mesh_name: str
    exclusions: tuple[str, ...]
    peer_id: str
    private_key: Any
    mesh: Any
    trust: Any
    metrics: Metrics
    store: StateStore
    head: Head | None
    head_unit_digest: str | None
    last_error: dict | None
    applier: Applier
    candidates: Candidates
    convergence: Convergence
    revisions: Revisions
    spread: Spread
    rollouts: Any

    async def head_config(self) -> Any: ...
    async def commit_head(self, head: Head, doc: Document | None = None) -> None: ...


class Publisher:
    def __init__(self, host: PublishingHost):
        self.host = host

    async def publish(
        self,
        config: Any = None,
        *,
        certificates: dict[str, str | bytes] | None = None,
        js_modules: dict[str, str | bytes] | None = None,
        dry_run: bool = False,
        wait: bool = False,
        timeout: float = 30.0,
        min_peers: int | None = None,
        require_all: bool = True,
        force: bool = False,
        stages: Sequence[Any] | None = None,
        max_failures: int = 0,
        auto_revert: bool = False,
    ) -> PublishResult:
        """Publish the local Unit config (or ``config``, applied locally first) as a new revision.

        A given config is applied here the way any host applies a revision: this host keeps its
        own values at the excluded pointers. ``certificates`` / ``js_modules`` (NAME -> text)
        are checked here first (a bundle: PEM chain + the leaf's key, not expired) and travel
        with the revision, with the head's resources the config still refers to. Raises
        UnitUnreachable, RevisionRejected (Unit refused the config or a resource), BadDocument
        (not an object, a bad bundle or module) or PublishRefused (a guard; ``force`` passes
        the ones that protect the mesh from this host's stale state).

        ``stages`` (e.g. ``[1, "10%", "100%"]``) makes it a staged rollout (sync/rollout.py):
        the plan goes into the signed document, this host is the first host of wave 1, and
        ``max_failures`` / ``auto_revert`` say when to stop and whether to go back then.
        """
        host = self.host
        given = await trio.to_thread.run_sync(resources.given, certificates, js_modules,
                                              host.settings.max_config_bytes)
        async with host.applier.lock:
            local, local_digest = await host.applier.read()
            head_doc = host.applier.expected
            if config is None:
                # Unit names bundles NAME.<12 hex>: shared under the head's NAMEs again
                shared = await host.applier.shared(local)
            else:
                shared = await trio.to_thread.run_sync(
                    Document.from_config, merge_exclusions(config, local, host.exclusions),
                    host.exclusions)
            doc = self._with_resources(shared, given, head_doc)
            if doc.size > host.settings.max_config_bytes:
                raise PublishRefused("too_large", f"the config is {doc.size} bytes of canonical "
                                     f"JSON; max_config_bytes is {host.settings.max_config_bytes}"
                                     " here, and peers refuse what is larger than theirs")
            if config is None and not force:
                await self._refuse_stale_publish(local_digest)
            # What Unit would hold: the doc's config as Unit names it, this host's own values
            # at the excluded pointers. Differing from Unit (even in host-local parts) is a
            # change here, whether or not it makes a new mesh revision.
            target = merge_exclusions(
                resources.rename_certificates(doc.tree, resources.to_unit_names(
                    doc.certificates)), local, host.exclusions)
            local_change = await trio.to_thread.run_sync(_differ, target, local)
            # Behind a newer revision (forced, or a given config), even our head's digest is a
            # change: it must become the newest revision to win.
            changed = (host.head is None or doc.digest != host.head.digest
                       or host.candidates.max_seen > host.head.revision.counter)
            if changed and not force:
                # a blank config, or one without most of the head, is more often an accident
                # (a template rendered from an empty source) than a plan
                await trio.to_thread.run_sync(changes.check_publish, await host.head_config(),
                                              doc.tree, host.settings.max_removed_share)
            if dry_run:
                before = await host.head_config()
                return PublishResult(changed=changed or local_change, revision=None,
                                     digest=doc.digest, size=doc.size,
                                     before=before if before is not None else local,
                                     after=doc.tree, resources=doc.members)
            for digest, (data, secret) in given.blobs.items():
                await trio.to_thread.run_sync(
                    lambda d=digest, b=data, s=secret: host.store.save_blob(d, b, secret=s))
            if local_change or doc.blobs():
                # bundles and modules first (Unit checks each: a module is compiled here,
                # before any peer sees it), then the config
                await host.applier.move(doc, local, "publish", put=local_change)
            plan = None
            if changed and stages:
                plan = self._plan(stages, max_failures, auto_revert)
                doc = doc.with_members(**{**doc.members, "rollout": plan.to_json()})
            if changed:
                rev = Revision(host.candidates.max_seen + 1, host.peer_id)
                head = Head(rev, doc.digest, doc.size,
                            sign_revision(host.private_key, host.mesh_name, rev, doc.digest))
                before = await host.head_config()
                await trio.to_thread.run_sync(host.store.save_document, doc)
                await host.commit_head(head, doc)
                host.metrics.publishes.inc()
                log.info("published revision %s digest=%s size=%d", rev, doc.digest, doc.size)
            else:
                before = doc.tree
            assert host.head is not None
            head = host.head
        if plan is not None:
            # the first wave opens before the announcement goes out: its hosts apply at once
            await host.rollouts.started(head, plan)
        if changed:
            await host.spread.published(doc)
        result = PublishResult(changed=changed or local_change, revision=head.revision,
                               digest=head.digest,
                               size=head.size, before=before, after=doc.tree,
                               resources=doc.members)
        if plan is not None:
            result.rollout = await host.rollouts.driver.wait_done(head.revision, wait, timeout)
            wait = False  # the rollout's end is the wait; the tally below is where it stands
        await self._wait(result, wait, timeout, min_peers, require_all)
        return result

    def _plan(self, stages: Sequence[Any], max_failures: int, auto_revert: bool) -> Plan:
        """The waves of a staged publish, from the trusted peers this host knows."""
        try:
            return make_plan(stages, self.host.peer_id, self.wait_targets(),
                             max_failures=max_failures, auto_revert=auto_revert)
        except PlanError as exc:
            raise PublishRefused("bad_stages", str(exc)) from None

    @staticmethod
    def _with_resources(shared: Document, given: resources.Given,
                        head_doc: Document | None) -> Document:
        """``shared`` with the given resources and the head's that it still refers to. Raises
        PublishRefused when the config refers to a bundle or module the revision lacks: every
        peer's Unit would refuse it."""
        members = {}
        for kind, refs, given_entries in (
                (resources.CERTIFICATES, resources.certificate_refs(shared.tree),
                 given.certificates),
                (resources.JS_MODULES, resources.js_module_refs(shared.tree), given.js_modules)):
            head_entries = head_doc.members.get(kind, {}) if head_doc is not None else {}
            members[kind] = resources.carried(kind, given_entries, head_entries, refs)
            missing = sorted(refs - set(members[kind]))
            if missing:
                what = "certificate" if kind == resources.CERTIFICATES else "JS module"
                flag = "--certificate" if kind == resources.CERTIFICATES else "--js-module"
                raise PublishRefused(
                    f"missing_{what.lower().replace(' ', '_')}",
                    f"the config refers to {what} {', '.join(missing[:5])}, which this "
                    f"revision does not carry and no peer's Unit would have: give it "
                    f"({flag} NAME=FILE, the API's {kind}) or drop the reference")
        return shared.with_members(**members)

    async def _refuse_stale_publish(self, local_digest: str) -> None:
        """Publishing what this host's Unit holds is wrong when that is older than the mesh:
        it would roll every host back. Raises PublishRefused naming what is newer."""
        host = self.host
        head = host.head
        newer = [r for r in host.candidates.pending() if head is None or r > head.revision]
        if newer:
            raise PublishRefused(
                "behind_mesh", f"this host is at {head.revision if head else 'no revision'} "
                f"but the mesh has {max(newer)}, not applied here yet; publishing this host's "
                "config would undo it (wait for it to apply, or force)")
        if head is not None and host.candidates.max_seen > head.revision.counter:
            raise PublishRefused(
                "behind_mesh", f"this host is at {head.revision} but the mesh has reached "
                f"counter {host.candidates.max_seen} (this host could not apply it: "
                f"{(host.last_error or {}).get('detail', 'see status')}); publishing this "
                "host's config would undo it (force to do so on purpose)")
        if head is not None and local_digest != host.applier.expected_digest and \
                await trio.to_thread.run_sync(host.store.holds_config, local_digest):
            raise PublishRefused(
                "stale_config", f"Unit holds {local_digest}, the config of an older revision, "
                f"not the head {head.revision}; publishing it would roll the mesh back "
                "(force to do so on purpose)")

    async def rollback(self, revision: str | None = None,
                       **options: Any) -> tuple[str, PublishResult]:
        """Publish the kept document of ``revision`` (History.find: COUNTER@PEER_ID, COUNTER;
        None is the revision before the head in this host's history) as a new revision, so
        every host, a late one too, moves forward to it and never back to what came between.
        ``options`` are publish's. Returns the revision rolled back to and the publish's
        result. Raises UnknownRevision and whatever publish raises."""
        entry, doc = await self.host.revisions.kept(revision)
        texts = {}
        for kind in resources.KINDS:
            texts[kind] = {}
            for name, e in doc.members.get(kind, {}).items():
                held = await trio.to_thread.run_sync(self.host.store.load_blob, e["digest"])
                if held is None:
                    raise UnknownRevision("unknown_revision", f"the {kind} {name} of revision "
                                          f"{entry.revision} is no longer kept here")
                texts[kind][name] = held[0]
        return entry.revision, await self.publish(doc.tree, **texts, **options)

    async def wait_revision(self, revision: Revision, *, timeout: float,
                            min_peers: int | None = None,
                            require_all: bool = True) -> PublishResult:
        """Where a revision stands in the mesh, waiting up to ``timeout`` for it to converge.
        Raises UnknownRevision for one newer than the head that nobody ever announced here."""
        host = self.host
        head = host.head
        if head is not None and head.revision == revision:
            digest, size = head.digest, head.size
        else:
            cand = host.candidates.get(revision)
            digest, size = (cand.head.digest, cand.head.size) if cand else ("", 0)
            if (cand is None and (head is None or revision > head.revision)
                    and revision not in host.candidates.failed
                    and not host.convergence.reports.get(revision)):
                raise UnknownRevision("unknown_revision", f"no peer announced {revision} here")
        result = PublishResult(changed=False, revision=revision, digest=digest, size=size)
        await self._wait(result, True, timeout, min_peers, require_all)
        return result

    def wait_targets(self) -> set[str]:
        """The peers a publisher waits for: every trusted peer it knows of."""
        host = self.host
        known = {p.peer_id for p in host.mesh.peers() if host.trust.is_trusted(p.peer_id)}
        known |= set(host.settings.trusted_peers)
        known |= {p for p in host.candidates.peer_heads if host.trust.is_trusted(p)}
        return known

    async def _wait(self, result: PublishResult, wait: bool, timeout: float,
                    min_peers: int | None, require_all: bool) -> None:
        host = self.host
        await host.convergence.wait(
            result, wait=wait, timeout=timeout, min_peers=min_peers, require_all=require_all,
            mine=lambda: host.head.revision if host.head else None,
            peer_heads=host.candidates.peer_heads)


def _differ(a: Any, b: Any) -> bool:
    """Do two configs differ as JSON (not as Python values: ``True == 1`` there)? Canonical
    forms of a big config take a good part of a second: called off the trio loop."""
    return canonical_json(a) != canonical_json(b)
