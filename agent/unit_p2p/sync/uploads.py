"""What Unit holds of a document's resources: uploads its certificate bundles (under their
content-derived names) and JS modules, and deletes those this agent uploaded that a newer head no
longer names. The config that names them is the applier's job (sync/applier.py), which calls
this before and after its PUT.

The agent deletes only what it uploaded itself (``state_dir/unit_resources.json``): a bundle or
module put into Unit by hand is left alone. Unit refuses to overwrite either and to delete one in
use, so a refusal to delete after an apply is logged and tried again after the next apply.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from unit_p2p.errors import RevisionRejected, UnitPathNotFound, UnitRejected
from unit_p2p.sync.resources import (
    CERTIFICATES,
    JS_MODULES,
    to_unit_names,
    unit_certificate_name,
)
from unit_p2p.sync.revision import Document, digest_of_bytes
from unit_p2p.sync.store import StateStore
from unit_p2p.unit.client import unit_path

log = logging.getLogger("unit_p2p.sync.applier")


def unit_reason(exc: UnitRejected) -> str:
    """Unit's own words for a refusal (never the body sent: a bundle holds a private key)."""
    return " ".join(p for p in (exc.error, exc.detail) if p) or f"status {exc.status}"


class Uploads:
    def __init__(self, unit: Any, store: StateStore):
        self.unit = unit
        self.store = store
        #: the certificates and modules this agent uploaded (store.load_unit_resources)
        self._uploads: dict[str, list[str]] | None = None

    async def _listing(self, path: str, kind: str, doc: Document) -> dict:
        try:
            held = await self.unit.get(path)
        except UnitPathNotFound:
            raise RevisionRejected(
                "unit_rejected", f"{kind} {', '.join(sorted(doc.members[kind]))}: this Unit "
                f"has no {path} (built without {'TLS' if kind == CERTIFICATES else 'njs'})"
            ) from None
        return held if isinstance(held, dict) else {}

    async def blob(self, kind: str, name: str, digest: str) -> bytes:
        held = await trio.to_thread.run_sync(self.store.load_blob, digest)
        if held is None:
            raise RevisionRejected("resource_missing", f"{kind[:-1].replace('_', ' ')} {name}: "
                                   f"its bytes ({digest}) are not held here")
        return held[0]

    async def _mine(self) -> dict[str, list[str]]:
        """What this agent uploaded to its Unit (read from the state dir once)."""
        if self._uploads is None:
            self._uploads = await trio.to_thread.run_sync(self.store.load_unit_resources)
        return self._uploads

    async def _uploaded(self, kind: str, name: str, add: bool = True) -> None:
        """Record that this agent uploaded (or deleted) ``name``: it deletes only its own."""
        names = await self._mine()
        names[kind] = [n for n in names[kind] if n != name] + ([name] if add else [])
        await trio.to_thread.run_sync(self.store.save_unit_resources, names)

    async def upload_certificates(self, doc: Document) -> None:
        """Upload each bundle of ``doc`` that Unit lacks, under its content-derived name."""
        if not doc.certificates:
            return
        held = await self._listing("/certificates", CERTIFICATES, doc)
        for name, entry in sorted(doc.certificates.items()):
            unit_name = unit_certificate_name(name, entry["digest"])
            if unit_name in held:
                continue
            data = await self.blob(CERTIFICATES, name, entry["digest"])
            try:
                await self.unit.put_raw(unit_path("certificates", unit_name), data)
            except UnitRejected as exc:
                if exc.error == "Certificate already exists.":
                    continue  # uploaded since the listing: same name, same content
                raise RevisionRejected(
                    "unit_rejected", f"certificate {name} (as {unit_name}): Unit refused it: "
                    f"{unit_reason(exc)}") from None
            await self._uploaded(CERTIFICATES, unit_name)
            log.info("uploaded certificate %s as %s", name, unit_name)

    async def upload_js_modules(self, doc: Document) -> dict[str, str]:
        """Upload each module of ``doc`` that Unit lacks; returns the modules Unit holds with
        other text (NAME -> the old text): the applier swaps those (``_swap_js_modules``)."""
        if not doc.js_modules:
            return {}
        held = await self._listing("/js_modules", JS_MODULES, doc)
        swap = {}
        for name, entry in sorted(doc.js_modules.items()):
            if name in held:
                old = held[name]
                if isinstance(old, str) and digest_of_bytes(
                        old.encode("utf-8", "surrogateescape")) != entry["digest"]:
                    swap[name] = old
                continue
            await self.put_js_module(name, await self.blob(JS_MODULES, name, entry["digest"]))
        return swap

    async def put_js_module(self, name: str, data: bytes) -> None:
        try:
            await self.unit.put_raw(unit_path("js_modules", name), data)
        except UnitRejected as exc:
            raise RevisionRejected("unit_rejected", f"JS module {name}: Unit refused it: "
                                   f"{unit_reason(exc)}") from None
        await self._uploaded(JS_MODULES, name)
        log.info("uploaded JS module %s", name)

    async def delete(self, kind: str, unit_name: str, *, strict: bool) -> bool:
        """Delete a certificate or module from Unit. Returns whether it is gone; ``strict``
        raises RevisionRejected when Unit refuses, else a refusal is logged (in use by a
        host-local part of the config, say) and the next apply tries again."""
        path = unit_path("certificates" if kind == CERTIFICATES else "js_modules", unit_name)
        try:
            await self.unit.delete(path)
        except UnitPathNotFound:
            pass
        except UnitRejected as exc:
            what = "certificate" if kind == CERTIFICATES else "JS module"
            if strict:
                raise RevisionRejected("unit_rejected", f"{what} {unit_name}: Unit refused "
                                       f"to delete it: {unit_reason(exc)}") from None
            log.warning("%s %s is no longer in the head but Unit keeps it: %s", what,
                        unit_name, unit_reason(exc))
            return False
        await self._uploaded(kind, unit_name, add=False)
        return True

    async def delete_unused(self, doc: Document) -> None:
        """Delete what this agent uploaded that ``doc`` no longer names."""
        mine = await self._mine()
        keep = {CERTIFICATES: set(to_unit_names(doc.certificates).values()),
                JS_MODULES: set(doc.js_modules)}
        for kind in (CERTIFICATES, JS_MODULES):
            for name in sorted(set(mine[kind]) - keep[kind]):  # a copy: _delete edits it
                if await self.delete(kind, name, strict=False):
                    log.info("deleted %s %s from Unit (no longer in the head)",
                             kind[:-1].replace("_", " "), name)
