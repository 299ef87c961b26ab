"""Clients that misbehave at the HTTP level: hang up mid-body, trickle, flood, oversize.

Expected every time: that client's connection ends (with a clear status when one can still be
sent), and the agent keeps serving everyone else.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import trio

from tests.agent.harness import TOKEN, Fleet, running_agent
from unit_p2p.api import server
from unit_p2p.api.http import Limits
from unit_p2p.fleet import free_ports

PARTIAL = (b"POST /v1/publish HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n"
           b"Content-Length: 1000\r\n%s\r\n{")


async def connect(address: str) -> trio.SocketStream:
    if address.startswith("unix:"):
        return await trio.open_unix_socket(address[len("unix:"):])
    host, _, port = address.rpartition(":")
    return await trio.open_tcp_stream(host, int(port))


async def hang_up_after(address: str, data: bytes, *, reset: bool = False) -> None:
    stream = await connect(address)
    await stream.send_all(data)
    if reset:  # an abortive close: RST instead of FIN
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    await stream.aclose()


async def exchange(address: str, data: bytes) -> tuple[int, dict]:
    """Send ``data``, read until the agent closes; the status and JSON body of the answer
    (0 and {} when it closed without one)."""
    stream = await connect(address)
    await stream.send_all(data)
    answer = b""
    try:
        while chunk := await stream.receive_some(65536):
            answer += chunk
    except trio.BrokenResourceError:
        pass  # a reset after the answer arrived
    await stream.aclose()
    if not answer:
        return 0, {}  # closed without an answer
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.slow
async def test_partial_bodies_and_hang_ups_never_stop_the_agent(tmp_path):
    """One real agent process; on both listeners, 50 rounds of: a POST whose body is shorter
    than its Content-Length then a hang-up, the same with a reset, a hang-up inside the head."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    tcp = f"127.0.0.1:{free_ports(1)[0]}"
    async with trio.open_nursery() as nursery:
        fleet = Fleet(tmp_path, nursery, 1)
        agent = fleet[0]
        agent.extra_args = ["--api-tcp", tcp, "--api-token-file", str(token_file)]
        try:
            with trio.fail_after(60):
                await fleet.start()
            auth = b"Authorization: Bearer %s\r\n" % TOKEN.encode()
            with trio.fail_after(120):
                for _ in range(50):
                    for address, header in ((agent.api, b""), (tcp, auth)):
                        await hang_up_after(address, PARTIAL % header)
                        await hang_up_after(address, PARTIAL % header, reset=True)
                        await hang_up_after(address, b"POST /v1/publish HTTP/1.1\r\nHost")
                assert agent.proc.poll() is None, agent.log_tail()
                status = await agent.call("status")
            assert status["peer_id"] == agent.peer_id
            assert "Traceback" not in agent.log_tail(200_000)
        finally:
            fleet.stop()
            nursery.cancel_scope.cancel()


@pytest.fixture
def small_limits(monkeypatch):
    limits = Limits(max_connections=4, head_timeout=0.5, body_timeout=0.5, max_body=1000)
    monkeypatch.setattr(server, "api_limits", lambda settings: limits)
    return limits


async def test_slow_head_and_slow_body_get_408(tmp_path, small_limits):
    async with running_agent(tmp_path) as (agent, _):
        api = agent.settings.api
        with trio.fail_after(20):
            status, doc = await exchange(api, b"GET /v1/status HTTP/1.1\r\nHo")
            assert (status, doc["error"]) == (408, "request_timeout")
            assert "head" in doc["detail"]
            status, doc = await exchange(api, PARTIAL % b"")
            assert (status, doc["error"]) == (408, "request_timeout")
            assert "body" in doc["detail"]
            assert (await exchange(api, b"GET /v1/healthz HTTP/1.1\r\nHost: a\r\n"
                                        b"Connection: close\r\n\r\n"))[0] == 200


