"""The command line as a user meets it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import trio

from tests.agent.harness import Fleet
from unit_p2p import __version__

pytestmark = pytest.mark.slow


def cli(*args, timeout=60, env=None):
    return subprocess.run([sys.executable, "-m", "unit_p2p", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def test_version_and_help():
    assert cli("--version").stdout.strip() == f"unit-p2p {__version__}"
    out = cli("--help").stdout
    for command in ("agent", "publish", "status", "peers", "id", "unit-emulator", "demo"):
        assert command in out
    assert "--trusted-peer" in cli("agent", "--help").stdout


@pytest.mark.parametrize("content, expected", [
    ("mesh: [1, 2]\n", "mesh"),
    ("bogus_key: 1\n", "bogus_key"),
    ("listen: ['/ip4/1.2.3.4/udp/1']\n", "listen"),
    ("mesh: x\n  bad: indentation\n", "line"),
])
def test_bad_settings_file_is_one_line_and_exit_2(tmp_path, content, expected):
    f = tmp_path / "agent.yaml"
    f.write_text(content)
    r = cli("agent", "--config", f, "--print-config")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert str(f) in r.stderr and expected in r.stderr


def test_missing_settings_file_and_env_override(tmp_path):
    r = cli("agent", "--config", tmp_path / "nope.yaml")
    assert r.returncode == 2 and "nope.yaml" in r.stderr and "Traceback" not in r.stderr
    r = cli("agent", "--print-config", "--trust", "any", env={"UNIT_P2P_MESH": "from-env"})
    assert r.returncode == 0, r.stderr
    assert "mesh: from-env" in r.stdout


def test_id_creates_once_and_refuses_loose_permissions(tmp_path):
    key = tmp_path / "k" / "identity.key"
    first = cli("id", "--key", key, "--create")
    assert first.returncode == 0, first.stderr
    peer = first.stdout.strip()
    assert peer.startswith("12D3KooW")
    assert cli("id", "--key", key).stdout.strip() == peer
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    key.chmod(0o644)
    r = cli("id", "--key", key)
    assert r.returncode == 2 and "chmod 600" in r.stderr and "Traceback" not in r.stderr
    r = cli("id", "--key", tmp_path / "absent.key")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    key.chmod(0o600)
    r = cli("id", "--key", key, "--rotate")
    assert r.returncode == 0, r.stderr
    old, new = r.stdout.split()
    assert old == peer and new != peer and new.startswith("12D3KooW")
    assert cli("id", "--key", key).stdout.strip() == new
    assert cli("id", "--key", f"{key}.old").stdout.strip() == peer


def test_client_commands_without_an_agent_exit_3(tmp_path):
    for command in ("status", "peers", "publish"):
        r = cli(command, "--api", f"unix:{tmp_path / 'none.sock'}")
        assert r.returncode == 3, (command, r.stderr)
        assert "none.sock" in r.stderr and "Traceback" not in r.stderr


async def test_second_agent_on_a_port_in_use_fails_loudly(tmp_path):
    async with trio.open_nursery() as nursery:
        fleet = Fleet(tmp_path, nursery, 2)
        first, second = fleet[0], fleet[1]
        second.port = first.port  # the same libp2p port
        try:
            with trio.fail_after(60):
                await fleet.start_unit(first)
                await fleet.start_unit(second)
                first.start()
                await first.wait_ready()
                second.start()
                rc = await trio.to_thread.run_sync(second.proc.wait, 50)
            assert rc == 2, second.log_tail()
            assert str(first.port) in second.log_tail()
            assert "Traceback" not in second.log_tail()
            assert first.proc.poll() is None  # the first agent is unharmed
        finally:
            fleet.stop()
            nursery.cancel_scope.cancel()


async def test_status_and_publish_commands_against_a_live_agent(tmp_path):
    async with trio.open_nursery() as nursery:
        fleet = Fleet(tmp_path, nursery, 2)
        fleet.topology("mesh")
        for a in fleet:
            a.extra_args = ["--no-mdns"]
        try:
            with trio.fail_after(60):
                await fleet.start()
                a = fleet[0]
                cfg = tmp_path / "new.json"
                cfg.write_text('{"listeners": {}, "routes": [{"action": {"return": 418}}]}')
                r = await trio.to_thread.run_sync(
                    lambda: cli("publish", "--api", a.api, "--config-file", cfg, "--wait",
                                "--timeout", "30"))
                assert r.returncode == 0, r.stderr + r.stdout
                assert "applied 2, failed 0, pending 0" in r.stdout
                assert "changed true" in r.stdout  # the publish's answer, not the wait's
                r = await trio.to_thread.run_sync(lambda: cli("status", "--api", a.api))
                assert r.returncode == 0 and a.peer_id in r.stdout and "in_sync=true" in r.stdout
                r = await trio.to_thread.run_sync(lambda: cli("peers", "--api", a.api))
                assert fleet[1].peer_id in r.stdout
        finally:
            fleet.stop()
            nursery.cancel_scope.cancel()


def test_agent_exits_cleanly_on_sigterm(tmp_path):
    # covered by the fleet's stop in every process test; here the exit code is asserted
    async def main():
        async with trio.open_nursery() as nursery:
            fleet = Fleet(tmp_path, nursery, 1)
            with trio.fail_after(60):
                await fleet.start()
            fleet[0].proc.send_signal(signal.SIGTERM)
            rc = await trio.to_thread.run_sync(fleet[0].proc.wait, 30)
            nursery.cancel_scope.cancel()
            return rc

    assert trio.run(main) == 0
