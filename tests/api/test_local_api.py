"""The agent's local API, in-process with a real libp2p host and a real emulated Unit.

Covers access control (socket mode and group, loopback TCP only with a token),
the publish contract (dry run, diff, idempotence, errors) and /metrics.
"""

from __future__ import annotations

import grp
import json
import os
import stat

import pytest
import requests
import trio

from tests.agent.harness import NEW, TOKEN, api_request, running_agent
from unit_p2p.agent import Agent
from unit_p2p.api.client import ApiClient
from unit_p2p.errors import ApiError, SettingsError
from unit_p2p.fleet import free_ports


async def call(address: str, method: str, *args, token=None, **kwargs):
    def run():
        with ApiClient(address, token=token, timeout=10) as client:
            return getattr(client, method)(*args, **kwargs)

    return await trio.to_thread.run_sync(run)


async def test_unix_socket_is_0660_with_the_configured_group(tmp_path):
    group = grp.getgrnam("daemon")
    async with running_agent(tmp_path, api_group="daemon") as (agent, _):
        st = (tmp_path / "api.sock").stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == group.gr_gid
        with trio.fail_after(10):
            assert (await call(agent.settings.api, "healthz"))["ok"] is True


async def test_tcp_listener_requires_the_token(tmp_path):
    async with running_agent(tmp_path) as (agent, _):
        url = f"http://{agent.settings.api_tcp}/v1/status"

        def get(headers):
            return requests.get(url, headers=headers, timeout=10)

        with trio.fail_after(20):
            assert (await trio.to_thread.run_sync(get, {})).status_code == 401
            wrong = {"Authorization": "Bearer " + "x" * len(TOKEN)}
            assert (await trio.to_thread.run_sync(get, wrong)).status_code == 401
            prefix = {"Authorization": "Bearer " + TOKEN[:-1]}
            assert (await trio.to_thread.run_sync(get, prefix)).status_code == 401
            ok = await trio.to_thread.run_sync(get, {"Authorization": f"Bearer {TOKEN}"})
            assert ok.status_code == 200 and ok.json()["peer_id"] == agent.peer_id
            metrics = await call(f"http://{agent.settings.api_tcp}", "metrics", token=TOKEN)
        assert "unit_p2p_peers_connected" in metrics


async def test_tcp_listener_only_on_loopback():
    from unit_p2p.settings import load_settings

    with pytest.raises(SettingsError, match="loopback"):
        load_settings(None, {}, {"api_tcp": "0.0.0.0:9999", "trust": "any"})


async def test_dry_run_diff_and_idempotent_publish(tmp_path):
    async with running_agent(tmp_path) as (agent, emulator):
        api = agent.settings.api
        with trio.fail_after(30):
            before = emulator.config
            dry = await call(api, "publish", config=NEW, dry_run=True)
            assert dry["changed"] is True and dry["revision"] is None
            assert dry["before"] == before and dry["after"] == NEW
            assert emulator.config == before
            assert (await call(api, "status"))["head"] is None

            first = await call(api, "publish", config=NEW)
            assert first["changed"] is True and emulator.config == NEW
            assert "before" not in first
            second = await call(api, "publish")
            assert second["changed"] is False and second["revision"] == first["revision"]
            dry_again = await call(api, "publish", config=NEW, dry_run=True)
            assert dry_again["changed"] is False
            with_diff = await call(api, "publish", diff=True)
            assert with_diff["before"] == with_diff["after"] == NEW
            metrics = await call(api, "metrics")
        assert "unit_p2p_publishes_total 1.0" in metrics
        assert "unit_p2p_head_revision_counter 1.0" in metrics


