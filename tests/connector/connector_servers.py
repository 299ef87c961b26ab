"""Real socket servers for the connector tests: they replay answers recorded from a real Unit.

The servers run in threads (the clients under test are blocking); each records what it was
sent so a test can check the request as well as the client's reading of the answer.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "unit-fixtures"
TRANSCRIPT = FIXTURES / "unit-control-api.jsonl"


def load_transcript() -> list[dict]:
    if not TRANSCRIPT.is_file():
        pytest.skip(
            f"Unit transcripts not found at {TRANSCRIPT} (shared/ must sit beside the repo)"
        )
    with TRANSCRIPT.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


def recorded_bytes(record: dict) -> bytes:
    """The exact bytes Unit sent for ``record``: status line, headers in order, body."""
    head = record["status_line"] + "\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in record["headers"].items())
    return head.encode("latin-1") + b"\r\n" + (record["response_body"] or "").encode("utf-8")


def read_request(conn: socket.socket) -> Received | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    want = int(headers.get("content-length", "0"))
    while len(body) < want:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return Received(method, target, headers, body)


@dataclass
class ReplayServer:
    """Answers each connection with the next recorded response, then closes like Unit does.

    A record with ``status: null`` is replayed as Unit did it: close without answering (with a
    TCP/unix reset when ``closed_by`` is "reset"). ``hold`` makes the server read the request
    and then keep the connection open without answering until ``release`` is set (or forever,
    when ``release`` is None, until the server stops).
    """

    listener: socket.socket
    address: str
    records: list[dict] = field(default_factory=list)
    hold: bool = False
    release: threading.Event | None = None
    received: list[Received] = field(default_factory=list)
    got_request: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _conns: list[socket.socket] = field(default_factory=list)

    def start(self) -> ReplayServer:
        self.listener.settimeout(0.05)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            self._conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            req = read_request(conn)
            if req is None:
                return
            self.received.append(req)
            self.got_request.set()
            if self.hold:
                gate = self.release or self._stop
                gate.wait(10)
                if self.release is None:
                    return
            record = self.records.pop(0)
            if record["status"] is None:
                if record.get("closed_by") == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            conn.sendall(recorded_bytes(record))
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self.listener.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.close()
        self._thread.join(5)


@dataclass
class CuttingServer:
    """A deterministic stand-in for Unit's cut answers: it serves GETs from ``tree`` with Unit's
    exact bytes and cuts every answer body after ``limit`` bytes, then closes (as Unit does on a
    unix socket when the client is slow). Other methods get ``put_answer``. ``on_request(n)``
    runs before the n-th request (from 1) is answered, so a test can change ``tree`` mid-read.
    """

    listener: socket.socket
    address: str
    tree: object = None
    limit: int = 1 << 30
    put_answer: bytes = b'{\r\n\t"success": "Reconfiguration done."\r\n}\r\n'
    on_request: object = None
    targets: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> CuttingServer:
        self.listener.settimeout(0.05)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        from unit_p2p.unit.emulator import tree as unit_tree
        from unit_p2p.unit.emulator.jsonparse import dumps_pretty

        req = read_request(conn)
        if req is None:
            return
        self.targets.append(f"{req.method} {req.target}")
        if callable(self.on_request):
            self.on_request(len(self.targets))
        status, body = "200 OK", self.put_answer
        if req.method == "GET":
            try:
                body = dumps_pretty(unit_tree.get(self.tree, unit_tree.split_path(req.target[7:])))
            except unit_tree.NotFound:
                status = "404 Not Found"
                body = b'{\r\n\t"error": "Value doesn\'t exist."\r\n}\r\n'
        head = (
            f"HTTP/1.1 {status}\r\nServer: Unit/1.35.0\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        conn.sendall(head + body[: self.limit])

    def stop(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(5)
