"""The emulator as a separate process: the CLI, SIGTERM, the admin socket, the self-check."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import unit_p2p

AGENT_DIR = str(Path(unit_p2p.__file__).resolve().parents[1])
CLI = [sys.executable, "-m", "unit_p2p.unit.emulator.cli"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": AGENT_DIR}


def _unix_request(path: str, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(
            f"{method} {target} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), payload


def _wait_for_line(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            return proc.stderr.readline().decode()
        if proc.poll() is not None:
            break
    raise AssertionError(f"no startup line; exit code {proc.poll()}")


def test_runs_until_sigterm_with_admin_socket(tmp_path: Path) -> None:
    control = tmp_path / "control.sock"
    admin = tmp_path / "admin.sock"
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [
            *CLI,
            "--control",
            f"unix:{control}",
            "--admin",
            f"unix:{admin}",
            "--state-dir",
            str(state),
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = _wait_for_line(proc, 20)
        assert line.startswith(f"unit-emulator listening on unix:{control}")
        status, body = _unix_request(str(admin), "POST", "/fail-next-puts", b'{"n": 1}')
        assert status == 200 and json.loads(body)["pending_failures"] == 1
        conf = b'{"listeners": {}, "routes": []}'
        assert _unix_request(str(control), "PUT", "/config", conf)[0] == 500
        assert _unix_request(str(control), "PUT", "/config", conf)[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not control.exists() and not admin.exists()
        assert json.loads((state / "conf.json").read_text()) == json.loads(conf)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


def test_bind_all_addresses_serves_a_wildcard_listener(tmp_path: Path) -> None:
    control = tmp_path / "control.sock"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [*CLI, "--control", f"unix:{control}", "--bind-all-addresses"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        _wait_for_line(proc, 20)
        conf = {"listeners": {f"*:{port}": {"pass": "routes"}},
                "routes": [{"action": {"return": 200}}]}
        assert _unix_request(str(control), "PUT", "/config", json.dumps(conf).encode())[0] == 200
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.recv(65536).startswith(b"HTTP/1.1 200 ")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


def test_self_check_passes() -> None:
    done = subprocess.run([*CLI, "--self-check"], env=_env(), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert b"OK" in done.stdout


def test_bad_usage_exits_2_without_traceback(tmp_path: Path) -> None:
    missing = subprocess.run(CLI, env=_env(), capture_output=True, timeout=60)
    assert missing.returncode == 2 and b"--control is required" in missing.stderr
    bad = subprocess.run(
        [*CLI, "--control", "localhost:80"], env=_env(), capture_output=True, timeout=60
    )
    assert bad.returncode == 2
    assert b"must be an IP address" in bad.stderr and b"Traceback" not in bad.stderr
    occupied = tmp_path / "not-a-socket"
    occupied.write_text("x")
    taken = subprocess.run(
        [*CLI, "--control", f"unix:{occupied}"], env=_env(), capture_output=True, timeout=60
    )
    assert taken.returncode == 2
    assert b"is not a socket" in taken.stderr and b"Traceback" not in taken.stderr
