"""unit_p2p_publish through ansible-playbook and ad hoc, against 3 real agents on loopback.

Each agent is a ``unit-p2p agent`` process with its own Unit emulator; nodes 1 and 2 bootstrap
from node 0. Ansible runs with a local connection against node 0's API socket: check mode
(nothing published), a real publish with ``wait: true`` (all three Units hold the config), the
same again (``changed: false``), the ad-hoc form by the module's short name, and the failures
when Unit rejects the config or is down. Then TLS bundles: published from a file on the host,
rotated under the same NAME from another host, a mismatched one refused, and
``unit_p2p_info`` reporting the head's certificate; no line of a private key in any output.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ansible_helpers import REPO, ad_hoc_result, run_ansible, tool, unix_get, wait_for

pytestmark = pytest.mark.slow

MESH = "TESTMESH"
NEW_CONFIG = {
    "listeners": {"127.0.0.1:28080": {"pass": "routes"}},
    "routes": [{"match": {"uri": "/healthz"}, "action": {"return": 204}},
               {"action": {"return": 301, "location": "/v2"}}],
    "applications": {},
}

PLAYBOOK = """\
- name: Publish through the local unit-p2p agent
  hosts: localhost
  gather_facts: false
  module_defaults:
    group/unit_p2p.mesh.agent:
      socket: "{{ agent_socket }}"
  tasks:
    - name: publish
      unit_p2p.mesh.unit_p2p_publish:
        config: "{{ unit_config }}"
        wait: true
        timeout: 60
