"""unit_p2p_publish through ansible-playbook and ad hoc, against 3 real agents on loopback.

Each agent is a ``unit-p2p agent`` process with its own Unit emulator; nodes 1 and 2 bootstrap
from node 0. Ansible runs with a local connection against node 0's API socket: check mode
(nothing published), a real publish with ``wait: true`` (all three Units hold the config), the
same again (``changed: false``), the ad-hoc form by the module's short name, and the failures
when Unit rejects the config or is down.
"""

from __future__ import annotations

import json
import time

import pytest
from ansible_helpers import ad_hoc_result, run_ansible, tool

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