async def test_rejected_config_keeps_unit_unchanged_and_says_why(tmp_path):
    async with running_agent(tmp_path) as (agent, emulator):
        api = agent.settings.api
        bad = {"listeners": {"127.0.0.1:1": {"pass": "routes/nope"}}, "routes": []}
        before = emulator.config
        with trio.fail_after(20):
            with pytest.raises(ApiError) as err:
                await call(api, "publish", config=bad)
            assert err.value.status == 422 and "Invalid configuration" in err.value.detail
            with pytest.raises(ApiError) as err:
                await call(api, "publish", config=[1, 2])
            assert err.value.status in (400, 422)
            emulator.fail_next_puts(1, status=500)
            with pytest.raises(ApiError) as err:
                await call(api, "publish", config=NEW)
            assert err.value.status == 422 and "Failed to apply" in err.value.detail
        assert emulator.config == before
        assert agent.reconciler.head is None


async def test_bad_requests_are_400(tmp_path):
    async with running_agent(tmp_path) as (_agent, _):
        path = str(tmp_path / "api.sock")

        with trio.fail_after(20):
            for body in (b"{not json", b"[]", b'{"wait": "yes"}', b'{"timeout": -1}',
                         b'{"bogus": 1}', b'{"min_peers": true}'):
                r = await api_request(path, "POST", "/v1/publish", body, timeout=10)
                assert r.status_code == 400, body
                assert r.json()["error"] == "bad_request"
            r = await api_request(path, "GET", "/v1/publish", timeout=10)
            assert r.status_code == 405
            r = await api_request(path, "GET", "/v2/nothing", timeout=10)
            assert r.status_code == 404


async def test_unit_unreachable_is_503_and_visible_in_status(tmp_path):
    async with running_agent(tmp_path) as (agent, emulator):
        api = agent.settings.api
        with trio.fail_after(30):
            await emulator.stop_listening()
            with pytest.raises(ApiError) as err:
                await call(api, "publish", config=NEW)
            assert err.value.status == 503
            while (await call(api, "status"))["local"]["unit"] != "unreachable":  # noqa: ASYNC110 - polled status
                await trio.sleep(0.1)
            health = await call(api, "healthz")
            assert health["ok"] is True and health["unit"] == "unreachable"
            await emulator.start_listening()
            result = await call(api, "publish", config=NEW)
        assert result["changed"] is True


async def test_second_agent_on_the_same_api_socket_fails_loudly(tmp_path):
    async with running_agent(tmp_path) as (agent, _):
        other = agent.settings.replace(listen=(f"/ip4/127.0.0.1/tcp/{free_ports(1)[0]}",),
                                       state_dir=tmp_path / "state2", api_tcp=None)
        with pytest.raises(BaseException) as err, trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(Agent(other).serve)
        assert "already serving" in repr(err.value)
        assert (tmp_path / "api.sock").exists()
        with trio.fail_after(10):
            assert (await call(agent.settings.api, "healthz"))["peer_id"] == agent.peer_id


def test_no_key_material_in_status_or_logs(tmp_path, caplog):
    import logging

    from unit_p2p.identity import load_or_create_identity

    caplog.set_level(logging.DEBUG)
    key = load_or_create_identity(tmp_path / "identity.key", create=True)
    secret = key.private_key.to_bytes()
    blob = (tmp_path / "identity.key").read_bytes()
    assert stat.S_IMODE(os.stat(tmp_path / "identity.key").st_mode) == 0o600
    for text in [caplog.text]:
        assert secret.hex() not in text and blob.hex() not in text


async def test_bodies_that_are_not_strict_json_are_400_and_change_nothing(tmp_path):
    """Duplicate keys (last-wins would have turned a dry run into a publish), NaN, a lone
    surrogate, deep nesting: each a 400 with a short reason, never a 500 or a change in Unit."""
    async with running_agent(tmp_path) as (agent, emulator):
        path = str(tmp_path / "api.sock")
        before = emulator.config
        config = json.dumps(NEW)

        bodies = [
            f'{{"config": {config}, "dry_run": true, "dry_run": false}}',
            f'{{"config": {config}, "timeout": NaN}}',
            f'{{"config": {config}, "wait": false, "timeout": Infinity}}',
            '{"config": {"settings": {"x": "\\ud800"}}}',
            '{"config": ' + "[" * 1000 + "]" * 1000 + "}",
            '{"config": {"a": ' + "1" * 5000 + "}}",
            b'{"config": {"a": "\xff"}}',
            '{"' + "k" * 100_000 + '": 1}',
            # big enough to be parsed in a worker thread
            '{"config": {"a": "' + "x" * 300_000 + '", "a": 1}}',
        ]
        with trio.fail_after(30):
            for body in bodies:
                r = await api_request(path, "POST", "/v1/publish", body, timeout=10)
                assert r.status_code == 400, (body[:80], r.text[:200])
                assert r.json()["error"] == "bad_request"
                assert len(r.text) < 500
        assert emulator.config == before
        assert agent.reconciler.head is None


