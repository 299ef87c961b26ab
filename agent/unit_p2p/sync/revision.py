"""Revisions, digests and signed heads: the vocabulary of convergence.

A revision is ``(counter, origin peer id)``, totally ordered by counter, then origin, so two
agents publishing at once still agree on one winner everywhere. The shared document is Unit's
``/config`` with the host-local exclusions removed, or, when the revision carries resources
(certificate bundles, JS modules), an envelope holding that config and the resources' manifest;
its digest is the sha256 of its canonical JSON, so the same document has the same digest on every
host whatever key order Unit returned.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import total_ordering
from typing import Any

import rfc8785

from unit_p2p.errors import BadDocument
from unit_p2p.jsonstrict import unique_keys
from unit_p2p.sync import plan, resources
from unit_p2p.sync.resources import DIGEST_RE as DIGEST_RE

_REVISION_RE = re.compile(r"^(\d{1,18})@([1-9A-HJ-NP-Za-km-z]{30,100})$")


@total_ordering
@dataclass(frozen=True)
class Revision:
    counter: int
    origin: str

    def __str__(self) -> str:
        return f"{self.counter}@{self.origin}"

    def _key(self) -> tuple[int, bytes]:
        return (self.counter, self.origin.encode())

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Revision):
            return NotImplemented
        return self._key() < other._key()

    @classmethod
    def parse(cls, text: str) -> Revision:
        m = _REVISION_RE.match(text) if isinstance(text, str) else None
        if m is None:
            raise ValueError(f"not a revision: {text!r} (expected COUNTER@PEER_ID)")
        return cls(int(m.group(1)), m.group(2))


def canonical_json(doc: Any) -> bytes:
    """One byte string per JSON value: RFC 8785, the JSON Canonicalization Scheme (keys sorted
    by UTF-16 code units, ECMAScript number formatting, minimal escapes, UTF-8), so any
    implementation can recompute a digest (docs/sync.md has test vectors).

    Raises BadDocument("not_canonical") for what JCS cannot represent exactly: integers beyond
    +-(2**53 - 1), non-finite floats, lone surrogates.
    """
    if _plain(doc):
        # The C encoder with sorted keys writes exactly JCS's bytes when no float needs
        # ECMAScript's number format and no key sorts differently by UTF-16 code units than by
        # code points (only keys beyond U+FFFF do): 3-5x faster on a big Unit config, which the
        # Unit watch hashes on every poll.
        try:
            return json.dumps(doc, sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise BadDocument("not_canonical", "the config has no canonical JSON form: a "
                              "string holds a lone surrogate") from None
    try:
        return rfc8785.dumps(doc)
    except rfc8785.CanonicalizationError as exc:
        raise BadDocument("not_canonical",
                          f"the config has no canonical JSON form: {exc}") from None


#: JSON numbers are IEEE doubles in JCS: integers beyond this are not exact there
_SAFE_INT = 2 ** 53 - 1


def _plain(doc: Any) -> bool:
    """True when ``json.dumps(sort_keys=True)`` writes JCS's bytes for ``doc``."""
    stack = [doc]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is dict:
            for key, value in node.items():
                if key and max(key) > "\uffff":
                    return False
                stack.append(value)
        elif kind is list:
            stack.extend(node)
        elif kind is float or (kind is int and not -_SAFE_INT <= node <= _SAFE_INT):
            return False
    return True


def digest_of_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- host-local exclusions (RFC 6901 JSON pointers) -------------------------------------------


def _split_pointer(pointer: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]


def _lookup_parent(doc: Any, parts: list[str]) -> tuple[Any, str | int] | None:
    """The container holding the pointed-to value and the key in it, or None if absent."""
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    last = parts[-1]
    if isinstance(node, dict) and last in node:
        return node, last
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        return node, int(last)
    return None


def strip_exclusions(doc: Any, exclusions: tuple[str, ...]) -> Any:
    """A copy of ``doc`` without the host-local parts: what is shared, digested and sent."""
    if not exclusions:
        return doc
    out = copy.deepcopy(doc)
    # Longest pointers first so removing an array element cannot shift a later pointer.
    for pointer in sorted(exclusions, key=lambda p: (-p.count("/"), p), reverse=False):
        found = _lookup_parent(out, _split_pointer(pointer))
        if found is not None:
            container, key = found
            del container[key]
    return out


