# -*- coding: utf-8 -*-
# Copyright: unit-p2p contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""unit_p2p_publish against a real HTTP server on a unix socket that answers like docs/api.md.

The server is a small model of the agent's POST /v1/publish (head, digests, dry runs, per-peer
reports, a real blocking wait); the module's run() talks to it through ansible.module_utils.urls
exactly as it talks to the agent. The real agent is exercised in tests/ansible/test_integration.py.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from socketserver import ThreadingUnixStreamServer

import pytest

from ansible_collections.unit_p2p.mesh.plugins.modules import unit_p2p_publish as mod

ORIGIN = "12D3KooWOrigin"
PEER_A = "12D3KooWPeerA"
PEER_B = "12D3KooWPeerB"
CONFIG_1 = {"listeners": {"*:8080": {"pass": "routes"}}, "routes": [{"action": {"return": 200}}]}
CONFIG_2 = {"listeners": {"*:8080": {"pass": "routes"}}, "routes": [{"action": {"return": 204}}]}


def _digest(config):
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


class FakeAgent:
    """State behind the socket: the local Unit config, the mesh head and how peers behave."""

    def __init__(self):
        self.lock = threading.Lock()
        self.local = dict(CONFIG_1)
        self.head = None  # (counter, config)
        self.unit_reachable = True
        # peer id -> "applied" | "pending" | "failed:<reason>"
        self.peers = {ORIGIN: "applied", PEER_A: "applied", PEER_B: "applied"}
        self.requests = []
        # the rollout a staged publish reports (docs/api.md GET /v1/rollout)
        self.rollout = {"state": "complete", "wave": 2, "reason": None, "reverted_by": None,
                        "waves": [{"wave": 1, "open": True, "hosts": [ORIGIN],
                                   "applied": [ORIGIN], "failed": {}, "pending": []},
                                  {"wave": 2, "open": True, "hosts": [PEER_A, PEER_B],
                                   "applied": [PEER_A, PEER_B], "failed": {}, "pending": []}]}

    def publish(self, body):
        with self.lock:
            self.requests.append(body)
            if not self.unit_reachable:
                return 503, {"error": "unit_unreachable",
                             "detail": "connect to unix:/var/run/control.unit.sock: refused"}
            config = body.get("config")
            if config is not None and "bogus" in config:
                return 422, {"error": "unit_rejected",
                             "detail": 'Unit 400 on PUT /config: Invalid configuration. Unknown '
                                       'parameter "bogus".'}
            for name, pem in sorted((body.get("certificates") or {}).items()):
                if "MISMATCH" in pem:
                    return 422, {"error": "bad_certificate",
                                 "detail": "certificate %s: the private key does not match the "
                                           "leaf certificate" % name}
            candidate = self.local if config is None else config
            head_config = self.head[1] if self.head else None
            changed = head_config is None or _digest(candidate) != _digest(head_config)
            revision = "%d@%s" % (self.head[0], ORIGIN) if self.head else None
            answer = {"changed": changed, "revision": revision, "digest": _digest(candidate),
                      "size": len(json.dumps(candidate))}
            certificates = body.get("certificates")
            if certificates is not None:
                # the agent reports only public fields of a bundle; a stand-in fingerprint here
                answer["certificates"] = [
                    {"name": name, "subject": "CN=" + name, "issuer": "CN=Test CA",
                     "not_after": "2030-01-01T00:00:00Z",
                     "fingerprint": "sha256:" + hashlib.sha256(pem.encode()).hexdigest()}
                    for name, pem in sorted(certificates.items())]
            if body.get("dry_run"):
                answer["before"] = head_config if head_config is not None else self.local
                answer["after"] = candidate
                return 200, answer
            before = head_config if head_config is not None else self.local
            self.local = candidate
            if changed:
                counter = self.head[0] + 1 if self.head else 1
                self.head = (counter, candidate)
                answer["revision"] = "%d@%s" % (counter, ORIGIN)
            if body.get("diff"):
                answer["before"] = before
                answer["after"] = candidate
            peers = dict(self.peers)
        applied = sorted(p for p, s in peers.items() if s == "applied")
        failed = dict((p, s.split(":", 1)[1]) for p, s in peers.items() if s.startswith("failed:"))
        pending = sorted(p for p, s in peers.items() if s == "pending")
        if body.get("wait") and pending:
            # The agent blocks for the whole timeout when peers stay silent.
            time.sleep(body.get("timeout", 30))
        answer["peers"] = {"applied": applied, "failed": failed, "pending": pending}
        if body.get("stages") and changed:
            answer["rollout"] = self.rollout
        if body.get("wait"):
            answer["converged"] = not failed and not pending
        return 200, answer


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # pylint: disable=invalid-name
        agent = self.server.agent
        if self.path == "/v1/status":
            with agent.lock:
                head = {"revision": "%d@%s" % (agent.head[0], ORIGIN)} if agent.head else None
            self._answer(200, {"peer_id": ORIGIN, "head": head})
        else:
            self._answer(404, {"error": "not_found", "detail": self.path})

    def do_POST(self):  # pylint: disable=invalid-name
        agent = self.server.agent
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            status, answer = 400, {"error": "bad_request", "detail": "body is not JSON"}
        else:
            if self.path == "/v1/publish":
                status, answer = agent.publish(body)
            else:
                status, answer = 404, {"error": "not_found", "detail": self.path}
        self._answer(status, answer)

    def _answer(self, status, answer):
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass  # a unix-socket client has no address to log


