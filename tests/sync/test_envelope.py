"""A revision with resources is an envelope; one without stays exactly Unit's config."""

from __future__ import annotations

import json
import os

import pytest

from unit_p2p.errors import BadDocument
from unit_p2p.sync.revision import ENVELOPE_MARK, Document, canonical_json, digest_of_bytes
from unit_p2p.sync.store import StateStore

CONFIG = {"listeners": {"*:443": {"pass": "routes", "tls": {"certificate": "site"}}},
          "routes": [{"action": {"return": 200}}]}
CERT = {"digest": "sha256:" + "1" * 64, "size": 1200, "subject": "CN=www.example.com",
        "issuer": "CN=Example CA", "not_before": "2026-01-01T00:00:00Z",
        "not_after": "2027-01-01T00:00:00Z", "fingerprint": "sha256:" + "2" * 64}
MODULE = {"digest": "sha256:" + "3" * 64, "size": 40}


def envelope() -> Document:
    return Document.from_config(CONFIG, ()).with_members(certificates={"site": CERT},
                                                         js_modules={"auth": MODULE})


def test_a_config_without_resources_is_the_config_itself():
    plain = Document.from_config(CONFIG, ())
    assert plain.with_members(certificates={}, js_modules=None) is plain
    assert json.loads(plain.data) == CONFIG
    assert plain.digest == plain.config_digest == digest_of_bytes(canonical_json(CONFIG))
    assert not plain.is_envelope and plain.certificates == {} and plain.blobs() == {}


def test_an_envelope_digests_config_and_manifest():
    doc = envelope()
    body = json.loads(doc.data)
    assert body[ENVELOPE_MARK] == 1 and body["config"] == CONFIG
    assert doc.digest == digest_of_bytes(canonical_json(body))
    assert doc.config_digest == Document.from_config(CONFIG, ()).digest != doc.digest
    again = Document.from_bytes(doc.data, doc.digest)
    assert again == doc and again.tree == CONFIG
    assert again.blobs() == {CERT["digest"]: ("certificates", "site", 1200),
                             MODULE["digest"]: ("js_modules", "auth", 40)}
    # any change of a bundle changes the digest the origin signs
    other = Document.from_config(CONFIG, ()).with_members(
        certificates={"site": {**CERT, "digest": "sha256:" + "4" * 64}})
    assert other.digest != doc.digest


def _served(body: dict) -> Document:
    data = json.dumps(body).encode()
    return Document.from_bytes(data, digest_of_bytes(canonical_json(body)))


@pytest.mark.parametrize("body, why", [
    ({ENVELOPE_MARK: 1, "config": CONFIG}, "without members"),
    ({ENVELOPE_MARK: 2, "config": CONFIG, "js_modules": {"auth": MODULE}}, "version"),
    ({ENVELOPE_MARK: True, "config": CONFIG, "js_modules": {"auth": MODULE}}, "version"),
    ({ENVELOPE_MARK: 1, "config": [], "js_modules": {"auth": MODULE}}, "not a JSON object"),
    ({ENVELOPE_MARK: 1, "config": CONFIG, "js_modules": {"auth": MODULE}, "x": 1}, "unknown"),
    ({ENVELOPE_MARK: 1, "config": CONFIG, "js_modules": {}}, "non-empty"),
    ({ENVELOPE_MARK: 1, "config": CONFIG, "js_modules": {"../x": MODULE}}, "name"),
    ({ENVELOPE_MARK: 1, "config": CONFIG, "js_modules": {"a": {**MODULE, "size": 0}}},
     "size"),
    ({ENVELOPE_MARK: 1, "config": CONFIG, "js_modules": {"a": {**MODULE, "key": "x"}}},
     "exactly"),
    ({ENVELOPE_MARK: 1, "config": CONFIG,
      "certificates": {"s": {**CERT, "not_after": "soon"}}}, "not_after"),
    ({ENVELOPE_MARK: 1, "config": CONFIG,
      "certificates": {"s": {**CERT, "digest": "md5:00"}}}, "digest"),
])
def test_a_malformed_envelope_is_refused(body, why):
    with pytest.raises(BadDocument, match=why):
        _served(body)


def test_blobs_are_private_verified_and_pruned_with_their_documents(tmp_path, monkeypatch):
    import hashlib

    from unit_p2p.sync import store as store_module

    store = StateStore(tmp_path / "state", keep=1)
    bundle = b"-----BEGIN CERTIFICATE-----\n...\n"
    digest = "sha256:" + hashlib.sha256(bundle).hexdigest()
    with pytest.raises(ValueError):
        store.save_blob("sha256:" + "0" * 64, bundle, secret=True)
    store.save_blob(digest, bundle, secret=True)
    path = store.secrets / digest[7:]
    assert os.stat(store.secrets).st_mode & 0o777 == 0o700
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert store.load_blob(digest) == (bundle, True) and store.has_blob(digest)
    doc = Document.from_config(CONFIG, ()).with_members(
        certificates={"site": {**CERT, "digest": digest, "size": len(bundle)}})
    store.save_document(doc)
    assert store.holds_config(doc.config_digest) and not store.holds_config(CERT["digest"])
    monkeypatch.setattr(store_module, "BLOB_GRACE", -1.0)
    store.save_document(Document.from_config({"routes": []}, ()))  # keep=1: doc pruned
    assert store.load_blob(digest) is None
    path.write_bytes(b"x")  # a corrupt blob is as good as none
    assert store.load_blob(digest) is None
