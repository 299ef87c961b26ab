"""ApiClient against a small real HTTP server answering as docs/api.md says the agent does."""

from __future__ import annotations

import http.server
import json
import socket
import socketserver
import threading
import time

import pytest

from unit_p2p.api.client import AgentUnreachable, ApiClient
from unit_p2p.errors import ApiError

PEER = "12D3KooWExamplePeer"
REV = f"8@{PEER}"
DIGEST = "sha256:" + "ab" * 32
CONFIG = {"listeners": {"127.0.0.1:8080": {"pass": "routes"}}, "routes": []}

STATUS = {
    "peer_id": PEER,
    "mesh": "default",
    "version": "0.1.0",
    "uptime_s": 12.3,
    "listen_addrs": [f"/ip4/127.0.0.1/tcp/9461/p2p/{PEER}"],
    "head": None,
    "local": {"unit": "reachable", "digest": DIGEST, "in_sync": True},
    "last_error": None,
    "peers": {"connected": 0, "known": 0, "trusted": 0},
    "counters": {"applied": 0, "apply_failed": 0, "pulls_served": 0, "rejected": {}},
}
PEERS = {
    "peers": [
        {
            "peer_id": PEER,
            "connected": True,
            "trusted": True,
            "addrs": ["/ip4/127.0.0.1/tcp/9462"],
            "head": {"revision": REV, "digest": DIGEST},
            "report": {"revision": REV, "status": "applied", "reason": None},
        }
    ]
}
METRICS = "# TYPE unit_p2p_applied_total counter\nunit_p2p_applied_total 3.0\n"


class FakeAgent(http.server.BaseHTTPRequestHandler):
    """Answers the documented routes; ``self.server.state`` steers errors and delays."""

    def log_message(self, *args):  # keep pytest output clean; requests are recorded instead
        pass

    def answer(self, status: int, doc, content_type: str = "application/json") -> None:
        body = doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def fail(self, status: int, error: str, detail: str) -> None:
        self.answer(status, {"error": error, "detail": detail})

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def route(self, method: str) -> None:
        state = self.server.state
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        state["requests"].append((method, self.path, dict(self.headers), body))
        if state.get("token") and self.headers.get("Authorization") != f"Bearer {state['token']}":
            return self.fail(401, "unauthorized", "a bearer token is required on TCP")
        time.sleep(state.get("delay", 0))
        routes = {
            ("GET", "/v1/healthz"): lambda: {"ok": True, "peer_id": PEER, "unit": "reachable"},
            ("GET", "/v1/status"): lambda: STATUS,
            ("GET", "/v1/peers"): lambda: PEERS,
            ("GET", "/v1/config"): self.config,
            ("POST", "/v1/publish"): lambda: self.publish(body),
        }
        if (method, self.path) == ("GET", "/metrics"):
            return self.answer(200, METRICS, "text/plain; version=0.0.4")
        if self.path == "/v1/broken":
            return self.answer(502, "Bad gateway", "text/plain")
        if (method, self.path) not in routes:
            return self.fail(404, "not_found", f"no route {method} {self.path}")
        try:
            self.answer(200, routes[(method, self.path)]())
        except ApiError as e:
            self.fail(e.status, e.error, e.detail)

    def config(self):
        if self.server.state.get("unit_down"):
            raise ApiError(503, "unit_unreachable", "NGINX Unit did not answer within 10s")
        return {"config": CONFIG, "digest": DIGEST, "head": None, "in_sync": True}

    def publish(self, body: bytes):
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            raise ApiError(400, "bad_request", "the body is not JSON") from None
        if not isinstance(req.get("wait", False), bool):
            raise ApiError(400, "bad_request", "wait must be a boolean")
        if "bogus" in req.get("config", {}):
            raise ApiError(422, "unit_rejected", 'Unit: Unknown parameter "bogus".')
        doc = {
            "changed": not req.get("dry_run"),
            "revision": REV,
            "digest": DIGEST,
            "size": 77,
            "converged": bool(req.get("wait")),
            "peers": {"applied": [PEER] if req.get("wait") else [], "failed": {}, "pending": []},
        }
        if req.get("dry_run") or req.get("diff"):
            doc |= {"before": {}, "after": req.get("config", CONFIG)}
        return doc


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def agent(sock_dir):
    """``agent(tcp=False, **state)`` starts a FakeAgent and returns (address, state)."""
    servers = []

    def start(tcp: bool = False, **state):
        if tcp:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeAgent)
            address = f"http://127.0.0.1:{server.server_address[1]}"
        else:
            path = sock_dir / f"api{len(servers)}.sock"
            server = _UnixHTTPServer(str(path), FakeAgent)
            address = f"unix:{path}"
        server.daemon_threads = True
        server.state = {"requests": [], **state}
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return address, server.state

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_documented_reads(agent):
    address, state = agent()
    api = ApiClient(address, timeout=5)
    assert api.healthz() == {"ok": True, "peer_id": PEER, "unit": "reachable"}
    assert api.status() == STATUS
    assert api.peers() == PEERS
    assert api.config()["config"] == CONFIG
    assert api.metrics() == METRICS
    assert [(m, p) for m, p, _, _ in state["requests"]] == [
        ("GET", "/v1/healthz"),
        ("GET", "/v1/status"),
        ("GET", "/v1/peers"),
        ("GET", "/v1/config"),
        ("GET", "/metrics"),
    ]