async def test_errors_name_their_code_once(tmp_path):
    async with running_agent(tmp_path) as (agent, emulator):
        with trio.fail_after(20), pytest.raises(ApiError) as err:
            emulator.fail_next_puts(1, status=500)
            await call(agent.settings.api, "publish", config=NEW)
        assert not err.value.detail.startswith(err.value.error)


async def test_a_token_file_open_to_others_is_refused(tmp_path):
    loose = tmp_path / "loose-token"
    loose.write_text(TOKEN)
    loose.chmod(0o644)
    with pytest.raises(BaseException) as err, trio.fail_after(30):
        async with running_agent(tmp_path, api_token_file=loose):
            pass
    assert "chmod 600" in repr(err.value) and "0644" in repr(err.value)
    assert not (tmp_path / "api.sock").exists()


def test_api_socket_paths_that_cannot_work_are_one_clear_error(tmp_path):
    from unit_p2p.api.server import bind_unix_socket

    (tmp_path / "file").write_text("")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for path, expected in ((tmp_path / "file" / "api.sock", "cannot listen on"),
                           (tmp_path / "dangling", "is not a socket")):
        with pytest.raises(SettingsError, match=expected):
            bind_unix_socket(path, None)
    # a group given by number, as the settings allow
    sock = bind_unix_socket(tmp_path / "api.sock", str(os.getgid()))
    sock.close()
    assert (tmp_path / "api.sock").stat().st_gid == os.getgid()


async def test_unit_failing_a_read_is_502_not_a_rejected_request():
    from unit_p2p.api.http import Request
    from unit_p2p.api.server import AgentApi
    from unit_p2p.errors import UnitApplyFailed

    class Agent:
        async def local_config(self):
            raise UnitApplyFailed(500, "Internal error.", method="GET", path="/config")

    response = await AgentApi(Agent()).respond(Request("GET", "/v1/config", {}))
    assert response.status == 502
    assert json.loads(response.body)["error"] == "unit_error"


async def test_error_details_are_bounded_whatever_unit_says(tmp_path):
    async with running_agent(tmp_path) as (agent, _):
        bad = {"listeners": {"127.0.0.1:1": {"pass": "routes/" + "n" * 100_000}}, "routes": []}
        with trio.fail_after(20), pytest.raises(ApiError) as err:
            await call(agent.settings.api, "publish", config=bad)
        assert err.value.status == 422 and len(err.value.detail) <= 500


async def test_sync_errors_map_to_statuses_by_type():
    from unit_p2p.api.http import Request
    from unit_p2p.api.server import AgentApi
    from unit_p2p.errors import PublishRefused, RevisionRejected, SyncError, SyncRetryLater

    for exc, status in ((RevisionRejected("verify_failed", "x"), 422),
                        (SyncRetryLater("no_holder", "x"), 503),
                        (PublishRefused("behind_mesh", "x"), 409),
                        (SyncError("digest_mismatch", "x"), 500)):
        class Agent:
            async def publish(self, *args, error=exc, **kwargs):
                raise error

        response = await AgentApi(Agent()).respond(Request("POST", "/v1/publish", {}))
        doc = json.loads(response.body)
        assert (response.status, doc) == (status, {"error": exc.reason, "detail": "x"})
