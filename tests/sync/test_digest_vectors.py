"""The digest test vectors published in docs/sync.md hold for this code (RFC 8785, JCS)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unit_p2p.errors import SyncError
from unit_p2p.sync.revision import Document, canonical_json, digest_of_bytes

DOC = Path(__file__).resolve().parents[2] / "docs" / "sync.md"


def vectors() -> list[dict]:
    text = DOC.read_text()
    block = text.split("<!-- jcs-vectors -->", 1)[1].split("<!-- /jcs-vectors -->", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("{")]
    assert len(lines) >= 4
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("vector", vectors(), ids=lambda v: v["digest"][7:15])
def test_published_vector(vector):
    doc = json.loads(vector["input"])
    canonical = canonical_json(doc)
    assert canonical == vector["canonical"].encode("utf-8")
    assert digest_of_bytes(canonical) == vector["digest"]
    assert Document.from_config(doc, ()).digest == vector["digest"]
    assert Document.from_bytes(vector["input"].encode(), vector["digest"]).digest == \
        vector["digest"]


def test_floats_and_non_bmp_keys_differ_from_sorted_keys_json():
    # What the digest was before: Python's sort_keys order and float formatting.
    doc = {"\U0001F600": 1, "\uffff": 2, "w": 1.0}
    plain = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert canonical_json(doc) != plain
    assert canonical_json(doc) == '{"w":1,"\U0001F600":1,"\uffff":2}'.encode()


def test_integers_jcs_cannot_represent_are_refused():
    with pytest.raises(SyncError, match="not_canonical"):
        Document.from_config({"n": 2**60}, ())
