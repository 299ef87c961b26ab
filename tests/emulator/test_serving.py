"""Listeners are served: TLS with the uploaded bundle (SNI among several), rotation, routing.

Every check goes through real loopback sockets with a real TLS client (Python's ssl, and curl
when it is installed), comparing the SHA-256 fingerprint of the certificate the server presents
with the one uploaded.
"""

from __future__ import annotations

import json
import shutil
import ssl

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from tests.emulator.conftest import (
    fetch,
    fingerprint_of,
    free_loopback_port,
    make_bundle,
    make_cert,
    make_key,
    pem_of,
)
from unit_p2p.unit.emulator import UnitEmulator
from unit_p2p.unit.emulator.dataplane import answer
from unit_p2p.unit.emulator.rawclient import request

ROUTES = [
    {"match": {"uri": "/teapot"}, "action": {"return": 418}},
    {
        "match": {"uri": "/old*", "method": ["GET", "HEAD"]},
        "action": {"return": 301, "location": "/new"},
    },
    {"match": {"scheme": "https", "uri": "!/plain"}, "action": {"return": 200}},
    {"match": {"uri": "/app"}, "action": {"pass": "applications/app"}},
    {"action": {"return": 204}},
]
APPS = {"app": {"type": "python", "path": "/srv", "module": "wsgi"}}


def config(listeners: dict) -> dict:
    return {"listeners": listeners, "routes": ROUTES, "applications": APPS}


def tls_listener(certificate) -> dict:
    return {"pass": "routes", "tls": {"certificate": certificate}}


def bundle_for(*names: str, cn: str | None = None) -> bytes:
    """A bundle whose certificate has these DNS alt names (or only a common name)."""
    key = make_key("ec")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or names[0])])
    return pem_of(make_cert(key, subject, alt_names=list(names) if names else None), key)


async def put(addr: str, path: str, value) -> int:
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    got = await request(addr, "PUT", path, data)
    assert got.status == 200, (path, got.status, got.body)
    return got.status


