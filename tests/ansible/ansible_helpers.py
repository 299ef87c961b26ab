"""Helpers of the Ansible tests: running ansible from the checkout, and a fleet of real agents
(``unit-p2p agent`` processes, each with its own Unit emulator) on loopback."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from unit_p2p.fleet import stop_processes

REPO = Path(__file__).resolve().parents[2]

VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """An executable from this interpreter's venv (ansible-playbook, unit-p2p, ...)."""
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found next to {sys.executable} nor on PATH")
    return found


def run_ansible(argv: list[str], env: dict[str, str],
                timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ansible/ansible-playbook from the repository root (so its ansible.cfg applies)."""
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def ad_hoc_result(proc: subprocess.CompletedProcess, host: str = "localhost") -> tuple[str, dict]:
    """(status, result) of the first task result of ``host``, from the minimal callback's
    ``host | STATUS => {...}``."""
    match = re.search(rf"^{re.escape(host)} \| ([A-Z!]+) => (\{{.*)", proc.stdout,
                      re.MULTILINE | re.DOTALL)
    if not match:
        pytest.fail(f"no result for {host} in:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    result, _ = json.JSONDecoder().raw_decode(match.group(2))
    return match.group(1), result


def recap(proc: subprocess.CompletedProcess) -> dict[str, dict[str, int]]:
    """host -> PLAY RECAP counters (ok, changed, failed, ...) from the default callback."""
    text = proc.stdout.split("PLAY RECAP", 1)[-1]
    return {m.group(1): {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
            for m in re.finditer(r"^(\S+)\s+:\s+(ok=.*)$", text, re.MULTILINE)}


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def unix_get(path: Path, url: str, timeout: float = 5.0) -> tuple[int, object]:
    conn = _UnixHTTPConnection(str(path), timeout)
    try:
        conn.request("GET", url)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def wait_for(predicate, timeout: float, what: str, logs: list[Path] = ()):
    """Poll ``predicate`` until it returns a truthy value (no event to await across processes)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            last_error, value = exc, None
        if value:
            return value
        time.sleep(0.1)
    tails = "\n".join(f"--- {log}\n{log.read_text()[-3000:]}" for log in logs if log.exists())
    pytest.fail(f"timed out after {timeout} s waiting for {what} "
                f"(last error: {last_error})\n{tails}")


@dataclass
class Node:
    index: int
    dir: Path
    unit_sock: Path
    api_sock: Path
    key: Path
    peer_id: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    multiaddr: str = ""

    @property
    def logs(self) -> list[Path]:
        return [self.dir / "agent.log", self.dir / "unit.log"]

    def unit_config(self) -> object:
        status, config = unix_get(self.unit_sock, "/config")
        assert status == 200, config
        return config

    def status(self) -> dict:
        status, answer = unix_get(self.api_sock, "/v1/status")
        assert status == 200, answer
        return answer


class Fleet:
    """Real agents on loopback, each with its own Unit emulator; stopped at teardown.

    Processes only, unlike ``unit_p2p.fleet`` (whose emulators live in the caller's trio loop):
    these tests block in ansible-playbook, and the agents start from the files the role wrote.
    """

    def __init__(self, base: Path):
        self.base = base
        self.nodes: list[Node] = []
        self._procs: list[subprocess.Popen] = []

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen:
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self._procs.append(proc)
        return proc

    def prepare(self, count: int, create_keys: bool = True) -> list[Node]:
        """Directories, identity keys (unless the test creates them) and running Unit
        emulators for ``count`` nodes."""
        for index in range(len(self.nodes), len(self.nodes) + count):
            d = self.base / f"n{index}"
            d.mkdir(parents=True)
            key = d / "identity.key"
            peer_id = subprocess.run(
                [tool("unit-p2p"), "id", "--key", str(key), "--create"], capture_output=True,
                text=True, check=True, timeout=60).stdout.strip() if create_keys else ""
            node = Node(index, d, d / "unit.sock", d / "api.sock", key, peer_id)
            node.procs.append(self._spawn(
                [tool("unit-p2p"), "unit-emulator", "--control", f"unix:{node.unit_sock}",
                 "--no-bind-listeners"], d / "unit.log"))
            self.nodes.append(node)
        for node in self.nodes[-count:]:
            wait_for(lambda n=node: unix_get(n.unit_sock, "/config")[0] == 200, 30,
                     f"Unit emulator {node.index}", node.logs)
        return self.nodes[-count:]

    def start_agent(self, node: Node, args: list[str]) -> None:
        node.procs.append(self._spawn([tool("unit-p2p"), "agent", *args], node.dir / "agent.log"))
        health = wait_for(lambda: unix_get(node.api_sock, "/v1/healthz")[1], 60,
                          f"agent {node.index} API", node.logs)
        assert health["peer_id"] == node.peer_id
        addrs = wait_for(lambda: node.status()["listen_addrs"], 30,
                         f"agent {node.index} listen address", node.logs)
        node.multiaddr = addrs[0] if "/p2p/" in addrs[0] else f"{addrs[0]}/p2p/{node.peer_id}"

    def wait_connected(self, timeout: float = 60) -> None:
        for node in self.nodes:
            wait_for(lambda n=node: n.status()["peers"]["connected"] >= len(self.nodes) - 1,
                     timeout, f"agent {node.index} connected to every other agent", node.logs)

    def stop(self) -> None:
        stop_processes(reversed(self._procs))
