"""/certificates and TLS listener validation beyond the recorded transcripts.

The recorded cases (upload, list, a sub-path, "Certificate already exists.", "Invalid
certificate.", in use, delete, a missing certificate in a listener) are replayed by
test_contract.py. These tests cover what the agent relies on and the recording does not show;
the expected sentences are those of ``nxt_controller_process_cert``, ``nxt_cert_bio``,
``nxt_cert_details`` and ``nxt_conf_vldt_certificate`` in the 1.35.0 sources.
"""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from tests.emulator.conftest import free_loopback_port, make_bundle, make_cert, make_key, pem_of
from unit_p2p.unit.emulator.rawclient import request


def body(got) -> object:
    return json.loads(got.body)


def b64(size: int) -> str:
    return base64.b64encode(bytes(size)).decode()


def cn(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def tls_conf(certificate, port: int | None = None) -> dict:
    listener = f"127.0.0.1:{port}" if port else "*:8443"
    return {
        "listeners": {listener: {"pass": "routes", "tls": {"certificate": certificate}}},
        "routes": [{"action": {"return": 204}}],
    }


async def put_conf(addr: str, conf: object):
    return await request(addr, "PUT", "/config", json.dumps(conf).encode())


async def test_rotation_by_content_derived_names(start_emulator) -> None:
    """Upload under a new name, switch the listener, delete the old one: all accepted."""
    emulator = await start_emulator(bind_listeners=False)
    addr = emulator.control_address
    old, new = "site.0123456789ab", "site.ba9876543210"
    with trio.fail_after(20):
        assert (await request(addr, "PUT", f"/certificates/{old}", make_bundle())).status == 200
        assert (await put_conf(addr, tls_conf(old))).status == 200
        assert (await request(addr, "PUT", f"/certificates/{new}", make_bundle())).status == 200
        in_use = await request(addr, "DELETE", f"/certificates/{old}")
        assert (in_use.status, body(in_use)) == (
            400,
            {"error": "Certificate is used in the configuration."},
        )
        assert (await put_conf(addr, tls_conf([new]))).status == 200
        gone = await request(addr, "DELETE", f"/certificates/{old}")
        assert (gone.status, body(gone)) == (200, {"success": "Certificate deleted."})
        assert list(body(await request(addr, "GET", "/certificates"))) == [new]


async def test_names_sub_paths_and_methods(start_emulator) -> None:
    addr = (await start_emulator()).control_address
    bundle = make_bundle()
    bad_name = (400, {"error": "Invalid certificate name."})
    with trio.fail_after(20):
        assert (await request(addr, "PUT", "/certificates/a.b-c_d", bundle)).status == 200
        alt = await request(addr, "GET", "/certificates/a.b-c_d/chain/0/subject/alt_names/0")
        assert (alt.status, body(alt)) == (200, "unitprobe.local")
        key = await request(addr, "GET", "/certificates/a.b-c_d/key")
        assert body(key) == "RSA (2048 bits)"
        for path in ("/certificates/a.b-c_d/nope", "/certificates/a.b-c_d/chain/1"):
            miss = await request(addr, "GET", path)
            assert (miss.status, body(miss)) == (404, {"error": "Invalid path."}), path
        for method, path in [
            ("PUT", "/certificates"),
            ("PUT", "/certificates/a/b"),
            ("DELETE", "/certificates"),
            ("DELETE", "/certificates/a.b-c_d/key"),
            ("POST", "/certificates"),
        ]:
            got = await request(addr, method, path, bundle)
            assert (got.status, body(got)) == bad_name, (method, path)
        # Percent escapes are decoded in a name, except %2F and %25 (a name never has a "/").
        assert (await request(addr, "PUT", "/certificates/x%20y", bundle)).status == 200
        assert (await request(addr, "PUT", "/certificates/p%2Fq", bundle)).status == 200
        names = list(body(await request(addr, "GET", "/certificates")))
        assert names == ["a.b-c_d", "x y", "p%2Fq"]
        assert (await put_conf(addr, tls_conf(["x y", "p%2Fq"]))).status == 200


@pytest.mark.parametrize(
    ("what", "pem"),
    [
        ("key only", lambda k, c: pem_of(k)),
        ("two keys", lambda k, c: pem_of(c, k, k)),
        ("an encrypted key", lambda k, c: pem_of(c) + k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )),
        ("EC parameters", lambda k, c: pem_of(c, k) + b"-----BEGIN EC PARAMETERS-----\n"
         b"BggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"),
        ("no END line", lambda k, c: pem_of(c, k) + b"-----BEGIN CERTIFICATE-----\nMIIB\n"),
        ("empty", lambda k, c: b""),
    ],
)
async def test_invalid_bundles(start_emulator, what, pem) -> None:
    addr = (await start_emulator()).control_address
    key = make_key("ec")
    cert = make_cert(key, cn("x.test"))
    with trio.fail_after(10):
        got = await request(addr, "PUT", "/certificates/x", pem(key, cert))
        assert (got.status, body(got)) == (400, {"error": "Invalid certificate."}), what
        assert body(await request(addr, "GET", "/certificates")) == {}