def merge_exclusions(shared: Any, local: Any, exclusions: tuple[str, ...]) -> Any:
    """The config to apply on this host: ``shared`` with this host's own values at the exclusions.

    Where the local config has no value at an excluded pointer, the shared document has none
    either (it was stripped), so the result has none: a host-local part is never invented.
    """
    if not exclusions:
        return shared
    return with_excluded_values(shared, excluded_values(local, exclusions))


def excluded_values(local: Any, exclusions: tuple[str, ...]) -> dict[str, Any]:
    """This host's values at the excluded pointers (absent ones left out)."""
    values = {}
    for pointer in exclusions:
        found = _lookup_parent(local, _split_pointer(pointer))
        if found is not None:
            container, key = found
            values[pointer] = container[key]
    return values


def with_excluded_values(shared: Any, values: dict[str, Any]) -> Any:
    """A copy of ``shared`` holding ``values`` (pointer -> value) at their pointers."""
    out = copy.deepcopy(shared)
    for pointer in sorted(values, key=lambda p: p.count("/")):
        parts = _split_pointer(pointer)
        value = copy.deepcopy(values[pointer])
        node = out
        for part in parts[:-1]:
            if isinstance(node, dict):
                node = node.setdefault(part, {})
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                break
        else:
            if isinstance(node, dict):
                node[parts[-1]] = value
            elif isinstance(node, list) and parts[-1].isdigit():
                idx = int(parts[-1])
                if idx < len(node):
                    node[idx] = value
                else:
                    node.append(value)
    return out


#: the member that makes a document an envelope. Unit refuses unknown top-level members of
#: /config, so no Unit config has it: a document is an envelope exactly when it holds this key.
ENVELOPE_MARK = "unit-p2p"
ENVELOPE_VERSION = 1
#: the optional members of an envelope besides ``config``: name -> schema check (raises
#: BadDocument). Each is present only when not empty; another member is one more line here.
ENVELOPE_MEMBERS: dict[str, Callable[[Any], None]] = {
    resources.CERTIFICATES: resources.check_certificates,
    resources.JS_MODULES: resources.check_js_modules,
    "rollout": plan.check_rollout,
}


@dataclass(frozen=True)
class Document:
    """A revision's document: the shared config (``tree``), the bytes that travel, the digest.

    A revision without resources is exactly the stripped config, as it always was. One with
    resources is an envelope, ``{"unit-p2p": 1, "config": {...}, "certificates": {...},
    "js_modules": {...}}`` (``members`` holds the members besides the config), digested as a
    whole, so the origin's signature covers the manifest, and through each entry's digest every
    bundle and module. ``config_digest`` is the digest of the config alone: what Unit holding
    this document hashes to (the applier's read-back, drift, the stale-publish guard).

    The bytes keep the publisher's key order (Unit returns keys in the order they were written,
    and operators read that order); the digest is over the canonical form, so it does not depend
    on key order and every receiver recomputes it from what it parsed.
    """

    tree: dict
    data: bytes
    digest: str
    config_digest: str = ""
    members: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.config_digest:
            object.__setattr__(self, "config_digest", self.digest)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def is_envelope(self) -> bool:
        return bool(self.members)

    @property
    def certificates(self) -> dict:
        return self.members.get(resources.CERTIFICATES, {})

    @property
    def js_modules(self) -> dict:
        return self.members.get(resources.JS_MODULES, {})

    def blobs(self) -> dict[str, tuple[str, str, int]]:
        """digest -> (kind, NAME, size) of every resource's bytes."""
        return {e["digest"]: (kind, name, e["size"])
                for kind in resources.KINDS
                for name, e in self.members.get(kind, {}).items()}

    @classmethod
    def from_config(cls, config: Any, exclusions: tuple[str, ...]) -> Document:
        if not isinstance(config, dict):
            raise BadDocument("not_an_object",
                              f"a Unit config is a JSON object, got {type(config).__name__}")
        shared = strip_exclusions(config, exclusions)
        data = json.dumps(shared, separators=(",", ":"), ensure_ascii=False).encode()
        return cls(shared, data, digest_of_bytes(canonical_json(shared)))

    def with_members(self, **members: Any) -> Document:
        """This document's config with ``members`` (empty ones left out): an envelope, or the
        plain config when no member is left. Raises BadDocument for a member that fails its
        check."""
        kept = {k: v for k, v in members.items() if v}
        for name, value in kept.items():
            if name not in ENVELOPE_MEMBERS:
                raise BadDocument("bad_document", f"no envelope member {name!r}")
            ENVELOPE_MEMBERS[name](value)
        if not kept:
            if not self.members:
                return self
            data = json.dumps(self.tree, separators=(",", ":"), ensure_ascii=False).encode()
            return Document(self.tree, data, self.config_digest)
        envelope = {ENVELOPE_MARK: ENVELOPE_VERSION, "config": self.tree, **kept}
        data = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
        return Document(self.tree, data, digest_of_bytes(canonical_json(envelope)),
                        self.config_digest, kept)

    @classmethod
    def from_bytes(cls, data: bytes, expected_digest: str) -> Document:
        """Parse a served document and verify it against the digest it was announced with."""
        # Duplicate keys would make two readers see two different documents under one digest.
        try:
            tree = json.loads(data, object_pairs_hook=unique_keys)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise BadDocument("bad_document", f"served document is not JSON: {exc}") from None
        if not isinstance(tree, dict):
            raise BadDocument("not_an_object", "served document is not a JSON object")
        try:
            digest = digest_of_bytes(canonical_json(tree))
        except BadDocument as exc:
            raise BadDocument(exc.reason, f"served document: {exc.detail}") from None
        if digest != expected_digest:
            raise BadDocument("digest_mismatch",
                              f"served document has {digest}, announced {expected_digest}")
        if ENVELOPE_MARK not in tree:
            return cls(tree, bytes(data), digest)
        config, members = _open_envelope(tree)
        return cls(config, bytes(data), digest, digest_of_bytes(canonical_json(config)),
                   members)