async def test_oversize_bodies_get_413_before_being_read(tmp_path, small_limits):
    async with running_agent(tmp_path) as (agent, _):
        api = agent.settings.api
        with trio.fail_after(20):
            # announced too large: refused at once, nothing of it read
            status, doc = await exchange(
                api, b"POST /v1/publish HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999\r\n\r\n")
            assert (status, doc["error"]) == (413, "too_large")
            # chunked, growing past the cap
            chunk = b"%x\r\n%s\r\n" % (600, b" " * 600)
            status, doc = await exchange(
                api, b"POST /v1/publish HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + chunk * 2)
            assert (status, doc["error"]) == (413, "too_large")


async def test_connections_beyond_the_limit_get_503_and_the_rest_keep_working(
        tmp_path, small_limits):
    async with running_agent(tmp_path) as (agent, _):
        api = agent.settings.api
        with trio.fail_after(20):
            idle = [await connect(api) for _ in range(small_limits.max_connections)]
            # the listener may not have accepted them all yet: wait for the first 503
            while True:
                status, doc = await exchange(api, b"GET /v1/healthz HTTP/1.1\r\nHost: a\r\n\r\n")
                if status == 503:
                    break
            assert doc["error"] == "busy" and str(small_limits.max_connections) in doc["detail"]
            for stream in idle:
                await stream.aclose()
            while status != 200:
                status, doc = await exchange(
                    api, b"GET /v1/healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert doc["ok"] is True


async def test_tcp_listener_reads_no_body_without_the_token(tmp_path):
    async with running_agent(tmp_path) as (agent, _):
        with trio.fail_after(20):
            # a body far beyond the cap: refused for the missing token, not for its size
            status, doc = await exchange(
                agent.settings.api_tcp, b"POST /v1/publish HTTP/1.1\r\nHost: a\r\n"
                                        b"Content-Length: 99999999999\r\n\r\n{")
        assert (status, doc["error"]) == (401, "unauthorized")
        assert "--token-file" in doc["detail"]


async def test_malformed_http_is_400_and_harmless(tmp_path):
    async with running_agent(tmp_path) as (agent, _):
        api = agent.settings.api
        with trio.fail_after(20):
            tls_hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + os.urandom(64)
            for junk in (tls_hello + b"\r\n\r\n",
                         b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                         b"POST /v1/publish HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n"):
                status, doc = await exchange(api, junk)
                assert status == 400 and doc["error"] == "bad_request", junk
            assert (await exchange(api, b"GET /v1/healthz HTTP/1.1\r\nHost: a\r\n"
                                        b"Connection: close\r\n\r\n"))[0] == 200


@pytest.mark.slow
async def test_hundreds_of_idle_connections_do_not_exhaust_the_agent(tmp_path):
    """300 connections that never send a byte, against an agent allowed 256 descriptors: the
    agent holds at most its limit, turns the rest away, cuts the idle ones at the head timeout
    and answers status again."""
    import resource

    async with trio.open_nursery() as nursery:
        fleet = Fleet(tmp_path, nursery, 1)
        agent = fleet[0]
        try:
            with trio.fail_after(60):
                await fleet.start()
            resource.prlimit(agent.proc.pid, resource.RLIMIT_NOFILE, (256, 256))
            idle = []
            try:
                with trio.fail_after(60):
                    for _ in range(300):
                        idle.append(await connect(agent.api))
                    busy = 0
                    while True:  # 503 busy (or closed) until the idle ones are cut, then 200
                        try:
                            status, doc = await exchange(
                                agent.api, b"GET /v1/status HTTP/1.1\r\nHost: a\r\n"
                                           b"Connection: close\r\n\r\n")
                        except (trio.BrokenResourceError, OSError):
                            continue  # beyond twice the limit: closed at once, no answer
                        if status == 200:
                            break
                        if status == 0:
                            continue
                        assert (status, doc["error"]) == (503, "busy")
                        busy += 1
            finally:
                for stream in idle:
                    await stream.aclose()
            assert busy > 0
            assert doc["peer_id"] == agent.peer_id
            assert agent.proc.poll() is None
            assert len(os.listdir(f"/proc/{agent.proc.pid}/fd")) < 128
        finally:
            fleet.stop()
            nursery.cancel_scope.cancel()


async def test_the_client_retries_a_busy_agent(tmp_path, small_limits, monkeypatch):
    from unit_p2p.api import client

    monkeypatch.setattr(client, "BUSY_PAUSE_S", 0.2)
    async with running_agent(tmp_path) as (agent, _):
        api = agent.settings.api
        with trio.fail_after(30):
            idle = [await connect(api) for _ in range(small_limits.max_connections)]
            while (await exchange(api, b"GET /v1/healthz HTTP/1.1\r\nHost: a\r\n\r\n"))[0] != 503:
                pass
            # the idle ones are cut at the head timeout, within the client's retries
            health = await trio.to_thread.run_sync(
                lambda: client.ApiClient(api, timeout=5).healthz())
            for stream in idle:
                await stream.aclose()
        assert health["ok"] is True