"""


def _ad_hoc(socket, args: str = "") -> list[str]:
    return [tool("ansible"), "localhost", "-i", "localhost,", "-c", "local",
            "-m", "unit_p2p_publish", "-a", f"socket={socket} {args}".strip()]


def _ad_hoc_json(args: str) -> list[str]:
    return [tool("ansible"), "localhost", "-i", "localhost,", "-c", "local",
            "-m", "unit_p2p_publish", "-a", args]


def test_publish_check_wait_idempotent_and_ad_hoc(agent_fleet, ansible_env, tmp_path):
    nodes = agent_fleet.prepare(3)
    for node in nodes:
        args = ["--unit", f"unix:{node.unit_sock}", "--api", f"unix:{node.api_sock}",
                "--state-dir", str(node.dir / "state"), "--key", str(node.key),
                "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--trust", "any",
                "--mesh", MESH]
        if node.index:
            args += ["--bootstrap", nodes[0].multiaddr]
        agent_fleet.start_agent(node, args)
    agent_fleet.wait_connected()
    before = [node.unit_config() for node in nodes]

    playbook = tmp_path / "publish.yml"
    playbook.write_text(PLAYBOOK)
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps({"agent_socket": str(nodes[0].api_sock),
                                 "unit_config": NEW_CONFIG}))
    argv = [tool("ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook),
            "-e", f"@{extra}"]

    # 1. check mode: a publish would change things, nothing is published anywhere
    proc = run_ansible([*argv, "--check", "--diff"], ansible_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, checked = ad_hoc_result(proc)
    assert checked["changed"] is True, checked
    assert '"return": 204' in proc.stdout  # the diff shows the new config
    assert [node.unit_config() for node in nodes] == before
    assert all(node.status()["head"] is None for node in nodes)

    # 2. for real, waiting for every peer
    started = time.monotonic()
    proc = run_ansible(argv, ansible_env)
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, published = ad_hoc_result(proc)
    print(f"\nansible-playbook: unit_p2p_publish with wait on 3 agents: {wall:.2f} s wall")
    assert published["changed"] is True
    assert published["converged"] is True
    assert {node.peer_id for node in nodes[1:]} <= set(published["peers"]["applied"]), published
    assert published["peers"]["failed"] == {} and published["peers"]["pending"] == []
    assert "diff" not in published
    assert [node.unit_config() for node in nodes] == [NEW_CONFIG] * 3
    revision = published["revision"]
    assert revision.endswith("@" + nodes[0].peer_id)
    assert {node.status()["head"]["revision"] for node in nodes} == {revision}

    # 3. the same config again: nothing changes, nothing is announced
    proc = run_ansible(argv, ansible_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status, again = ad_hoc_result(proc)
    assert (status, again["changed"]) == ("SUCCESS", False), again
    assert again["revision"] == revision

    # 4. ad hoc on another node, by the short name the checkout's ansible.cfg resolves
    proc = run_ansible(_ad_hoc(nodes[1].api_sock, "wait=true timeout=60"), ansible_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status, ad_hoc = ad_hoc_result(proc)
    assert (status, ad_hoc["changed"]) == ("SUCCESS", False), ad_hoc
    assert ad_hoc["revision"] == revision
    assert ad_hoc["converged"] is True

    # 5. the real failure paths: Unit rejects the given config, then Unit is down
    bad = json.dumps({"socket": str(nodes[1].api_sock),
                      "config": dict(NEW_CONFIG,
                                     listeners={"127.0.0.1:28080": {"pass": "nowhere"}})})
    status, rejected = ad_hoc_result(run_ansible(_ad_hoc_json(bad), ansible_env))
    assert status == "FAILED!"
    assert rejected["msg"].startswith("NGINX Unit rejected the given config"), rejected
    assert [node.unit_config() for node in nodes] == [NEW_CONFIG] * 3
    emulator = nodes[2].procs[0]
    emulator.terminate()
    emulator.wait(timeout=15)
    status, down = ad_hoc_result(run_ansible(_ad_hoc(nodes[2].api_sock), ansible_env))
    assert status == "FAILED!"
    assert down["msg"].startswith("the unit-p2p agent cannot reach NGINX Unit"), down


def test_ad_hoc_without_agent_fails_clearly(ansible_env, tmp_path):
    missing = tmp_path / "api.sock"
    proc = run_ansible(_ad_hoc(missing), ansible_env)
    assert proc.returncode != 0
    status, result = ad_hoc_result(proc)
    assert status == "FAILED!"
    assert result["msg"] == f"agent socket {missing} not found: is unit-p2p running?"


MAKE_BUNDLE = REPO / "molecule" / "mesh" / "files" / "make_bundle.py"
TLS_CONFIG = {
    "listeners": {"127.0.0.1:28443": {"pass": "routes", "tls": {"certificate": "site"}}},
    "routes": [{"action": {"return": 200}}],
    "applications": {},
}


def _bundle(directory, name: str) -> dict:
    """A test CA (once) and a bundle signed by it; the molecule scenario's maker, not a copy."""
    made = subprocess.run([sys.executable, str(MAKE_BUNDLE), str(directory), name,
                           "mesh.unit-p2p.test"], capture_output=True, text=True, timeout=60,
                          check=True)
    return json.loads(made.stdout)


def _key_lines(bundle_path) -> list[str]:
    """The base64 lines of a bundle's private key: none may appear anywhere else."""
    text = Path(bundle_path).read_text()
    key = text[text.index("-----BEGIN PRIVATE KEY-----"):]
    return [line for line in key.splitlines() if line and not line.startswith("-----")]


def _unit_certificates(node) -> dict:
    status, certificates = unix_get(node.unit_sock, "/certificates")
    assert status == 200, certificates
    return certificates