def _open_envelope(envelope: dict) -> tuple[dict, dict]:
    """The config and the members of an envelope, checked. Raises BadDocument."""
    version = envelope[ENVELOPE_MARK]
    if type(version) is not int or version != ENVELOPE_VERSION:
        raise BadDocument("bad_document", f"envelope version {str(version)[:20]} is not "
                          f"{ENVELOPE_VERSION} (an agent of another version published it)")
    unknown = set(envelope) - {ENVELOPE_MARK, "config"} - set(ENVELOPE_MEMBERS)
    if unknown:
        raise BadDocument("bad_document", "envelope members unknown here: "
                          + ", ".join(sorted(k[:40] for k in unknown)[:5]))
    config = envelope.get("config")
    if not isinstance(config, dict):
        raise BadDocument("not_an_object", "the envelope's config is not a JSON object")
    members = {k: v for k, v in envelope.items() if k in ENVELOPE_MEMBERS}
    if not members:
        # one config, one document: a config without resources is never wrapped
        raise BadDocument("bad_document", "an envelope without members")
    for name, value in members.items():
        ENVELOPE_MEMBERS[name](value)
    return config, members


def signing_payload(mesh: str, revision: Revision, digest: str) -> bytes:
    # Domain-separated so a signature made for one mesh or purpose cannot be replayed as another.
    return f"unit-p2p/revision/v1\n{mesh}\n{revision}\n{digest}".encode()


@dataclass(frozen=True)
class Head:
    """A signed revision: what an agent has applied, and what it announces."""

    revision: Revision
    digest: str
    size: int
    signature: bytes

    def to_json(self) -> dict:
        return {
            "revision": str(self.revision),
            "counter": self.revision.counter,
            "origin": self.revision.origin,
            "digest": self.digest,
            "size": self.size,
            "signature": base64.b64encode(self.signature).decode(),
        }


def sign_revision(private_key: Any, mesh: str, revision: Revision, digest: str) -> bytes:
    return private_key.sign(signing_payload(mesh, revision, digest))


def verify_revision(mesh: str, revision: Revision, digest: str, signature: bytes) -> bool:
    """True when ``signature`` is the origin's own signature over (mesh, revision, digest).

    The origin's Ed25519 public key is inlined in its peer id, so no key exchange is needed and a
    relayer cannot substitute its own key.
    """
    from libp2p.peer.id import ID

    try:
        public_key = ID.from_base58(revision.origin).extract_public_key()
    except Exception:  # malformed base58/multihash from the wire: not verifiable
        return False
    if public_key is None:
        return False
    try:
        return bool(public_key.verify(signing_payload(mesh, revision, digest), signature))
    except Exception:  # the crypto backend raises on malformed signatures
        return False
