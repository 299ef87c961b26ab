"""UnitClient against real sockets replaying the exact bytes a real Unit 1.35.0 sent."""

from __future__ import annotations

import json
import socket
import threading
import time

import connector_servers
import pytest
from connector_servers import load_transcript

from unit_p2p import errors
from unit_p2p.httpunix import Address, parse_address
from unit_p2p.unit.client import UnitClient, unit_path

CALLS = ("GET", "PUT", "POST", "DELETE")


def call_like(client: UnitClient, record: dict):
    """Make the call the record made, through the client's public methods."""
    method, path = record["method"], record["path"]
    if method == "GET":
        return client.get(path)
    if method == "DELETE":
        return client.delete(path)
    try:
        value = json.loads(record["request_body"] or "null")
    except ValueError:
        value = {"not": "the recorded invalid bytes"}  # the replayed answer does not depend on it
    return client.put(path, value) if method == "PUT" else client.post(path, value)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("put_invalid_json_truncated", errors.UnitInvalidJSON),
        ("h3_put_json_duplicate_keys", errors.UnitInvalidJSON),
        ("put_semantic_missing_route", errors.UnitInvalidConfig),
        ("delete_routes_still_referenced", errors.UnitInvalidConfig),
        ("get_config_routes_index_out_of_range", errors.UnitPathNotFound),
        ("put_subpath_missing_parent", errors.UnitPathNotFound),
        ("get_status_missing", errors.UnitPathNotFound),  # "Invalid path." under /status
        ("post_to_object_not_allowed", errors.UnitMethodNotAllowed),
        ("put_status_not_allowed", errors.UnitMethodNotAllowed),  # "Invalid method."
        ("h2_put_listener_port_in_use", errors.UnitApplyFailed),
        ("put_config_app_module_missing", errors.UnitApplyFailed),
        ("put_certificate_again_exists", errors.UnitRejected),
        ("headers_too_long_2000B", errors.UnitUnreachable),  # closed with a reset, no answer
        ("content_length_invalid", errors.UnitUnreachable),  # closed (eof), no answer
    ],
)
def test_each_error_class_from_a_recorded_answer(serve, transcript, name, cls):
    record = transcript[name]
    server = serve([record])
    with UnitClient(server.address, timeout=5) as client, pytest.raises(cls) as info:
        call_like(client, record)
    assert type(info.value) is cls
    assert (server.received[0].method, server.received[0].target) == (
        record["method"],
        record["path"],
    )
    if record["status"] is None:
        assert "closed the connection without answering" in str(info.value)
        return
    doc = record["response_json"]
    e = info.value
    assert (e.status, e.error, e.detail, e.location) == (
        record["status"],
        doc["error"],
        doc.get("detail"),
        doc.get("location"),
    )
    assert (e.method, e.path) == (record["method"], record["path"])
    assert doc["error"] in str(e)


def test_invalid_json_carries_location(serve, transcript):
    server = serve([transcript["put_invalid_json_truncated"]])
    with pytest.raises(errors.UnitInvalidJSON) as info:
        UnitClient(server.address).put("/config", {})
    assert info.value.location == {"offset": 52, "line": 1, "column": 53}
    assert "(line 1, column 53)" in str(info.value)


def test_every_recorded_answer_is_read_as_recorded(serve):
    """Sweep: every recorded GET/PUT/POST/DELETE answer, success or error, through the client."""
    records = [r for r in load_transcript() if r["method"] in CALLS and r["status"] is not None]
    server = serve(records)
    by_status = {404: errors.UnitPathNotFound, 405: errors.UnitMethodNotAllowed}
    client = UnitClient(server.address, timeout=5)
    errors_seen = 0
    for record in list(records):
        doc = record["response_json"]
        if record["status"] < 400:
            assert call_like(client, record) == doc, record["name"]
            continue
        with pytest.raises(errors.UnitRejected) as info:
            call_like(client, record)
        e = info.value
        assert (e.status, e.error, e.detail, e.location) == (
            record["status"],
            doc["error"],
            doc.get("detail"),
            doc.get("location"),
        ), record["name"]
        if record["status"] in by_status:
            assert isinstance(e, by_status[record["status"]]), record["name"]
        errors_seen += 1
    assert [(r.method, r.target) for r in server.received] == [
        (r["method"], r["path"]) for r in records
    ]
    assert len(records) > 100 and errors_seen > 40
    print(f"replayed {len(records)} recorded answers, {errors_seen} of them errors")