def test_publish_sends_the_documented_request(agent):
    address, state = agent()
    api = ApiClient(address, timeout=5)
    answer = api.publish(CONFIG, wait=True, timeout=7, min_peers=2, require_all=False, diff=True)
    assert answer["revision"] == REV and answer["converged"] is True
    assert answer["after"] == CONFIG
    _, _, headers, body = state["requests"][-1]
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {
        "config": CONFIG,
        "wait": True,
        "timeout": 7,
        "dry_run": False,
        "min_peers": 2,
        "require_all": False,
        "diff": True,
    }
    # Without a config the agent publishes the local Unit's: the key is left out, not null.
    api.publish(dry_run=True)
    assert "config" not in json.loads(state["requests"][-1][3])


@pytest.mark.parametrize(
    ("call", "state", "status", "error"),
    [
        (lambda api: api.publish({"bogus": 1}), {}, 422, "unit_rejected"),
        (lambda api: api.config(), {"unit_down": True}, 503, "unit_unreachable"),
        (lambda api: api.publish(wait="yes"), {}, 400, "bad_request"),
        (lambda api: api._json("GET", "/v1/nope"), {}, 404, "not_found"),
        (lambda api: api._json("GET", "/v1/broken"), {}, 502, "http_502"),
    ],
)
def test_errors_carry_status_code_and_detail(agent, call, state, status, error):
    address, _ = agent(**state)
    with pytest.raises(ApiError) as info:
        call(ApiClient(address, timeout=5))
    assert (info.value.status, info.value.error) == (status, error)
    assert info.value.detail
    assert f"{status} {error}" in str(info.value)


def test_tcp_needs_the_token(agent):
    address, state = agent(tcp=True, token="s3cret")
    with pytest.raises(ApiError) as info:
        ApiClient(address, timeout=5).healthz()
    assert info.value.status == 401
    # as read from a token file, trailing newline included
    assert ApiClient(address, token="s3cret\n", timeout=5).healthz()["ok"] is True
    assert state["requests"][-1][2]["Authorization"] == "Bearer s3cret"
    bare = address.removeprefix("http://")  # the api_tcp setting's own form
    assert ApiClient(bare, token="s3cret", timeout=5).status() == STATUS


def test_publish_extends_the_read_timeout_by_its_timeout(agent):
    address, _ = agent(delay=1.0)
    api = ApiClient(address, timeout=0.5)
    with pytest.raises(AgentUnreachable, match=r"did not answer POST /v1/publish within 0\.7s"):
        api.publish(timeout=0.2)
    # The agent may take `timeout` seconds for a publish (applying it to the local Unit, and
    # with wait the peers); that is not a dead agent.
    assert api.publish(wait=True, timeout=3)["converged"] is True


def test_missing_socket_says_the_agent_may_not_be_running(sock_dir):
    path = sock_dir / "api.sock"
    with pytest.raises(AgentUnreachable) as info:
        ApiClient(f"unix:{path}").status()
    assert info.value.kind == "missing"
    assert str(path) in str(info.value)
    assert "agent may not be running" in str(info.value)


def test_refused(sock_dir):
    path = sock_dir / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # left over from a dead agent: the file exists, nobody listens
    try:
        with pytest.raises(AgentUnreachable, match="refused the connection") as info:
            ApiClient(f"unix:{path}", timeout=2).healthz()
        assert info.value.kind == "refused"
        assert "agent may not be running" in str(info.value)
    finally:
        stale.close()
