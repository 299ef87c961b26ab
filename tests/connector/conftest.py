"""Fixtures for the connector tests (helpers live in connector_servers.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from connector_servers import CuttingServer, ReplayServer, load_transcript


@pytest.fixture(scope="session")
def transcript() -> dict[str, dict]:
    return {r["name"]: r for r in load_transcript()}


@pytest.fixture
def sock_dir(tmp_path_factory) -> Path:
    # pytest's per-test tmp_path can exceed the 107-byte AF_UNIX path limit with long test ids.
    return tmp_path_factory.mktemp("s")


@pytest.fixture
def serve(sock_dir):
    """``serve(records, tcp=False, **opts)`` starts a ReplayServer and stops it after the test."""
    servers: list[ReplayServer] = []

    def start(records=(), *, tcp: bool = False, **opts) -> ReplayServer:
        if tcp:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{listener.getsockname()[1]}"
        else:
            path = sock_dir / f"u{len(servers)}.sock"
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(path))
            address = f"unix:{path}"
        listener.listen(64)
        server = ReplayServer(listener, address, list(records), **opts).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def cutting(sock_dir):
    """``cutting(tree, limit=..., ...)`` starts a CuttingServer on a unix socket."""
    servers: list[CuttingServer] = []

    def start(tree, **opts) -> CuttingServer:
        path = sock_dir / f"c{len(servers)}.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(64)
        server = CuttingServer(listener, f"unix:{path}", tree, **opts).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()