async def test_accepted_bundle_shapes_and_their_description(start_emulator) -> None:
    addr = (await start_emulator()).control_address
    key = make_key("ec")
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ops"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "web"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
        x509.NameAttribute(NameOID.COMMON_NAME, "www.example.test"),
    ])
    cert = make_cert(key, subject, alt_names=["www.example.test", "example.test"])
    # Key first, traditional "EC PRIVATE KEY" format, text around the blocks: all fine for Unit.
    pem = b"my bundle\n" + pem_of(key, key_format=serialization.PrivateFormat.TraditionalOpenSSL)
    pem += b"\n" + pem_of(cert) + b"trailer\n"
    with trio.fail_after(10):
        assert (await request(addr, "PUT", "/certificates/ec", pem)).status == 200
        info = body(await request(addr, "GET", "/certificates/ec"))
    assert info["key"] == "ECDH"
    subject_info = info["chain"][0]["subject"]
    assert list(subject_info.items()) == [
        ("common_name", "www.example.test"),
        ("alt_names", ["www.example.test", "example.test"]),
        ("country", "DE"),
        ("organization", "Example"),
        ("department", "ops"),
    ]
    assert info["chain"][0]["issuer"] == {
        "common_name": "www.example.test",
        "country": "DE",
        "organization": "Example",
        "department": "ops",
    }


async def test_expired_bundles_are_accepted_like_unit_does(start_emulator) -> None:
    addr = (await start_emulator()).control_address
    long_ago = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)
    old = make_bundle(since=long_ago, until=long_ago + dt.timedelta(days=1))
    with trio.fail_after(10):
        assert (await request(addr, "PUT", "/certificates/old", old)).status == 200
        validity = body(await request(addr, "GET", "/certificates/old/chain/0/validity"))
    assert validity == {"since": "Jan  1 00:00:00 2001 GMT", "until": "Jan  2 00:00:00 2001 GMT"}


async def test_a_key_of_another_certificate_fails_only_when_used(start_emulator) -> None:
    """Unit stores such a bundle; OpenSSL refuses it when a listener is set up with it: 500."""
    emulator = await start_emulator()
    addr = emulator.control_address
    cert = make_cert(make_key(), cn("a.test"))
    mismatched = pem_of(cert, make_key())
    port = free_loopback_port()
    with trio.fail_after(20):
        assert (await request(addr, "PUT", "/certificates/good", make_bundle())).status == 200
        assert (await put_conf(addr, tls_conf("good", port))).status == 200
        before = emulator.config
        up = await request(addr, "PUT", "/certificates/bad", mismatched)
        assert (up.status, body(up)) == (200, {"success": "Certificate chain uploaded."})
        for certificate in ("bad", ["good", "bad"]):
            got = await put_conf(addr, tls_conf(certificate, port))
            assert (got.status, body(got)) == (
                500,
                {"error": "Failed to apply new configuration."},
            )
            assert emulator.config == before
        assert (await request(addr, "DELETE", "/certificates/bad")).status == 200


@pytest.mark.parametrize(
    ("tls", "detail"),
    [
        ({}, 'Required parameter "certificate" is missing.'),
        ({"session": {}}, 'Required parameter "certificate" is missing.'),
        ({"certificate": []}, 'The "certificate" array must contain at least one element.'),
        ({"certificate": ["b", 1]}, 'The "certificate" array must contain only string values.'),
        ({"certificate": 1},
         'The "certificate" value must be either a string or an array, but not an integer '
         "number."),
        ({"certificate": "nope"}, 'Certificate "nope" is not found.'),
        ({"certificate": ["b", "nope"]}, 'Certificate "nope" is not found.'),
        ({"certificate": "b", "ciphers": "x"}, 'Unknown parameter "ciphers".'),
        ({"certificate": "b", "conf_commands": {"protocol": 1}},
         'The "protocol" value must be a string, but not an integer number.'),
        ({"certificate": "b", "session": {"timeout": 0}},
         'The "timeout" number must be greater than zero.'),
        ({"certificate": "b", "session": {"cache_size": -1}},
         'The "cache_size" number must not be negative.'),
        ({"certificate": "b", "session": {"tickets": ["%%%"]}},
         'Invalid Base64 format for the ticket key "%%%".'),
        ({"certificate": "b", "session": {"tickets": "YWJj"}},
         'Invalid length 3 of the ticket key "YWJj".  Must be 48 or 80 bytes.'),
        ({"certificate": "b", "session": {"ticket": True}}, 'Unknown parameter "ticket".'),
    ],
)
async def test_tls_listener_validation(start_emulator, tls, detail) -> None:
    emulator = await start_emulator(bind_listeners=False)
    addr = emulator.control_address
    conf = tls_conf("b")
    conf["listeners"]["*:8443"]["tls"] = tls
    with trio.fail_after(10):
        assert (await request(addr, "PUT", "/certificates/b", make_bundle())).status == 200
        got = await put_conf(addr, conf)
    assert (got.status, body(got)) == (400, {"error": "Invalid configuration.", "detail": detail})


async def test_valid_tls_options_are_accepted(start_emulator) -> None:
    addr = (await start_emulator(bind_listeners=False)).control_address
    conf = tls_conf("b")
    conf["listeners"]["*:8443"]["tls"] = {
        "certificate": ["b"],
        "conf_commands": {"protocol": "-ALL,TLSv1.3"},
        "session": {"cache_size": 0, "timeout": 300, "tickets": [b64(48), b64(80)]},
    }
    with trio.fail_after(10):
        assert (await request(addr, "PUT", "/certificates/b", make_bundle())).status == 200
        assert (await put_conf(addr, conf)).status == 200
