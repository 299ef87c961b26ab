"""Hypothesis strategies for the wire fuzzers (the test and bench/fuzz_wire.py share them)."""

from __future__ import annotations

import base64
import json

from hypothesis import strategies as st
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from unit_p2p.sync import wire
from unit_p2p.sync.revision import Head, Revision, sign_revision

KEYS = create_new_key_pair(b"\x01" * 32)
ORIGIN = ID.from_pubkey(KEYS.public_key).to_base58()
DIGEST = "sha256:" + "ab" * 32


def valid_messages():
    rev = Revision(7, ORIGIN)
    head = Head(rev, DIGEST, 1234, sign_revision(KEYS.private_key, "m", rev, DIGEST))
    return [
        wire.Announce("m", head),
        wire.Broadcast("m", Head(rev, DIGEST, 10, head.signature), b'{"a":[1]}\n'),
        wire.NoHead("m"),
        wire.Report("m", rev, DIGEST, "applied", None, ORIGIN),
        wire.Report("m", rev, DIGEST, "failed", "unit_rejected: nope", ORIGIN),
        wire.Reports("m", rev, DIGEST, (wire.Report("m", rev, DIGEST, "applied", None, ORIGIN),)),
        wire.Pull("m", DIGEST),
        wire.Served(DIGEST, 10),
        wire.ServeError("not_found"),
    ]


json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(
    max_size=80)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.text(max_size=10), c, max_size=4), max_leaves=12)


@st.composite
def mutated(draw):
    """A valid message as a JSON object with one field replaced, removed or added."""
    msg = draw(st.sampled_from(valid_messages()))
    obj = json.loads(wire.encode(msg).partition(b"\n")[0])
    action = draw(st.sampled_from(["replace", "remove", "add", "retype_version"]))
    key = draw(st.sampled_from(sorted(obj)))
    if action == "replace":
        obj[key] = draw(json_values)
    elif action == "remove":
        del obj[key]
    elif action == "add":
        obj[draw(st.text(max_size=12))] = draw(json_values)
    else:
        obj["v"] = draw(st.sampled_from([True, 2.0, "2", 1, 3, 0, -1, None]))
    return json.dumps(obj).encode() + (b"\n" + msg.body() if msg.HAS_BODY else b"")


@st.composite
def mangled_bytes(draw):
    """A valid encoding, truncated or with bytes flipped."""
    data = bytearray(wire.encode(draw(st.sampled_from(valid_messages()))))
    if draw(st.booleans()):
        return bytes(data[: draw(st.integers(0, len(data)))])
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    return bytes(data)


any_input = st.one_of(st.binary(max_size=5000), mutated(), mangled_bytes(),
                      json_values.map(lambda v: json.dumps(v).encode()))


def check_accepted(msg) -> None:
    """What decode accepts must satisfy the schema: re-encoding round-trips exactly."""
    assert isinstance(msg, (wire.Announce, wire.Broadcast, wire.NoHead, wire.Report,
                            wire.Reports, wire.Pull, wire.Served, wire.ServeError))
    again = wire.decode(wire.encode(msg))
    assert again == msg
    if isinstance(msg, wire.Broadcast):
        assert len(msg.document) == msg.head.size <= wire.MAX_INLINE_BYTES
    if isinstance(msg, wire.Announce | wire.Broadcast):
        assert len(msg.head.signature) == 64
        assert base64.b64encode(msg.head.signature)
    for report in msg.reports if isinstance(msg, wire.Reports) else (msg,):
        if isinstance(report, wire.Report):
            assert (report.status == "failed") == (report.reason is not None)