class _Server(ThreadingUnixStreamServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that gave up waiting (the timeout test) is expected; anything else is not.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            ThreadingUnixStreamServer.handle_error(self, request, client_address)


@pytest.fixture
def agent(tmp_path):
    path = str(tmp_path / "api.sock")
    server = _Server(path, _Handler)
    server.agent = FakeAgent()
    server.agent.socket = path
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server.agent
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _params(agent, **overrides):
    params = {"socket": agent.socket, "config": None, "wait": False, "timeout": 30,
              "min_peers": None, "require_all": True}
    params.update(overrides)
    return params


def _run(agent, check_mode=False, diff=False, **overrides):
    return mod.run(_params(agent, **overrides), mod.AgentAPI(agent.socket),
                   check_mode=check_mode, diff=diff)


def test_publish_local_config_then_same_again_is_unchanged(agent):
    first = _run(agent)
    assert first["changed"] is True
    assert first["revision"] == "1@" + ORIGIN
    assert first["digest"] == _digest(CONFIG_1)
    assert "published revision 1@" in first["msg"]
    assert "diff" not in first

    second = _run(agent)
    assert second["changed"] is False
    assert second["revision"] == "1@" + ORIGIN
    assert "nothing changed" in second["msg"]
    assert agent.head[0] == 1


def test_given_config_is_applied_and_published(agent):
    result = _run(agent, config=CONFIG_2)
    assert result["changed"] is True
    assert result["digest"] == _digest(CONFIG_2)
    assert agent.requests[-1]["config"] == CONFIG_2
    assert agent.local == CONFIG_2


def test_check_mode_asks_for_a_dry_run_and_publishes_nothing(agent):
    result = _run(agent, check_mode=True, config=CONFIG_2)
    assert result["changed"] is True
    assert "would" in result["msg"]
    assert agent.requests[-1]["dry_run"] is True
    assert agent.head is None
    assert agent.local == CONFIG_1
    assert "diff" not in result

    _run(agent, config=CONFIG_2)
    again = _run(agent, check_mode=True, config=CONFIG_2)
    assert again["changed"] is False
    assert agent.head[0] == 1


def test_diff_only_in_diff_mode(agent):
    checked = _run(agent, check_mode=True, diff=True, config=CONFIG_2)
    assert checked["diff"]["before"] == CONFIG_1
    assert checked["diff"]["after"] == CONFIG_2

    plain = _run(agent, config=CONFIG_1)
    assert "diff" not in plain
    assert "diff" not in agent.requests[-1]

    with_diff = _run(agent, diff=True, config=CONFIG_2)
    assert agent.requests[-1]["diff"] is True
    assert with_diff["diff"]["before"] == CONFIG_1
    assert with_diff["diff"]["after"] == CONFIG_2

    unchanged = _run(agent, diff=True, config=CONFIG_2)
    assert unchanged["changed"] is False
    assert "diff" not in unchanged


def test_wait_reports_every_peer_applied(agent):
    result = _run(agent, wait=True, timeout=5)
    assert result["converged"] is True
    assert result["peers"] == {"applied": sorted([ORIGIN, PEER_A, PEER_B]), "failed": {},
                               "pending": []}
    assert "applied on 3 of 3 peers" in result["msg"]
    assert agent.requests[-1]["wait"] is True
    assert agent.requests[-1]["timeout"] == 5


def test_wait_timeout_fails_listing_pending_and_failed_peers(agent):
    agent.peers[PEER_A] = "pending"
    agent.peers[PEER_B] = "failed:unit_rejected: port 8080 is busy"
    started = time.monotonic()
    with pytest.raises(mod.PublishFailed) as caught:
        _run(agent, wait=True, timeout=1)
    assert time.monotonic() - started >= 1  # the module waited for the agent's whole timeout
    message = str(caught.value)
    assert "did not converge within 1 s" in message
    assert "pending: " + PEER_A in message
    assert PEER_B + " (unit_rejected: port 8080 is busy)" in message
    assert caught.value.result["changed"] is True
    assert caught.value.result["peers"]["pending"] == [PEER_A]


def test_quorum_wait_passes_min_peers(agent):
    result = _run(agent, wait=True, require_all=False, min_peers=2)
    assert result["converged"] is True
    assert agent.requests[-1]["min_peers"] == 2
    assert agent.requests[-1]["require_all"] is False


def test_agent_that_does_not_answer_in_time(agent):
    agent.peers[PEER_A] = "pending"  # the fake agent then blocks for the whole wait
    api = mod.AgentAPI(agent.socket)
    with pytest.raises(mod.AgentError, match="did not answer within 0.5 s"):
        api.publish({"wait": True, "timeout": 2}, timeout=0.5)


def test_min_peers_with_require_all_is_refused_before_calling(agent):
    with pytest.raises(mod.AgentError, match="min_peers needs require_all=false"):
        _run(agent, wait=True, min_peers=2)
    assert not agent.requests


def test_unit_unreachable_fails_clearly(agent):
    agent.unit_reachable = False
    with pytest.raises(mod.AgentError, match="cannot reach NGINX Unit") as caught:
        _run(agent)
    assert caught.value.status == 503
    assert "control.unit.sock" in str(caught.value)


def test_rejected_config_fails_and_changes_nothing(agent):
    with pytest.raises(mod.AgentError, match="NGINX Unit rejected the given config") as caught:
        _run(agent, config={"bogus": True})
    assert caught.value.status == 422
    assert 'Unknown parameter "bogus"' in str(caught.value)
    assert agent.head is None
    assert agent.local == CONFIG_1


def test_missing_socket_names_it(tmp_path):
    path = str(tmp_path / "nothing-here.sock")
    with pytest.raises(mod.AgentError) as caught:
        mod.run({"socket": path, "wait": True, "timeout": 5}, mod.AgentAPI(path))
    assert str(caught.value) == "agent socket %s not found: is unit-p2p running?" % path


def test_stale_socket_says_nobody_listens(tmp_path):
    path = str(tmp_path / "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # left behind by a dead agent: the file exists, nothing accepts
    stale.close()
    with pytest.raises(mod.AgentError, match="cannot connect to agent socket .*is unit-p2p running"):
        mod.run({"socket": path}, mod.AgentAPI(path))


def test_path_that_is_not_a_socket(tmp_path):
    path = tmp_path / "api.sock"
    path.write_text("")
    with pytest.raises(mod.AgentError, match="is not a unix socket"):
        mod.run({"socket": str(path)}, mod.AgentAPI(str(path)))


def _main(agent, tmp_path, args):
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, socket=agent.socket)}))
    # run as a script, the module finds the collection's module_utils the way Ansible's
    # bundling would: from the directory holding ansible_collections/
    root = os.path.abspath(os.path.join(os.path.dirname(mod.__file__), *[".."] * 5))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, mod.__file__, str(args_file)], capture_output=True,
                          text=True, timeout=60, check=False, env=env)
    return proc.returncode, json.loads(proc.stdout)