def test_success_body_is_parsed_and_request_is_plain_json(serve, transcript):
    server = serve([transcript["put_config_identical_again"]])
    value = json.loads(transcript["put_config_identical_again"]["request_body"])
    assert UnitClient(server.address).put("/config", value) == {"success": "Reconfiguration done."}
    req = server.received[0]
    # Unit's control API does not support chunked bodies: a Content-Length body is required.
    assert "transfer-encoding" not in req.headers
    assert int(req.headers["content-length"]) == len(req.body)
    assert req.headers["content-type"] == "application/json"
    assert json.loads(req.body) == value


def test_segments_are_percent_encoded_like_the_recording(serve, transcript):
    record = transcript["h3_get_unix_listener_encoded_slashes"]
    server = serve([record])
    key = "unix:/opt/unit-demo/hosts/h3/listener.sock"
    assert UnitClient(server.address).get(["config", "listeners", key]) == {"pass": "routes/main"}
    assert server.received[0].target == record["path"]
    assert unit_path("config", "routes", 0, "match") == "/config/routes/0/match"
    assert unit_path("config", "listeners", "[::1]:80") == "/config/listeners/[::1]:80"


def test_overlong_request_gets_no_answer_and_the_message_says_why(serve, transcript):
    record = transcript["long_path_1100B"]
    server = serve([record])
    with pytest.raises(errors.UnitUnreachable) as info:
        UnitClient(server.address).get(record["path"])
    assert "1024 bytes" in str(info.value)
    assert f"this path alone is {len(record['path'])} bytes" in str(info.value)


def test_timeout_when_the_socket_never_answers(serve):
    server = serve(hold=True)
    started = time.monotonic()
    with pytest.raises(errors.UnitUnreachable, match=r"did not answer GET /config within 0.3s"):
        UnitClient(server.address, timeout=0.3).get()
    elapsed = time.monotonic() - started
    assert server.got_request.is_set()
    assert 0.25 < elapsed < 3, elapsed


