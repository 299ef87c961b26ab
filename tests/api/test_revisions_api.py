"""The history routes of the local API, in-process with a real libp2p host and an emulated Unit:
GET /v1/revisions, GET /v1/revisions/REV, POST /v1/rollback and their errors."""

from __future__ import annotations

import json

import trio

from tests.agent.harness import NEW, api_request, running_agent

SECOND = {"listeners": {}, "routes": [{"action": {"return": 204}}], "applications": {}}


async def test_revisions_show_and_rollback_routes_and_their_errors(tmp_path):
    async with running_agent(tmp_path) as (agent, emulator):
        path = str(tmp_path / "api.sock")

        async def request(method, url, body=None):
            return await api_request(path, method, url, body, timeout=10)

        with trio.fail_after(30):
            assert (await request("GET", "/v1/revisions")).json() == {"revisions": []}
            r = await request("POST", "/v1/rollback", b"{}")
            assert r.status_code == 404 and r.json()["error"] == "unknown_revision"
            first = (await request("POST", "/v1/publish", json.dumps({"config": NEW}))).json()
            second = (await request("POST", "/v1/publish",
                                    json.dumps({"config": SECOND}))).json()

            listing = (await request("GET", "/v1/revisions")).json()["revisions"]
            assert [r["revision"] for r in listing] == [second["revision"], first["revision"]]
            assert listing[0]["summary"] == "routes ~1" and listing[0]["role"] == "published"
            # by full name (the @ escaped or not), by counter, head and previous
            counter, _, origin = first["revision"].partition("@")
            for name in (first["revision"], f"{counter}%40{origin}", counter, "previous"):
                shown = await request("GET", f"/v1/revisions/{name}")
                assert shown.status_code == 200, (name, shown.text)
                assert shown.json()["config"] == NEW and shown.json()["previous"] is None
            assert (await request("GET", "/v1/revisions/head/")).json()["config"] == SECOND
            for name in ("99", "x@y", "previous%2Fx"):
                missing = await request("GET", f"/v1/revisions/{name}")
                assert missing.status_code == 404, name
                assert missing.json()["error"] in ("unknown_revision", "not_found")
            assert (await request("GET", "/v1/revisions/a/b")).status_code == 404
            assert (await request("POST", f"/v1/revisions/{counter}")).status_code == 405
            assert (await request("DELETE", "/v1/revisions")).status_code == 405
            assert (await request("GET", "/v1/rollback")).status_code == 405
            for body in (b'{"revision": 1}', b'{"config": {}}', b'{"force": "yes"}'):
                bad = await request("POST", "/v1/rollback", body)
                assert bad.status_code == 400 and bad.json()["error"] == "bad_request", body

            dry = (await request("POST", "/v1/rollback", b'{"dry_run": true, "diff": true}'))
            assert dry.json()["rolled_back_to"] == first["revision"]
            assert dry.json()["after"] == NEW and emulator.config == SECOND
            done = (await request("POST", "/v1/rollback",
                                  b'{"revision": "%s"}' % counter.encode())).json()
            assert done["changed"] and done["digest"] == first["digest"]
            assert emulator.config == NEW
            assert agent.peer_id in done["revision"]
