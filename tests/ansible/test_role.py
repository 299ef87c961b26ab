"""The role unit_p2p.mesh.agent on three local "hosts", then real agents run from what it wrote.

Systemd is not available here (molecule exercises the service part in containers), so the
role runs with ``unit_p2p_manage_service: false`` over local connections, each host with its own
directories, into this test's venv (where unit-p2p is installed). What is checked for real:
the identity key is created on the host, the settings file is accepted by ``unit-p2p agent``,
trusted_peers and bootstrap hold every host, a second run and a check-mode run change nothing,
and three agents started from those files (trust: allowlist) form a mesh that takes a publish
made with unit_p2p_publish (the host given a health gate by host vars runs it and reports its
failure); with one of them down, a wait names it as pending.
"""

from __future__ import annotations

import grp
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from ansible_helpers import REPO, ad_hoc_result, recap, run_ansible, tool, unix_get, wait_for

from unit_p2p.fleet import free_ports

pytestmark = pytest.mark.slow

ROLE = REPO / "ansible_collections/unit_p2p/mesh/roles/agent"
ROLE_VARS = ROLE / "vars" / "main.yml"
NEW_LISTENER = "127.0.0.1:28081"
NEW_CONFIG = {"listeners": {NEW_LISTENER: {"pass": "routes"}},
              "routes": [{"action": {"return": 200}}], "applications": {}}


PHASES = {
    "unit_p2p_install": {"Create the virtualenv", "Install from the index"},
    "unit_p2p_configure": {"Create the identity key", "Write the agent's settings"},
    "unit_p2p_resources": {"Copy the certificate bundles (chain + private key)",
                           "Record each copy in the options for the publishing task"},
    "unit_p2p_run": {"Enable and start the agent", "Wait until the agent's API answers"},
}


