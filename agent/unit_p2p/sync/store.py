"""The agent's state on disk: its head and the last K configs it applied.

Layout under ``state_dir``::

    head.json            the applied head (revision, digest, size, origin signature), max counter
    configs/<hex>.json   shared documents by digest, the last K kept
    blobs/<hex>          JS modules the kept documents name, by the sha256 of their bytes
    secrets/<hex>        certificate bundles (with their private keys) the same way
    unit_resources.json  the certificates and JS modules this agent uploaded to its Unit
    backups/<ts>-*.json  this host's full Unit config before each apply, the last K kept
    last_error.json           the last failed revision and why (shown by status)

Every write is atomic (temp file, fsync, rename, fsync of the directory), so a SIGKILL at any
point leaves either the old or the new file, never a torn one. Directories are 0700 and files
0600: the bundles hold private keys.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path

from unit_p2p.fsutil import atomic_write
from unit_p2p.sync.revision import DIGEST_RE, Document, Head, Revision

#: seconds a blob no kept document names is kept anyway (see _prune_blobs)
BLOB_GRACE = 600.0


class StateStore:
    """Blocking file operations: the reconciler calls them through ``trio.to_thread``."""

    def __init__(self, state_dir: Path, keep: int = 10):
        self.dir = Path(state_dir)
        self.keep = max(1, keep)
        self.configs = self.dir / "configs"
        self.backups = self.dir / "backups"
        self.blobs = self.dir / "blobs"
        self.secrets = self.dir / "secrets"
        for d in (self.dir, self.configs, self.backups, self.blobs, self.secrets):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        for d in (self.blobs, self.secrets):
            d.chmod(0o700)  # whatever the umask made of them
        #: digest -> (config digest, digests of its blobs) of documents read or written: what
        #: never changes under a digest, so each kept document is parsed once for it
        self._meta: dict[str, tuple[str, frozenset[str]]] = {}

    # --- head ---------------------------------------------------------------------------------

    def load_head(self) -> tuple[Head | None, int, float | None]:
        """(head, max counter seen, applied_at); a missing or unreadable head is 'no head'."""
        try:
            raw = json.loads((self.dir / "head.json").read_bytes())
            max_seen = int(raw.get("max_seen", 0))
            if raw.get("head") is None:
                return None, max_seen, None
            h = raw["head"]
            head = Head(Revision.parse(h["revision"]), h["digest"], int(h["size"]),
                        base64.b64decode(h["signature"]))
            if not DIGEST_RE.match(head.digest) or not self.has_document(head.digest):
                return None, max_seen, None
            return head, max(max_seen, head.revision.counter), raw.get("applied_at")
        except FileNotFoundError:
            return None, 0, None
        except (ValueError, KeyError, TypeError):
            # A head we cannot read is treated as none; the mesh will hand us the current one.
            return None, 0, None

    def save_head(self, head: Head | None, max_seen: int, applied_at: float | None) -> None:
        body = {"head": head.to_json() if head else None, "max_seen": max_seen,
                "applied_at": applied_at}
        atomic_write(self.dir / "head.json", json.dumps(body, indent=1).encode())

    # --- documents by digest ------------------------------------------------------------------

    def _doc_path(self, digest: str) -> Path:
        if not DIGEST_RE.match(digest):
            raise ValueError(f"bad digest {digest!r}")
        return self.configs / f"{digest[7:]}.json"

    def has_document(self, digest: str) -> bool:
        return self._doc_path(digest).exists()

    def save_document(self, doc: Document, keep: str | None = None) -> None:
        """Store ``doc``; pruning to ``keep_configs`` never removes it, nor the document with
        the digest ``keep`` (the head, while a newer document waits to be applied)."""
        path = self._doc_path(doc.digest)
        if not path.exists():
            atomic_write(path, doc.data)
        else:
            os.utime(path)  # recently used: keeps it out of pruning
        self._meta[doc.digest] = (doc.config_digest, frozenset(doc.blobs()))
        protect = {path.name}
        if keep is not None:
            protect.add(self._doc_path(keep).name)
        self._prune(self.configs, protect=protect)
        self._prune_blobs()

    def load_document(self, digest: str) -> Document | None:
        """A held document, verified against its digest (a corrupt file is as good as none)."""
        try:
            data = self._doc_path(digest).read_bytes()
        except (FileNotFoundError, ValueError):
            return None
        try:
            doc = Document.from_bytes(data, digest)
        except Exception:
            return None
        self._meta[digest] = (doc.config_digest, frozenset(doc.blobs()))
        return doc

    def _kept_meta(self) -> dict[str, tuple[str, frozenset[str]]]:
        """The meta of every kept document (parsing those not seen yet)."""
        out = {}
        for path in self.configs.glob("*.json"):
            digest = "sha256:" + path.stem
            if digest not in self._meta and self.load_document(digest) is None:
                continue
            out[digest] = self._meta[digest]
        return out

    def holds_config(self, config_digest: str) -> bool:
        """Some kept document's config has this digest (an older revision's config)."""
        if DIGEST_RE.match(config_digest) and self.has_document(config_digest):
            return True
        return any(c == config_digest for c, _ in self._kept_meta().values())

    def load_document_bytes(self, digest: str) -> bytes | None:
        """The bytes of a held document, verified (what a pull serves)."""
        doc = self.load_document(digest)
        return doc.data if doc is not None else None

    # --- blobs: the bytes of resources, by digest ---------------------------------------------

    def _blob_path(self, digest: str, secret: bool) -> Path:
        if not DIGEST_RE.match(digest):
            raise ValueError(f"bad digest {digest!r}")
        return (self.secrets if secret else self.blobs) / digest[7:]

    def has_blob(self, digest: str) -> bool:
        return any(self._blob_path(digest, secret).exists() for secret in (False, True))

    def save_blob(self, digest: str, data: bytes, *, secret: bool) -> None:
        """Keep ``data`` (verified against ``digest``); ``secret``: a certificate bundle."""
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"blob bytes do not hash to {digest}")
        path = self._blob_path(digest, secret)
        if path.exists():
            os.utime(path)
        else:
            atomic_write(path, data)

    def load_blob(self, digest: str) -> tuple[bytes, bool] | None:
        """(bytes, secret) of a held blob, verified (a corrupt file is as good as none)."""
        for secret in (True, False):
            try:
                data = self._blob_path(digest, secret).read_bytes()
            except (FileNotFoundError, ValueError):
                continue
            if "sha256:" + hashlib.sha256(data).hexdigest() == digest:
                return data, secret
        return None

    def _prune_blobs(self) -> None:
        """Remove the blobs no kept document names. One younger than BLOB_GRACE is left: it
        may belong to a document being fetched or published right now, saved after its blobs."""
        held = [p for folder in (self.blobs, self.secrets) for p in folder.iterdir()
                if not p.name.startswith(".")]
        if not held:
            return  # nothing to prune: the kept documents need not be read
        named = set().union(*(blobs for _, blobs in self._kept_meta().values()))
        old = time.time() - BLOB_GRACE
        for path in held:
            if ("sha256:" + path.name) not in named and path.stat().st_mtime < old:
                path.unlink(missing_ok=True)

    def load_unit_resources(self) -> dict[str, list[str]]:
        """The names this agent uploaded to its Unit: {"certificates": [...], "js_modules":
        [...]}; only those it ever deletes."""
        try:
            raw = json.loads((self.dir / "unit_resources.json").read_bytes())
            return {k: [n for n in raw.get(k, []) if isinstance(n, str)]
                    for k in ("certificates", "js_modules")}
        except (FileNotFoundError, ValueError, AttributeError, TypeError):
            return {"certificates": [], "js_modules": []}

    def save_unit_resources(self, names: dict[str, list[str]]) -> None:
        atomic_write(self.dir / "unit_resources.json",
                     json.dumps({k: sorted(set(v)) for k, v in names.items()}).encode())

    # --- backups and errors -------------------------------------------------------------------

    def save_backup(self, config: object, label: str) -> Path:
        path = self.backups / f"{time.time_ns()}-{label}.json"
        # a record for the operator (the apply rolls back from memory): not worth a disk wait
        atomic_write(path, json.dumps(config).encode(), durable=False)
        self._prune(self.backups, protect={path.name})
        return path

    def save_last_error(self, error: dict | None) -> None:
        atomic_write(self.dir / "last_error.json", json.dumps(error).encode())

    def load_last_error(self) -> dict | None:
        try:
            value = json.loads((self.dir / "last_error.json").read_bytes())
            return value if isinstance(value, dict) else None
        except (FileNotFoundError, ValueError):
            return None

    def _prune(self, folder: Path, protect: set[str]) -> None:
        files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for old in files[self.keep:]:
            if old.name not in protect:
                old.unlink(missing_ok=True)