def test_main_wires_check_mode_and_diff_from_ansible(agent, tmp_path):
    code, out = _main(agent, tmp_path, {"_ansible_check_mode": True, "_ansible_diff": True})
    assert code == 0, out
    assert out["changed"] is True
    assert out["diff"]["after"] == CONFIG_1
    assert agent.head is None

    code, out = _main(agent, tmp_path, {"wait": True})
    assert code == 0, out
    assert out["changed"] is True
    assert out["converged"] is True
    assert "diff" not in out


def test_main_failure_carries_the_peers(agent, tmp_path):
    agent.peers[PEER_A] = "pending"
    code, out = _main(agent, tmp_path, {"wait": True, "timeout": 1})
    assert code == 1
    assert out["failed"] is True
    assert out["peers"]["pending"] == [PEER_A]
    assert "did not converge" in out["msg"]


def test_main_keeps_bundles_and_their_paths_out_of_its_output(agent, tmp_path):
    key = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDsecretkeybytes"
    bundle = ("-----BEGIN CERTIFICATE-----\nMIIDleaf\n-----END CERTIFICATE-----\n"
              "-----BEGIN PRIVATE KEY-----\n" + key + "\n-----END PRIVATE KEY-----\n")
    path = tmp_path / "rotated-bundle.pem"
    path.write_text(bundle)
    code, out = _main(agent, tmp_path, {
        "_ansible_diff": True, "config": CONFIG_2,
        "certificates": {"site": {"content": bundle}, "next": {"path": str(path)}}})
    assert code == 0, out
    assert agent.requests[-1]["certificates"] == {"site": bundle, "next": bundle}
    assert [c["name"] for c in out["certificates"]] == ["next", "site"]
    text = json.dumps(out)
    assert key not in text and "PRIVATE KEY" not in text and str(path) not in text
    # the NAMEs stay readable, every value (content and path alike) is masked
    masked = "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
    assert out["invocation"]["module_args"]["certificates"] == {"site": {"content": masked},
                                                                "next": {"path": masked}}

    code, out = _main(agent, tmp_path, {"certificates": {"site": {"path": str(tmp_path / "gone.pem")}}})
    assert code == 1
    assert out["msg"] == "certificates.site: the file in path does not exist on the managed host"

    code, out = _main(agent, tmp_path, {"rollback": "previous",
                                        "js_modules": {"auth": {"content": "export default {}"}}})
    assert code == 1
    assert "mutually exclusive" in out["msg"] and "js_modules" in out["msg"]