def test_tls_bundles_published_rotated_and_refused_through_the_module(agent_fleet, ansible_env,
                                                                       tmp_path):
    nodes = agent_fleet.prepare(3)
    # bundles travel to the peers in trusted_peers only
    trusted = [arg for node in nodes for arg in ("--trusted-peer", node.peer_id)]
    for node in nodes:
        args = ["--unit", f"unix:{node.unit_sock}", "--api", f"unix:{node.api_sock}",
                "--state-dir", str(node.dir / "state"), "--key", str(node.key),
                "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--trust", "allowlist",
                *trusted, "--mesh", MESH]
        if node.index:
            args += ["--bootstrap", nodes[0].multiaddr]
        agent_fleet.start_agent(node, args)
    agent_fleet.wait_connected()
    tls = tmp_path / "tls"
    first, second = _bundle(tls, "site-1"), _bundle(tls, "site-2")
    secrets = _key_lines(first["bundle"]) + _key_lines(second["bundle"])

    def module(name: str, args: dict, *flags: str) -> tuple[str, dict, str]:
        proc = run_ansible([tool("ansible"), "localhost", "-i", "localhost,", "-c", "local",
                            "-m", name, "-a", json.dumps(args), *flags], ansible_env)
        output = proc.stdout + proc.stderr
        assert not [line for line in secrets if line in output], output[-3000:]
        status, result = ad_hoc_result(proc)
        return status, result, output

    def served_everywhere(fingerprint: str) -> None:
        for node in nodes:
            wait_for(lambda n=node: [c.get("fingerprint") for c in
                                     n.status().get("certificates") or []] == [fingerprint],
                     30, f"node {node.index} to report {fingerprint}", node.logs)
            wait_for(lambda n=node: len(_unit_certificates(n)) == 1, 30,
                     f"node {node.index}'s Unit to hold one bundle", node.logs)
            (held,) = _unit_certificates(node)
            assert held.startswith("site"), held
            listener = node.unit_config()["listeners"]["127.0.0.1:28443"]
            assert listener["tls"]["certificate"] in (held, [held]), listener

    # 1. check mode with diff: the fingerprint that would come, nothing published
    status, checked, output = module("unit_p2p_publish", {
        "socket": str(nodes[0].api_sock), "config": TLS_CONFIG,
        "certificates": {"site": {"path": first["bundle"]}}}, "--check", "--diff")
    assert status in ("CHANGED", "SUCCESS") and checked["changed"] is True, checked
    assert first["fingerprint"] in output
    assert all(node.status()["head"] is None for node in nodes)

    # 2. published from a file on the host, waited for: every Unit holds it, every agent reports it
    status, published, _ = module("unit_p2p_publish", {
        "socket": str(nodes[0].api_sock), "config": TLS_CONFIG, "wait": True, "timeout": 60,
        "certificates": {"site": {"path": first["bundle"]}}})
    assert status == "CHANGED" and published["converged"] is True, published
    assert [c["fingerprint"] for c in published["certificates"]] == [first["fingerprint"]]
    assert published["certificates"][0]["expires_in"] > 86400
    served_everywhere(first["fingerprint"])

    # 3. rotation under the same NAME from another host, the bundle given as text
    status, rotated, output = module("unit_p2p_publish", {
        "socket": str(nodes[1].api_sock), "config": TLS_CONFIG, "wait": True, "timeout": 60,
        "certificates": {"site": {"content": Path(second["bundle"]).read_text()}}}, "--diff")
    assert status == "CHANGED" and rotated["converged"] is True, rotated
    assert first["fingerprint"] in output and second["fingerprint"] in output  # the diff
    served_everywhere(second["fingerprint"])

    # 4. a bundle whose key is not its certificate's: refused before anything changes
    first_text, second_text = Path(first["bundle"]).read_text(), Path(second["bundle"]).read_text()
    mismatched = (first_text[:first_text.index("-----BEGIN PRIVATE KEY-----")]
                  + second_text[second_text.index("-----BEGIN PRIVATE KEY-----"):])
    head = nodes[2].status()["head"]["revision"]
    status, refused, _ = module("unit_p2p_publish", {
        "socket": str(nodes[2].api_sock), "config": TLS_CONFIG,
        "certificates": {"site": {"content": mismatched}}})
    assert status == "FAILED!"
    assert refused["msg"].startswith(
        "the unit-p2p agent refused the request (bad_certificate; nothing was published): "
        "certificate site:"), refused
    assert {node.status()["head"]["revision"] for node in nodes} == {head}

    # 5. unit_p2p_info: the head's certificate with its expiry
    status, info, _ = module("unit_p2p_info", {"socket": str(nodes[2].api_sock)})
    assert status == "SUCCESS", info
    assert [c["fingerprint"] for c in info["certificates"]] == [second["fingerprint"]]
    assert info["certificates"][0]["expires_in"] > 86400
