"""The staged-rollout routes of the local API, in-process with a real libp2p host and an emulated
Unit: a staged publish's options and answer, GET /v1/rollout[/REV], resume, abort, their errors."""

from __future__ import annotations

import json

import trio

from tests.agent.harness import NEW, api_request, running_agent


async def test_staged_publish_and_rollout_routes_and_their_errors(tmp_path):
    async with running_agent(tmp_path) as (agent, _emulator):
        path = str(tmp_path / "api.sock")

        async def request(method, url, body=None):
            data = json.dumps(body) if isinstance(body, dict) else body
            return await api_request(path, method, url, data)

        with trio.fail_after(60):
            missing = await request("GET", "/v1/rollout")
            assert missing.status_code == 404 and missing.json()["error"] == "unknown_rollout"
            for body in ({"config": NEW, "stages": "1,100%"}, {"config": NEW, "stages": []},
                         {"config": NEW, "max_failures": 1},
                         {"config": NEW, "stages": ["100%"], "max_failures": -1},
                         {"config": NEW, "stages": ["100%"], "auto_revert": "yes"}):
                bad = await request("POST", "/v1/publish", body)
                assert bad.status_code == 400 and bad.json()["error"] == "bad_request", body
            for stages, why in (([1, 1, "100%"], "adds no host"),
                                ([1, "50%"], "last stage must be 100%"),
                                (["ten", "100%"], "is not a host count")):
                refused = await request("POST", "/v1/publish", {"config": NEW, "stages": stages})
                assert refused.status_code == 409, refused.text
                assert refused.json()["error"] == "bad_stages" and why in refused.json()["detail"]
            # nothing was published by the refusals
            assert (await request("GET", "/v1/status")).json()["head"] is None

            done = await request("POST", "/v1/publish", {"config": NEW, "stages": [1, "100%"],
                                                          "wait": True, "timeout": 20})
            assert done.status_code == 200, done.text
            rollout = done.json()["rollout"]
            assert rollout["state"] == "complete" and rollout["wave"] == 2, rollout
            assert rollout["waves"][0]["applied"] == [agent.peer_id]
            counter = done.json()["revision"].split("@")[0]
            for url in ("/v1/rollout", f"/v1/rollout/{counter}",
                        f"/v1/rollout/{done.json()['revision']}"):
                shown = await request("GET", url)
                assert shown.status_code == 200 and shown.json()["state"] == "complete", url
            assert (await request("GET", "/v1/rollout/99")).status_code == 404
            for action in ("resume", "abort"):
                finished = await request("POST", f"/v1/rollout/{action}", {})
                assert finished.status_code == 409, finished.text
                assert finished.json()["error"] == "rollout_finished"
            bad = await request("POST", "/v1/rollout/abort", {"revert": "yes"})
            assert bad.status_code == 400
            assert (await request("GET", "/v1/rollout/resume")).status_code == 404
            assert (await request("DELETE", "/v1/rollout")).status_code == 405