def fill_backlog(path) -> tuple[socket.socket, list[socket.socket]]:
    """A unix listener that never accepts, with its backlog full: one more connect gets EAGAIN."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(0)
    queued = []
    for _ in range(64):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        queued.append(s)
        try:
            s.connect(str(path))
        except BlockingIOError:
            return listener, queued
    raise AssertionError("the backlog never filled")


def test_full_backlog_is_a_connect_timeout(sock_dir):
    listener, queued = fill_backlog(sock_dir / "busy.sock")
    started = time.monotonic()
    expected = r"did not accept a connection within 0\.3s"
    try:
        with pytest.raises(errors.UnitUnreachable, match=expected):
            UnitClient(f"unix:{sock_dir}/busy.sock", timeout=0.3).get()
    finally:
        for s in [listener, *queued]:
            s.close()
    assert 0.25 < time.monotonic() - started < 3


def test_full_backlog_waits_for_room(sock_dir, transcript):
    # Linux fails a non-blocking AF_UNIX connect with EAGAIN while the backlog is full; the
    # client must wait for room (within its timeout) rather than call Unit unreachable.
    listener, queued = fill_backlog(sock_dir / "busy.sock")
    answer = connector_servers.recorded_bytes(transcript["get_config_fresh"])

    def drain_then_answer():
        listener.settimeout(5)
        for s in queued:
            s.close()  # the fillers leave the queue as EOFs; the client's request is the one
        while True:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5)
                if connector_servers.read_request(conn) is not None:
                    conn.sendall(answer)
                    return

    worker = threading.Timer(0.2, drain_then_answer)
    worker.start()
    try:
        assert UnitClient(f"unix:{sock_dir}/busy.sock", timeout=5).get()["routes"] == []
    finally:
        worker.join(5)
        for s in [listener, *queued]:
            s.close()


def test_missing_socket_names_the_path(sock_dir):
    path = sock_dir / "gone.sock"
    with pytest.raises(errors.UnitUnreachable, match=f"socket {path} does not exist"):
        UnitClient(f"unix:{path}").get()


def test_refused_on_a_dead_unix_socket(sock_dir):
    path = sock_dir / "dead.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # the file exists, nothing listens: ECONNREFUSED
    try:
        with pytest.raises(errors.UnitUnreachable, match="refused the connection"):
            UnitClient(f"unix:{path}", timeout=2).delete("/config/listeners")
    finally:
        dead.close()


def test_refused_on_tcp():
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.bind(("127.0.0.1", 0))  # bound, not listening: the port is ours and refuses
    port = held.getsockname()[1]
    try:
        with pytest.raises(errors.UnitUnreachable, match=f"127.0.0.1:{port} refused"):
            UnitClient(f"127.0.0.1:{port}", timeout=2).get()
    finally:
        held.close()


@pytest.mark.parametrize("form", ["{}", "http://{}", "http://{}/"])
def test_tcp_variant(serve, transcript, form):
    server = serve(
        [transcript["get_config_fresh"], transcript["h3_put_json_duplicate_keys"]], tcp=True
    )
    client = UnitClient(form.format(server.address), timeout=5)
    assert client.get() == {"listeners": {}, "routes": [], "applications": {}}
    with pytest.raises(errors.UnitInvalidJSON):
        client.put("/config", {})


def test_proxy_environment_is_ignored(serve, transcript, monkeypatch):
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    server = serve([transcript["get_config_fresh"]], tcp=True)
    assert UnitClient(server.address, timeout=5).get() == {
        "listeners": {},
        "routes": [],
        "applications": {},
    }


def test_answers_that_are_not_unit_json(serve):
    ok = {"status_line": "HTTP/1.1 200 OK", "headers": {"Content-Length": "5"}}
    bad = {"status_line": "HTTP/1.1 502 Bad Gateway", "headers": {"Content-Length": "5"}}
    server = serve([{**ok, "status": 200, "response_body": "hello"}])
    with pytest.raises(errors.UnitError, match="but no JSON") as info:
        UnitClient(server.address).get()
    assert not isinstance(info.value, errors.UnitRejected)
    server = serve([{**bad, "status": 502, "response_body": "oops!"}])
    with pytest.raises(errors.UnitRejected, match="oops") as info:
        UnitClient(server.address).get()
    assert type(info.value) is errors.UnitRejected and info.value.status == 502


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:/var/run/control.unit.sock", Address(socket_path="/var/run/control.unit.sock")),
        ("unix:///run/a.sock", Address(socket_path="/run/a.sock")),
        ("/run/a.sock", Address(socket_path="/run/a.sock")),
        ("127.0.0.1:8080", Address(host="127.0.0.1", port=8080)),
        ("http://127.0.0.1:8080", Address(host="127.0.0.1", port=8080)),
        ("[::1]:8080", Address(host="::1", port=8080)),
    ],
)
def test_addresses(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text", ["", "unix:", "127.0.0.1", "https://127.0.0.1:1", "127.0.0.1:99999", "h:1/config"]
)
def test_bad_addresses_are_refused_clearly(text):
    with pytest.raises(ValueError, match=r"\S"):
        UnitClient(text)


def test_bad_paths_and_timeouts_are_refused():
    with pytest.raises(ValueError, match="starts with '/'"):
        UnitClient("unix:/nowhere.sock").get("config")
    with pytest.raises(ValueError, match="timeout"):
        UnitClient("unix:/nowhere.sock", timeout=0)


def test_values_unit_would_refuse_are_refused_before_sending(serve):
    server = serve()
    with pytest.raises(ValueError, match="JSON compliant"):
        UnitClient(server.address).put("/config/settings", {"x": float("nan")})
    assert server.received == []
