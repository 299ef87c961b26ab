"""Fuzzing every wire decoder: no exception but WireError escapes, nothing outside the schema is
accepted. A few thousand inputs here; bench/fuzz_wire.py runs 100k."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings

from tests.sync.wire_strategies import DIGEST, any_input, check_accepted, valid_messages
from unit_p2p.errors import SyncError, WireError
from unit_p2p.sync import wire
from unit_p2p.sync.revision import Document, Revision

FUZZ = settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(any_input)
def test_decode_raises_only_wire_errors(data):
    try:
        msg = wire.decode(data)
    except WireError as exc:
        assert exc.reason in {"malformed", "schema", "too_large", "unsupported_version"}
        return
    check_accepted(msg)


@FUZZ
@given(any_input)
def test_decode_served_raises_only_wire_errors(data):
    try:
        body = wire.decode_served(data, DIGEST, 1 << 20)
    except WireError:
        return
    assert isinstance(body, bytes)


@FUZZ
@given(any_input)
def test_document_from_bytes_raises_only_sync_errors(data):
    try:
        doc = Document.from_bytes(data, DIGEST)
    except SyncError as exc:
        assert exc.reason in {"bad_document", "not_an_object", "digest_mismatch", "not_canonical"}
        return
    raise AssertionError(f"accepted a document that cannot match the digest: {doc}")


@FUZZ
@given(any_input)
def test_revision_parse_raises_only_value_error(data):
    try:
        rev = Revision.parse(data.decode("utf-8", "replace"))
    except ValueError:
        return
    assert Revision.parse(str(rev)) == rev


@pytest.mark.parametrize("msg", valid_messages())
def test_valid_messages_round_trip(msg):
    check_accepted(wire.decode(wire.encode(msg)))


def broadcast(size: int, body: bytes) -> bytes:
    """A broadcast whose header says ``size``, with ``body`` after it (however long)."""
    msg = next(m for m in valid_messages() if isinstance(m, wire.Broadcast))
    header = json.loads(wire.encode(msg).partition(b"\n")[0])
    return json.dumps({**header, "size": size}).encode() + b"\n" + body


@pytest.mark.parametrize("data, reason", [
    (b'{"v":2,"type":"pull","mesh":"m","digest":"' + DIGEST.encode() + b'","mesh":"x"}',
     "malformed"),  # duplicate key
    (b'{"v":2,"type":"nohead","mesh":"m","extra":1}', "schema"),
    (b'{"v":true,"type":"nohead","mesh":"m"}', "schema"),
    (b'{"v":2,"type":"nohead","mesh":"bad mesh!"}', "schema"),
    (b'{"v":2,"type":"nohead","mesh":"m\\n"}', "schema"),  # the settings' pattern, whole name
    (b'{"v":2,"type":"pull","mesh":"m","digest":"sha256:XYZ"}', "schema"),
    (b'{"v":2,"type":"report","mesh":"m","revision":"1@x","digest":"' + DIGEST.encode()
     + b'","status":"applied","reason":null}', "schema"),
    (b'{"v":2,"type":"nohead","mesh":"m","n":NaN}', "malformed"),
    (b"[" * (wire.MAX_ANY_BYTES + 1), "too_large"),
    (b'{"v":2,"type":"nohead","mesh":"m"}' + b" " * 5000, "too_large"),  # its own bound: 4 KiB
    (b"[" * 3000, "malformed"),
    (json.dumps({"v": 9, "type": "nohead", "mesh": "m"}).encode(), "unsupported_version"),
    (b'{"v":2,"type":"nohead","mesh":"m"}\n{}', "malformed"),  # a body where none belongs
    (broadcast(size=5, body=b"1234"), "schema"),  # the body is not the size the head says
    (broadcast(size=5, body=b"12345").partition(b"\n")[0], "schema"),  # no body at all
    (broadcast(size=wire.MAX_INLINE_BYTES + 1, body=b"x" * (wire.MAX_INLINE_BYTES + 1)),
     "too_large"),
])
def test_strict_schema_rejections(data, reason):
    with pytest.raises(WireError) as err:
        wire.decode(data)
    assert err.value.reason == reason