async def test_a_tls_listener_serves_its_bundle_and_rotation_switches_it(start_emulator) -> None:
    emulator = await start_emulator()
    addr = emulator.control_address
    port = free_loopback_port()
    listener = f"127.0.0.1:{port}"
    old, new = make_bundle(), make_bundle()
    with trio.fail_after(30):
        await put(addr, "/certificates/site.000000000001", old)
        conf = config({listener: tls_listener("site.000000000001")})
        await put(addr, "/config", conf)
        before = await fetch(port, "/", tls=True)
        assert (before.status, before.fingerprint) == (200, fingerprint_of(old))

        # A client that verifies the chain and the name accepts it.
        verified = ssl.create_default_context(cadata=old.decode())
        stream = trio.SSLStream(
            await trio.open_tcp_stream("127.0.0.1", port), verified,
            server_hostname="unitprobe.local", https_compatible=True,
        )
        await stream.do_handshake()
        await stream.aclose()

        # A connection set up before the rotation is answered after it, by the old bundle.
        early = trio.SSLStream(
            await trio.open_tcp_stream("127.0.0.1", port), _no_verify(),
            server_hostname="unitprobe.local", https_compatible=True,
        )
        await early.do_handshake()

        await put(addr, "/certificates/site.000000000002", new)
        await put(addr, f"/config/listeners/{listener}/tls/certificate", "site.000000000002")
        after = await fetch(port, "/", tls=True)
        assert (after.status, after.fingerprint) == (200, fingerprint_of(new))
        deleted = await request(addr, "DELETE", "/certificates/site.000000000001")
        assert deleted.status == 200
        assert emulator.certificates == {"site.000000000002": new}

        assert early.getpeercert(binary_form=True) is not None
        await early.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := await early.receive_some(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ")
        await early.aclose()


def _no_verify() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def test_sni_picks_among_several_bundles_as_unit_does(start_emulator) -> None:
    addr = (await start_emulator()).control_address
    port = free_loopback_port()
    bundles = {
        "a": bundle_for("a.test", "www.a.test"),
        "b": bundle_for("*.b.test"),
        "c": bundle_for(cn="C.test"),  # no alt names: the common name counts
        "dup": bundle_for("a.test"),
    }
    with trio.fail_after(30):
        for name, pem in bundles.items():
            await put(addr, f"/certificates/{name}", pem)

        async def served(server_name: str | None) -> str:
            got = await fetch(port, "/", tls=True, server_name=server_name)
            return next(n for n, p in bundles.items() if fingerprint_of(p) == got.fingerprint)

        conf = config({f"127.0.0.1:{port}": tls_listener(["a", "b", "c", "dup"])})
        await put(addr, "/config", conf)
        assert await served(None) == "a"  # no SNI: the first bundle
        assert await served("a.test") == "a"  # "dup" has the name too; the first listed wins
        assert await served("WWW.A.TEST") == "a"
        assert await served("x.b.test") == "b"  # wildcard, one label deep
        assert await served("b.test") == "a"  # a wildcard does not cover the bare domain
        assert await served("y.x.b.test") == "a"
        assert await served("c.test") == "c"
        assert await served("unknown.test") == "a"

        await put(addr, f"/config/listeners/127.0.0.1:{port}/tls/certificate", ["dup", "a"])
        assert await served("a.test") == "dup"
        assert await served("www.a.test") == "a"


async def test_routes_are_answered_like_unit(start_emulator) -> None:
    addr = (await start_emulator()).control_address
    plain, tls = free_loopback_port(), free_loopback_port()
    with trio.fail_after(30):
        await put(addr, "/certificates/b", make_bundle())
        conf = config(
            {f"127.0.0.1:{plain}": {"pass": "routes"}, f"127.0.0.1:{tls}": tls_listener("b")}
        )
        await put(addr, "/config", conf)
        teapot = await fetch(plain, "/teapot")
        assert (teapot.status, teapot.body) == (
            418,
            b"<!DOCTYPE html><title>Error 418</title><p>Error 418.\r\n",
        )
        assert [h for h, _ in teapot.headers] == [
            "Content-Type", "Server", "Date", "Content-Length", "Connection",
        ]
        assert dict(teapot.headers)["Server"] == "Unit/1.35.0"
        moved = await fetch(plain, "/old/page")
        assert (moved.status, moved.body, dict(moved.headers)["Location"]) == (301, b"", "/new")
        assert moved.headers[0][0] == "Location"
        fallback = await fetch(plain, "/")
        assert (fallback.status, dict(fallback.headers)["Content-Length"]) == (204, "0")
        assert (await fetch(tls, "/", tls=True)).status == 200  # scheme https
        assert (await fetch(tls, "/plain", tls=True)).status == 204  # negated uri
        # Applications are not run: 503, never a made-up success.
        assert (await fetch(plain, "/app")).status == 503
        # Without routes matching: 404.
        await put(addr, "/config/routes", [{"match": {"uri": "/x"}, "action": {"return": 200}}])
        assert (await fetch(plain, "/")).status == 404


async def test_nothing_is_served_without_binding_or_for_wildcards_by_default(
    start_emulator,
) -> None:
    port = free_loopback_port()
    conf = config({f"127.0.0.1:{port}": {"pass": "routes"}})
    relaxed = await start_emulator(bind_listeners=False)
    wildcard = free_loopback_port()
    wild_conf = config({f"*:{wildcard}": {"pass": "routes"}})
    default = await start_emulator()
    with trio.fail_after(20):
        await put(relaxed.control_address, "/config", conf)
        with pytest.raises(OSError):
            await fetch(port)
        await put(default.control_address, "/config", wild_conf)
        with pytest.raises(OSError):
            await fetch(wildcard)


async def test_all_addresses_serves_wildcard_listeners(start_emulator) -> None:
    emulator = await start_emulator(all_addresses=True)
    port = free_loopback_port()
    bundle = make_bundle()
    with trio.fail_after(20):
        await put(emulator.control_address, "/certificates/b", bundle)
        conf = config({f"*:{port}": tls_listener("b")})
        await put(emulator.control_address, "/config", conf)
        got = await fetch(port, "/", tls=True)
    assert (got.status, got.fingerprint) == (200, fingerprint_of(bundle))


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_verifies_the_served_bundle(start_emulator, tmp_path) -> None:
    addr = (await start_emulator()).control_address
    port = free_loopback_port()
    bundle = bundle_for("curl.test")
    ca = tmp_path / "ca.pem"
    leaf = x509.load_pem_x509_certificates(bundle)[0]
    ca.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    with trio.fail_after(30):
        await put(addr, "/certificates/c", bundle)
        conf = config({f"127.0.0.1:{port}": tls_listener("c")})
        await put(addr, "/config", conf)
        done = await trio.run_process(
            ["curl", "-sS", "--cacert", str(ca), "--resolve", f"curl.test:{port}:127.0.0.1",
             "-o", "/dev/null", "-w", "%{http_code}", f"https://curl.test:{port}/"],
            capture_stdout=True, capture_stderr=True, check=False,
        )
    assert (done.returncode, done.stdout, done.stderr) == (0, b"200", b"")


async def test_tls_is_served_again_after_a_restart_from_the_state_dir(tmp_path) -> None:
    state, control = tmp_path / "state", f"unix:{tmp_path}/c.sock"
    port = free_loopback_port()
    bundle = make_bundle()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            first = UnitEmulator(control, state_dir=state)
            await nursery.start(first.serve)
            await put(control, "/certificates/b", bundle)
            await put(control, "/config", config({f"127.0.0.1:{port}": tls_listener("b")}))
            nursery.cancel_scope.cancel()
        with pytest.raises(OSError):
            await fetch(port, tls=True)  # stopped: the listener is closed
        async with trio.open_nursery() as nursery:
            second = UnitEmulator(control, state_dir=state)
            await nursery.start(second.serve)
            got = await fetch(port, "/", tls=True)
            nursery.cancel_scope.cancel()
    assert (got.status, got.fingerprint) == (200, fingerprint_of(bundle))


@pytest.mark.parametrize(
    ("match", "request_head", "status"),
    [
        ({"uri": "/a*b*c"}, "GET /a-x-b-y-c HTTP/1.1", 200),
        ({"uri": "/a*b*c"}, "GET /a-c HTTP/1.1", 404),
        ({"uri": "/a*b*c"}, "GET /abc/d HTTP/1.1", 404),
        ({"uri": ["!/private*", "!/admin"]}, "GET /public HTTP/1.1", 200),
        ({"uri": ["!/private*", "!/admin"]}, "GET /private/x HTTP/1.1", 404),
        ({"uri": ["/x", "/y*", "!/y2"]}, "GET /y1 HTTP/1.1", 200),
        ({"uri": ["/x", "/y*", "!/y2"]}, "GET /y2 HTTP/1.1", 404),
        ({"uri": "/caf\u00e9"}, "GET /caf%C3%A9?q=1 HTTP/1.1", 200),
        ({"method": "post"}, "POST / HTTP/1.1", 200),
        ({"host": "WWW.Example.test"}, "GET / HTTP/1.1\r\nHost: www.example.TEST:8443", 200),
        ({"host": "*.example.test"}, "GET / HTTP/1.1\r\nHost: example.test", 404),
        ({"scheme": "https"}, "GET / HTTP/1.1", 404),
        ({"headers": {"x": "y"}}, "GET / HTTP/1.1", 503),
        ({"uri": "~^/re"}, "GET /re HTTP/1.1", 503),
    ],
)
def test_route_matching(match, request_head, status) -> None:
    conf = {"listeners": {"l": {"pass": "routes"}},
            "routes": [{"match": match, "action": {"return": 200}}]}
    got = answer(conf, "l", request_head.encode(), "http")
    assert got is not None and got.startswith(f"HTTP/1.1 {status} ".encode())


async def test_no_connection_is_refused_or_unserved_during_a_rotation(start_emulator) -> None:
    """A client connecting over and over while the bundle rotates always gets an answer over
    TLS, first with the old certificate, then with the new one, never anything else."""
    addr = (await start_emulator()).control_address
    port = free_loopback_port()
    old, new = make_bundle(), make_bundle()
    seen: list[str | None] = []
    warmed_up, switched = trio.Event(), trio.Event()
    with trio.fail_after(60):
        await put(addr, "/certificates/old", old)
        await put(addr, "/config", config({f"127.0.0.1:{port}": tls_listener("old")}))

        async def client() -> None:
            after_switch = 0
            while after_switch < 5:  # keep going until a few answers came after the switch
                got = await fetch(port, "/", tls=True)
                assert got.status == 200
                seen.append(got.fingerprint)
                if len(seen) == 3:
                    warmed_up.set()
                after_switch += switched.is_set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(client)
            await warmed_up.wait()
            await put(addr, "/certificates/new", new)
            await put(addr, f"/config/listeners/127.0.0.1:{port}/tls/certificate", "new")
            switched.set()
            assert (await request(addr, "DELETE", "/certificates/old")).status == 200
    want_old, want_new = fingerprint_of(old), fingerprint_of(new)
    assert set(seen) <= {want_old, want_new}
    first_new = seen.index(want_new)
    assert seen[:first_new] == [want_old] * first_new and first_new >= 3
    assert seen[first_new:] == [want_new] * (len(seen) - first_new)