@pytest.mark.parametrize("tag", sorted(PHASES))
def test_each_phase_runs_alone_by_its_tag(ansible_env, tmp_path, tag):
    playbook = tmp_path / "role.yml"
    playbook.write_text("- hosts: localhost\n  gather_facts: false\n  roles:\n"
                        "    - unit_p2p.mesh.agent\n")
    proc = run_ansible([tool("ansible-playbook"), "-i", "localhost,", "--list-tasks",
                        "--tags", tag, str(playbook)], ansible_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = set(re.findall(r"^\s+unit_p2p\.mesh\.agent : (.+?)\s+TAGS:", proc.stdout,
                            re.MULTILINE))
    assert PHASES[tag] <= listed, proc.stdout
    for other, tasks in PHASES.items():
        if other != tag:
            assert not tasks & listed, (other, proc.stdout)
    # every phase starts with the preflight checks
    assert "Assert that the API socket is an absolute path" in listed, proc.stdout


KEY_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDrolekeybytes"


def _bundle(serial: str, key: str = KEY_BODY) -> str:
    return (f"-----BEGIN CERTIFICATE-----\nMIID{serial}\n-----END CERTIFICATE-----\n"
            f"-----BEGIN PRIVATE KEY-----\n{key}\n-----END PRIVATE KEY-----\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="the role manages root-owned files")
def test_resources_phase_copies_bundles_root_only_and_records_the_options(ansible_env, tmp_path):
    controller = tmp_path / "controller"
    controller.mkdir()
    (controller / "site.pem").write_text(_bundle("first"))
    (controller / "auth.js").write_text("export default {ok() { return true; }}\n")
    etc = tmp_path / "host" / "etc"
    options_file = tmp_path / "options.json"
    playbook = tmp_path / "resources.yml"
    playbook.write_text(yaml.safe_dump([{
        "hosts": "localhost", "gather_facts": False,
        "roles": ["unit_p2p.mesh.agent"],
        "tasks": [{"name": "Keep the options for the test", "tags": ["always"],
                   "ansible.builtin.copy": {"content": "{{ unit_p2p_resource_options | to_json }}",
                                            "dest": str(options_file), "mode": "0644"},
                   "when": "not ansible_check_mode"}],
    }]))
    variables = {"unit_p2p_config_dir": str(etc), "unit_p2p_listen_address": "127.0.0.1",
                 "unit_p2p_certificates": {"site": str(controller / "site.pem")},
                 "unit_p2p_js_modules": {"auth": str(controller / "auth.js")}}
    argv = [tool("ansible-playbook"), "-i", "localhost,", "-c", "local", "--tags",
            "unit_p2p_resources", str(playbook), "-e", json.dumps(variables)]
    env = dict(ansible_env, ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default")

    def run(*extra: str) -> dict[str, int]:
        proc = run_ansible([*argv, *extra], env)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr
        # never the key, whatever the diff or check mode shows
        assert KEY_BODY not in proc.stdout + proc.stderr and "PRIVATE KEY" not in proc.stdout
        return recap(proc)["localhost"]

    assert run("--check", "--diff")["changed"] > 0
    assert not etc.exists()

    assert run("--diff")["changed"] > 0
    resources = etc / "resources"
    bundle = resources / "certificates" / "site.pem"
    script = resources / "js_modules" / "auth.js"
    assert bundle.read_text() == _bundle("first") and script.exists()
    for path, mode in ((resources / "certificates", 0o700), (resources / "js_modules", 0o700),
                       (bundle, 0o600), (script, 0o600)):
        info = path.stat()
        assert (info.st_mode & 0o777, info.st_uid, info.st_gid) == (mode, 0, 0), path
    assert json.loads(options_file.read_text()) == {
        "certificates": {"site": {"path": str(bundle)}},
        "js_modules": {"auth": {"path": str(script)}}}

    assert run("--diff")["changed"] == 0

    # a new bundle under the same NAME replaces the copy; its diff shows nothing of either key
    (controller / "site.pem").write_text(_bundle("second", key=KEY_BODY[::-1]))
    proc = run_ansible([*argv, "--diff"], env)
    assert proc.returncode == 0 and recap(proc)["localhost"]["changed"] > 0, proc.stdout[-4000:]
    assert KEY_BODY[::-1] not in proc.stdout and "MIIDfirst" not in proc.stdout
    assert bundle.read_text() == _bundle("second", key=KEY_BODY[::-1])

    # a NAME that cannot name a file fails before anything is copied
    bad = dict(variables, unit_p2p_certificates={"../site": str(controller / "site.pem")})
    proc = run_ansible([*argv[:-2], "-e", json.dumps(bad)], env)
    assert proc.returncode != 0
    assert 'unit_p2p_certificates: "../site" must be NAME: FILE' in proc.stdout, proc.stdout[-4000:]


RENDER_UNIT = f"""\
- hosts: localhost
  gather_facts: false
  vars_files:
    - {ROLE}/defaults/main.yml
    - {ROLE}/vars/main.yml
  tasks:
    - name: render
      ansible.builtin.template:
        src: {ROLE}/templates/unit-p2p.service.j2
        dest: "{{{{ dest }}}}"
"""


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
@pytest.mark.parametrize(("unit", "api", "expected"), [
    ("unix:/var/run/control.unit.sock", "/run/unit-p2p/api.sock",
     ["ProtectHome=yes", "PrivateTmp=yes"]),
    # sockets where the sandbox would hide them keep working; another API dir becomes writable
    ("unix:/tmp/unit/control.sock", "/srv/unit-p2p/api.sock",
     ["PrivateTmp=no", "ReadWritePaths=/srv/unit-p2p"]),
])
def test_systemd_unit_is_valid_and_hardened(ansible_env, tmp_path, unit, api, expected):
    playbook = tmp_path / "render.yml"
    playbook.write_text(RENDER_UNIT)
    dest = tmp_path / "unit-p2p.service"
    extra = {"dest": str(dest), "unit_p2p_venv": sys.prefix, "unit_p2p_unit": unit,
             "unit_p2p_api_socket": api, "unit_p2p_state_dir": str(tmp_path)}
    proc = run_ansible([tool("ansible-playbook"), "-i", "localhost,", "-c", "local",
                        str(playbook), "-e", json.dumps(extra)], ansible_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = dest.read_text()
    for line in ["Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "RuntimeDirectory=unit-p2p", f"ReadWritePaths={tmp_path}",
                 f"ExecStart={sys.prefix}/bin/unit-p2p agent --config /etc/unit-p2p/agent.yaml",
                 *expected]:
        assert line in text.splitlines(), (line, text)
    verify = subprocess.run(["systemd-analyze", "verify", str(dest)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the role manages root-owned files")
def test_role_writes_a_working_mesh(agent_fleet, ansible_env, tmp_path):
    nodes = agent_fleet.prepare(3, create_keys=False)
    ports = free_ports(3)
    hosts = {}
    for node, port in zip(nodes, ports, strict=True):
        hosts[f"n{node.index}"] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "unit_p2p_venv": sys.prefix,
            "unit_p2p_config_dir": str(node.dir / "etc"),
            "unit_p2p_state_dir": str(node.dir / "state"),
            "unit_p2p_key_file": str(node.key),
            "unit_p2p_unit": f"unix:{node.unit_sock}",
            "unit_p2p_api_socket": str(node.api_sock),
            "unit_p2p_listen_address": "127.0.0.1",
            "unit_p2p_port": port,
        }
    # one host with a health gate, from host vars; the code as a number, as YAML reads it
    gated = {"unit_p2p_health_url": f"http://{NEW_LISTENER}/healthz",
             "unit_p2p_health_status": 200, "unit_p2p_health_attempts": 2,
             "unit_p2p_health_interval": 0.2}
    hosts["n1"].update(gated)
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"mesh": {
        "hosts": hosts,
        "vars": {"unit_p2p_manage_service": False, "unit_p2p_mesh": "ROLETEST",
                 "unit_p2p_peers_group": "mesh", "unit_p2p_mdns": False,
                 "unit_p2p_api_group": grp.getgrgid(os.getgid()).gr_name,
                 "unit_p2p_extra_settings": {"announce_interval": 2.0}},
    }}}}))
    playbook = tmp_path / "rollout.yml"
    playbook.write_text("- hosts: mesh\n  gather_facts: false\n  roles:\n"
                        "    - unit_p2p.mesh.agent\n")
    env = dict(ansible_env, ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default")
    argv = [tool("ansible-playbook"), "-i", str(inventory), str(playbook)]

    # check mode on new hosts: runs clean, reports changes, creates nothing
    started = time.monotonic()
    proc = run_ansible([*argv, "--check"], env)
    print(f"\nrole, --check on 3 new hosts: {time.monotonic() - started:.1f} s")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr
    assert all(c["changed"] > 0 for c in recap(proc).values()), proc.stdout[-3000:]
    assert not any((node.dir / name).exists() for node in nodes for name in ("etc", "state"))
    assert not any(node.key.exists() for node in nodes)

    started = time.monotonic()
    proc = run_ansible(argv, env)
    print(f"role, first run on 3 hosts: {time.monotonic() - started:.1f} s")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr
    for node in nodes:
        node.peer_id = subprocess.run([tool("unit-p2p"), "id", "--key", str(node.key)],
                                      capture_output=True, text=True, check=True,
                                      timeout=60).stdout.strip()
        assert oct(node.key.stat().st_mode & 0o777) == "0o600"
    ids = sorted(node.peer_id for node in nodes)
    assert len(set(ids)) == 3

    for node, port in zip(nodes, ports, strict=True):
        config_file = node.dir / "etc" / "agent.yaml"
        printed = subprocess.run(
            [tool("unit-p2p"), "agent", "--config", str(config_file), "--print-config"],
            capture_output=True, text=True, timeout=60, check=False)
        assert printed.returncode == 0, printed.stderr
        effective = yaml.safe_load(printed.stdout)
        assert effective["trusted_peers"] == ids
        assert effective["listen"] == [f"/ip4/127.0.0.1/tcp/{port}"]
        assert effective["bootstrap"] == sorted(
            f"/ip4/127.0.0.1/tcp/{p}/p2p/{n.peer_id}"
            for n, p in zip(nodes, ports, strict=True) if n is not node)
        assert effective["trust"] == "allowlist"
        assert effective["announce_interval"] == 2.0
        gate = {key: effective[key] for key in ("health_url", "health_status", "health_timeout",
                                                "health_attempts", "health_interval")}
        if node.index == 1:
            # set: as given (the code as text); unset: the agent's defaults
            assert gate == {"health_url": gated["unit_p2p_health_url"], "health_status": "200",
                            "health_timeout": 5.0, "health_attempts": 2,
                            "health_interval": 0.2}, gate
        else:
            assert gate["health_url"] is None, gate

    # idempotence, and a check-mode run that changes nothing either
    for extra in ([], ["--check", "--diff"]):
        started = time.monotonic()
        proc = run_ansible([*argv, *extra], env)
        print(f"role, run {extra or 'again'}: {time.monotonic() - started:.1f} s")
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr
        counters = recap(proc)
        assert sorted(counters) == ["n0", "n1", "n2"], proc.stdout[-3000:]
        assert all(c["changed"] == 0 and c["failed"] == 0 for c in counters.values()), (
            extra, counters, proc.stdout[-6000:])

    # a misspelt setting: the agent's own check refuses the rendered file, the old one stays
    before = (nodes[0].dir / "etc" / "agent.yaml").read_text()
    proc = run_ansible([*argv, "--limit", "n0", "-e",
                        json.dumps({"unit_p2p_allow_partial_peers": True,
                                    "unit_p2p_extra_settings": {"keep_config": 3}})], env)
    assert proc.returncode != 0, proc.stdout[-6000:]
    assert "keep_config: unknown key (did you mean 'keep_configs'?)" in proc.stdout, (
        proc.stdout[-6000:])
    assert (nodes[0].dir / "etc" / "agent.yaml").read_text() == before

    # the agents run from the role's files alone: allowlist trust, bootstrap from the lists
    for node in nodes:
        agent_fleet.start_agent(node, ["--config", str(node.dir / "etc" / "agent.yaml")])
    started = time.monotonic()
    agent_fleet.wait_connected()
    print(f"agents connected: {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    proc = run_ansible([tool("ansible"), "localhost", "-i", "localhost,", "-c", "local",
                        "-m", "unit_p2p_publish",
                        "-a", json.dumps({"socket": str(nodes[2].api_sock), "wait": True,
                                          "timeout": 60, "config": NEW_CONFIG})], ansible_env)
    status, published = ad_hoc_result(proc)
    print(f"publish with wait: {time.monotonic() - started:.1f} s")
    # n1's gate is on and fails: the emulators here bind no listeners (all three would want the
    # port), so nothing answers the URL; the config is applied everywhere all the same
    assert status == "FAILED!" and published["changed"] is True, published
    assert list(published["peers"]["failed"]) == [nodes[1].peer_id], published
    assert published["peers"]["failed"][nodes[1].peer_id].startswith(
        f"health_gate: GET {gated['unit_p2p_health_url']} failed"), published
    assert nodes[0].peer_id in published["peers"]["applied"], published
    for node in nodes:
        wait_for(lambda n=node: unix_get(n.unit_sock, "/config")[1] == NEW_CONFIG, 30,
                 f"node {node.index} to apply the published config", node.logs)

    # a trusted peer that is down: the wait times out and the task names it as pending
    agent = nodes[1].procs[-1]
    agent.terminate()
    agent.wait(timeout=15)
    newer = dict(NEW_CONFIG, routes=[{"action": {"return": 204}}])
    proc = run_ansible([tool("ansible"), "localhost", "-i", "localhost,", "-c", "local",
                        "-m", "unit_p2p_publish",
                        "-a", json.dumps({"socket": str(nodes[0].api_sock), "wait": True,
                                          "timeout": 5, "config": newer})], ansible_env)
    status, timed_out = ad_hoc_result(proc)
    assert status == "FAILED!", timed_out
    assert "did not converge within 5 s" in timed_out["msg"], timed_out
    assert f"pending: {nodes[1].peer_id}" in timed_out["msg"], timed_out
    assert timed_out["peers"]["pending"] == [nodes[1].peer_id]
    assert nodes[2].peer_id in timed_out["peers"]["applied"]