def test_a_bundle_the_agent_refuses_is_named_and_not_taken_for_unit_rejecting(agent):
    with pytest.raises(mod.AgentError) as caught:
        _run(agent, config=CONFIG_2, certificates={"site": {"content": "MISMATCH"}})
    assert str(caught.value) == (
        "the unit-p2p agent refused the request (bad_certificate; nothing was published): "
        "certificate site: the private key does not match the leaf certificate")
    assert caught.value.status == 422 and caught.value.code == "bad_certificate"
    assert agent.head is None and agent.local == CONFIG_1


def test_staged_rollout_options_reach_the_agent_and_its_state_comes_back(agent):
    result = _run(agent, config=CONFIG_2, stages=[1, "50%", "100%"], max_failures=1,
                  auto_revert=True, wait=True, timeout=5)
    sent = agent.requests[-1]
    assert (sent["stages"], sent["max_failures"], sent["auto_revert"]) == (
        [1, "50%", "100%"], 1, True)
    assert result["rollout"]["state"] == "complete" and result["converged"] is True
    plain = _run(agent, config=CONFIG_1)
    assert "stages" not in agent.requests[-1] and "rollout" not in plain


def test_a_halted_rollout_fails_the_task_naming_the_wave_and_the_gate(agent):
    agent.rollout = {"state": "halted", "wave": 2, "reverted_by": "3@" + ORIGIN,
                     "reason": "1 host(s) failed, more than max_failures 0",
                     "waves": [{"wave": 1, "open": True, "hosts": [ORIGIN], "applied": [ORIGIN],
                                "failed": {}, "pending": []},
                               {"wave": 2, "open": True, "hosts": [PEER_A], "applied": [],
                                "failed": {PEER_A: "health_gate: GET http://127.0.0.1:8080/ "
                                                   "answered 500, expected 2xx (try 1 of 3)"},
                                "pending": []}]}
    with pytest.raises(mod.PublishFailed) as caught:
        _run(agent, config=CONFIG_2, stages=[1, "100%"], auto_revert=True, wait=True, timeout=5)
    message = str(caught.value)
    assert "halted at wave 2" in message and "answered 500" in message and PEER_A in message
    assert "published again as 3@" + ORIGIN in message
    assert caught.value.result["rollout"]["state"] == "halted"


def test_stages_with_rollback_is_refused_before_calling(agent):
    with pytest.raises(mod.AgentError, match="mutually exclusive: stages|rollback"):
        _run(agent, rollback="previous", stages=["100%"])
    assert not agent.requests
