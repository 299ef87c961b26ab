"""The emulator over real sockets: atomicity, faults, socket down/up, state dir, framing."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import trio

from tests.emulator.conftest import fetch, free_loopback_port, make_bundle
from unit_p2p.unit.emulator import EmulatorError, UnitEmulator
from unit_p2p.unit.emulator.rawclient import exchange, request

GOOD = b'{"listeners": {"*:8080": {"pass": "routes"}}, "routes": [{"action": {"return": 204}}]}'
SUCCESS = b'{\r\n\t"success": "Reconfiguration done."\r\n}\r\n'
APPLY_FAILED = b'{\r\n\t"error": "Failed to apply new configuration."\r\n}\r\n'


async def test_rejected_writes_leave_the_config_byte_for_byte(start_emulator) -> None:
    emulator = await start_emulator()
    addr = emulator.control_address
    with trio.fail_after(10):
        assert (await request(addr, "PUT", "/config", GOOD)).body == SUCCESS
        before = (await request(addr, "GET", "/config")).body
        bad_requests = [
            ("PUT", "/config", b'{"listeners": {"*:8080": {"pass": "routes/x"}}}'),
            ("PUT", "/config", b'{"listeners": {}, "bogus": 1}'),
            ("PUT", "/config", b"[]"),
            ("PUT", "/config", b'{"routes": [{"action": {"return": 1000}}]}'),
            ("PUT", "/config/routes/0/action/return", b"-1"),
            ("PUT", "/config/listeners/*:8080/pass", b'"applications/none"'),
            ("DELETE", "/config/routes", None),
            ("POST", "/config/routes", b'{"action": {"pass": "upstreams/u"}}'),
            ("PUT", "/config", b'{"listeners": '),
            ("PUT", "/config/nope/deeper", b"{}"),
        ]
        for method, path, body in bad_requests:
            got = await request(addr, method, path, body)
            assert got.status in (400, 404), (method, path, got.body)
            assert (await request(addr, "GET", "/config")).body == before
        assert emulator.config == json.loads(GOOD)


async def test_fail_next_puts_in_process(start_emulator) -> None:
    emulator = await start_emulator()
    addr = emulator.control_address
    emulator.fail_next_puts(2)
    with trio.fail_after(10):
        for _ in range(2):
            got = await request(addr, "PUT", "/config", GOOD)
            assert (got.status, got.body) == (500, APPLY_FAILED)
        # An invalid config is still refused as invalid, not with the injected failure.
        emulator.fail_next_puts(1, status=503)
        invalid = await request(addr, "PUT", "/config", b"[]")
        assert invalid.status == 400
        assert (await request(addr, "PUT", "/config", GOOD)).status == 503
        assert (await request(addr, "PUT", "/config", GOOD)).status == 200
    assert emulator.put_count == 5
    assert emulator.applied_count == 1
    with pytest.raises(ValueError):
        emulator.fail_next_puts(1, status=200)


async def test_port_in_use_gives_500_and_keeps_the_old_config(start_emulator) -> None:
    emulator = await start_emulator()
    addr = emulator.control_address
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        taken = other.getsockname()[1]
        conf = {"listeners": {f"127.0.0.1:{taken}": {"pass": "routes"}}, "routes": []}
        with trio.fail_after(10):
            got = await request(addr, "PUT", "/config", json.dumps(conf).encode())
            assert (got.status, got.body) == (500, APPLY_FAILED)
            assert emulator.config == {"listeners": {}, "routes": [], "applications": {}}
    # Once the port is free again the same config applies, and the emulator then holds it.
    with trio.fail_after(10):
        assert (await request(addr, "PUT", "/config", json.dumps(conf).encode())).status == 200
    with socket.socket() as late, pytest.raises(OSError):
        late.bind(("127.0.0.1", taken))
    # The listener serves: no route matches, so Unit's 404 page.
    with trio.fail_after(10):
        assert (await fetch(taken)).status == 404
    # Removing the listener releases the port at once (the served connection may leave a
    # TIME_WAIT behind, which SO_REUSEADDR lets pass, as Unit's own listeners do).
    with trio.fail_after(10):
        assert (await request(addr, "DELETE", f"/config/listeners/127.0.0.1:{taken}")).status == 200
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", taken))
        again.listen(1)


async def test_two_emulators_conflict_unless_binding_is_off(start_emulator) -> None:
    port = free_loopback_port()
    conf = json.dumps({"listeners": {f"127.0.0.1:{port}": {"pass": "routes"}}, "routes": []})
    first = await start_emulator()
    second = await start_emulator()
    relaxed = await start_emulator(bind_listeners=False)
    with trio.fail_after(10):
        assert (await request(first.control_address, "PUT", "/config", conf.encode())).status == 200
        assert (
            await request(second.control_address, "PUT", "/config", conf.encode())
        ).status == 500
        assert (
            await request(relaxed.control_address, "PUT", "/config", conf.encode())
        ).status == 200


async def test_unix_socket_goes_away_and_comes_back(start_emulator) -> None:
    emulator = await start_emulator()
    addr = emulator.control_address
    path = addr.removeprefix("unix:")
    with trio.fail_after(10):
        assert (await request(addr, "PUT", "/config", GOOD)).status == 200
        await emulator.stop_listening()
        assert not emulator.listening
        assert not await trio.Path(path).exists()
        with pytest.raises(OSError):
            await request(addr, "GET", "/config")
        await emulator.stop_listening()  # idempotent
        await emulator.start_listening()
        assert emulator.control_address == addr
        got = await request(addr, "GET", "/config")
        assert json.loads(got.body) == json.loads(GOOD)


async def test_tcp_socket_comes_back_on_the_same_port(start_emulator) -> None:
    emulator = await start_emulator("http://127.0.0.1:0")
    addr = emulator.control_address
    assert not addr.endswith(":0")
    with trio.fail_after(10):
        await emulator.stop_listening()
        with pytest.raises(OSError):
            await request(addr, "GET", "/config")
        await emulator.start_listening()
        assert emulator.control_address == addr
        assert (await request(addr, "GET", "/status")).status == 200


async def test_state_dir_survives_a_restart(tmp_path: Path, nursery) -> None:
    state = tmp_path / "state"
    control = f"unix:{tmp_path}/c.sock"
    bundle = make_bundle()
    with trio.fail_after(20):
        async with trio.open_nursery() as inner:
            first = UnitEmulator(control, state_dir=state)
            await inner.start(first.serve)
            assert (await request(control, "PUT", "/certificates/b", bundle)).status == 200
            tls = {"pass": "routes", "tls": {"certificate": "b"}}
            conf = json.loads(GOOD)
            conf["listeners"]["*:8443"] = tls
            assert (
                await request(control, "PUT", "/config", json.dumps(conf).encode())
            ).status == 200
            before = (await request(control, "GET", "/")).body
            inner.cancel_scope.cancel()
        assert not await trio.Path(control[5:]).exists()
        second = UnitEmulator(control, state_dir=state)
        await nursery.start(second.serve)
        assert (await request(control, "GET", "/")).body == before
        assert second.config == conf
        # Certificates in use cannot be deleted; private keys are never shown.
        assert (await request(control, "DELETE", "/certificates/b")).status == 400
        assert b"PRIVATE" not in (await request(control, "GET", "/certificates/b")).body


async def test_corrupt_state_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "conf.json").write_text('{"listeners": {"x": {}}}')
    emulator = UnitEmulator(f"unix:{tmp_path}/c.sock", state_dir=state)
    with trio.fail_after(10), pytest.raises(EmulatorError, match=r"conf\.json"):
        await emulator.serve()


async def test_oversized_request_head_is_dropped_without_answer(start_emulator) -> None:
    emulator = await start_emulator()
    addr = emulator.control_address
    head = b"GET /config HTTP/1.1\r\nHost: x\r\nX-Pad: "
    end = b"\r\n\r\n"
    with trio.fail_after(10):
        fits = await exchange(addr, head + b"a" * (1024 - len(head) - len(end)) + end)
        assert fits.status == 200
        too_long = await exchange(addr, head + b"a" * (1025 - len(head) - len(end)) + end)
        assert too_long.status is None
        assert too_long.reset
        # The server is still there.
        assert (await request(addr, "GET", "/config")).status == 200


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\xff\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /config HTTP/2.0\r\n\r\n",
        b"GET config HTTP/1.1\r\n\r\n",
        b"PUT /config HTTP/1.1\r\nContent-Length: -1\r\n\r\n{}",
        b"PUT /config HTTP/1.1\r\nno colon here\r\n\r\n",
        b"",
    ],
)
async def test_garbage_closes_the_connection_only(start_emulator, garbage: bytes) -> None:
    emulator = await start_emulator()
    with trio.fail_after(10):
        got = await exchange(emulator.control_address, garbage, half_close=True)
        assert got.status is None
        assert (await request(emulator.control_address, "GET", "/status")).status == 200


async def test_body_shorter_than_content_length_gets_no_answer(start_emulator) -> None:
    emulator = await start_emulator()
    data = b"PUT /config HTTP/1.1\r\nContent-Length: 50\r\n\r\n" + GOOD[:20]
    with trio.fail_after(10):
        got = await exchange(emulator.control_address, data, half_close=True)
    assert got.status is None
    assert emulator.put_count == 0


async def test_concurrent_puts_are_serialized(start_emulator) -> None:
    emulator = await start_emulator()
    bodies = [
        json.dumps({"listeners": {f"*:{8000 + i}": {"pass": "routes"}}, "routes": []}).encode()
        for i in range(20)
    ]
    statuses: list[int | None] = []

    async def put(body: bytes) -> None:
        statuses.append((await request(emulator.control_address, "PUT", "/config", body)).status)

    with trio.fail_after(20):
        async with trio.open_nursery() as inner:
            for body in bodies:
                inner.start_soon(put, body)
    assert statuses == [200] * 20
    assert emulator.config in [json.loads(b) for b in bodies]
    assert emulator.put_count == 20


async def test_paths_keys_and_methods(start_emulator) -> None:
    emulator = await start_emulator()
    addr = emulator.control_address
    conf = {
        "listeners": {"unix:/tmp/x.sock": {"pass": "routes/main"}},
        "routes": {"main": [{"action": {"return": 200}}]},
    }
    with trio.fail_after(10):
        assert (await request(addr, "PUT", "/config/", json.dumps(conf).encode())).status == 200
        got = await request(addr, "GET", "/config/listeners/unix:%2Ftmp%2Fx.sock/pass?v=1")
        assert got.body == b'"routes/main"\r\n'
        assert (await request(addr, "GET", "/config/listeners/unix:/tmp/x.sock")).status == 404
        assert (await request(addr, "GET", "/config//listeners")).status == 404
        post = await request(addr, "POST", "/config/routes/main", b'{"action": {"return": 201}}')
        assert post.status == 200
        assert (
            await request(addr, "GET", "/config/routes/main/1/action/return")
        ).body == b"201\r\n"
        assert (await request(addr, "POST", "/config/routes", b"{}")).status == 405
        assert (await request(addr, "PUT", "/config/routes/main/2", b"{}")).status == 404
        assert (await request(addr, "DELETE", "/config/routes/main/0")).status == 200
        assert emulator.config["routes"]["main"] == [{"action": {"return": 201}}]
        # A new member goes to the end; replacing one keeps its place.
        await request(addr, "PUT", "/config/settings", b'{"http": {"idle_timeout": 5}}')
        await request(
            addr, "PUT", "/config/listeners/unix:%2Ftmp%2Fx.sock", b'{"pass": "routes/main"}'
        )
        assert list(emulator.config) == ["listeners", "routes", "settings"]
        assert (await request(addr, "PATCH", "/config", b"{}")).status == 405
        assert (await request(addr, "DELETE", "/status")).status == 405
        assert (await request(addr, "GET", "/status/applications/x")).body == (
            b'{\r\n\t"error": "Invalid path."\r\n}\r\n'
        )


async def test_admin_socket_drives_faults(start_emulator, tmp_path: Path) -> None:
    admin = f"unix:{tmp_path}/admin.sock"
    emulator = await start_emulator(admin=admin)
    addr = emulator.control_address
    with trio.fail_after(10):
        got = await request(admin, "POST", "/fail-next-puts", b'{"n": 1, "status": 500}')
        assert got.status == 200 and json.loads(got.body)["pending_failures"] == 1
        assert (await request(addr, "PUT", "/config", GOOD)).status == 500
        state = json.loads((await request(admin, "GET", "/state")).body)
        assert state["put_count"] == 1 and state["pending_failures"] == 0
        assert (await request(admin, "POST", "/stop-listening")).status == 200
        with pytest.raises(OSError):
            await request(addr, "GET", "/config")
        assert (await request(admin, "POST", "/start-listening")).status == 200
        assert (await request(addr, "PUT", "/config", GOOD)).status == 200
        assert (await request(admin, "POST", "/fail-next-puts", b'{"n": "x"}')).status == 400
        assert (await request(admin, "GET", "/fail-next-puts")).status == 405
        assert (await request(admin, "GET", "/nope")).status == 404


async def test_refuses_an_occupied_unix_path(tmp_path: Path, start_emulator) -> None:
    regular = tmp_path / "file"
    regular.write_text("not a socket")
    with trio.fail_after(10), pytest.raises(EmulatorError, match="not a socket"):
        await UnitEmulator(f"unix:{regular}").serve()
    live = await start_emulator()
    with trio.fail_after(10), pytest.raises(EmulatorError, match="already listening"):
        await UnitEmulator(live.control_address).serve()


@pytest.mark.parametrize(
    "spec", ["", "unix:", "localhost:80", "127.0.0.1", "127.0.0.1:x", "1:99999"]
)
def test_bad_control_addresses(spec: str) -> None:
    with pytest.raises(EmulatorError):
        UnitEmulator(spec)


async def test_non_ascii_keys_in_paths(start_emulator) -> None:
    emulator = await start_emulator()
    addr = emulator.control_address
    conf = '{"settings": {"http": {"static": {"mime_types": {"text/é": [".é"]}}}}}'.encode()
    with trio.fail_after(10):
        assert (await request(addr, "PUT", "/config", conf)).status == 200
        raw = "GET /config/settings/http/static/mime_types/text%2Fé HTTP/1.1\r\n\r\n".encode()
        got = await exchange(addr, raw)
        assert got.body == '[\r\n\t".é"\r\n]\r\n'.encode()
        encoded = await request(
            addr, "GET", "/config/settings/http/static/mime_types/text%2F%C3%A9"
        )
        assert encoded.body == got.body
        broken = await exchange(addr, b"GET /config/\xff HTTP/1.1\r\n\r\n")
        assert broken.status == 404


async def test_injected_status_without_a_standard_name(start_emulator) -> None:
    emulator = await start_emulator()
    emulator.fail_next_puts(1, status=599)
    with trio.fail_after(10):
        got = await request(emulator.control_address, "PUT", "/config", GOOD)
    assert got.raw.startswith(b"HTTP/1.1 599 Unknown\r\n")
    assert got.body == APPLY_FAILED
