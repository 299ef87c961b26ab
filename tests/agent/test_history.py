"""History, rollback and the publish guards with real agent processes, driven by the CLI.

Every wait is bounded; convergence is awaited by polling the agents' own status.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import trio

from tests.agent.harness import running_fleet

pytestmark = pytest.mark.slow


def site(n: int, apps: int = 4) -> dict:
    return {"listeners": {"*:8080": {"pass": "routes"}},
            "routes": [{"match": {"uri": f"/v{n}/{i}"}, "action": {"return": 200}}
                       for i in range(4)],
            "applications": {f"app{i}": {"type": "python", "path": "/srv", "module": f"app{i}"}
                             for i in range(apps)}}


async def cli(agent, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``unit-p2p ARGS --api <agent's socket>`` in a subprocess."""
    cmd = [sys.executable, "-m", "unit_p2p", *args, "--api", agent.api]
    return await trio.to_thread.run_sync(lambda: subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout))


async def heads(f) -> list[str]:
    return [(await agent.call("status"))["head"]["revision"] for agent in f]


async def test_rollback_converges_everywhere_and_a_host_down_during_the_bad_revision_skips_it(
        tmp_path):
    async with running_fleet(tmp_path, 3, extra_args=["--no-mdns"]) as f:
        a, b, late = f
        with trio.fail_after(120):
            good = await a.call("publish", config=site(1), wait=True, timeout=30,
                                http_timeout=45)
            assert good["converged"], good
            late.kill(signal.SIGKILL)
            # the bad one: every route answers 500
            bad_config = site(1)
            for route in bad_config["routes"]:
                route["action"] = {"return": 500}
            bad = await b.call("publish", config=bad_config, wait=True, timeout=5,
                               http_timeout=20)
            assert late.peer_id in bad["peers"]["pending"]
            await f.wait_converged(bad["digest"], [a, b])

            # roll back from a host that followed both; the late host is down: not converged
            done = await cli(a, "rollback", "--wait", "--timeout", "5")
            assert done.returncode == 1, done.stderr
            assert f"rolled back to {good['revision']} as " in done.stderr
            status = await a.call("status")
            back = status["head"]["revision"]
            assert status["head"]["digest"] == good["digest"]
            assert int(back.split("@")[0]) == int(bad["revision"].split("@")[0]) + 1

            late.start()
            await late.wait_ready()
            # the rollback has the good revision's digest, which the late host already holds:
            # wait for the revision itself
            while [h for h in await heads(f) if h != back]:  # noqa: ASYNC110 - other processes
                await trio.sleep(0.1)
            for agent in f:
                assert await agent.unit.get("/config") == site(1)
            # the late host went from the good revision straight to the rollback
            history = json.loads((await cli(late, "history", "--json")).stdout)["revisions"]
            assert [r["revision"] for r in history] == [back, good["revision"]]
            assert history[0]["role"] == "followed" and history[0]["summary"] == "same config"

            # the publisher of the rollback: its history, show and diff
            listing = (await cli(a, "history")).stdout
            lines = listing.splitlines()
            assert len(lines) == 4 and lines[1].startswith("* ")
            assert "published" in lines[1] and "routes ~4" in lines[1]
            assert "followed" in lines[2] and "routes ~4" in lines[2]
            shown = await cli(a, "show", bad["revision"].split("@")[0])
            assert shown.returncode == 0 and json.loads(shown.stdout) == bad_config
            diff = (await cli(a, "diff", back)).stdout
            assert diff.startswith(f"--- {bad['revision']}\n+++ {back}\n")
            assert '-        "return": 500' in diff and '+        "return": 200' in diff
            missing = await cli(a, "show", "999")
            assert missing.returncode == 1
            assert "404 unknown_revision" in missing.stderr
            # the publisher hears every host apply the rollback (the late one's report may
            # still be on its way)
            while (await a.call("revisions"))["revisions"][0]["fleet"]["applied"] < 3:  # noqa: ASYNC110
                await trio.sleep(0.1)


async def test_a_shrinking_publish_is_refused_by_name_and_forced(tmp_path):
    async with running_fleet(tmp_path, 2, extra_args=["--no-mdns"]) as f:
        a, b = f
        with trio.fail_after(120):
            first = await a.call("publish", config=site(1), wait=True, timeout=30,
                                 http_timeout=45)
            assert first["converged"], first
            path = tmp_path / "small.json"
            path.write_text(json.dumps(site(1, apps=1)))
            refused = await cli(a, "publish", "--config-file", str(path), "--wait")
            assert refused.returncode == 1
            assert "409 shrink" in refused.stderr
            assert "remove 3 of 4 applications (app1, app2, app3)" in refused.stderr
            assert await a.call("status") and await a.unit.get("/config") == site(1)
            assert await b.head_digest() == first["digest"]
            forced = await cli(a, "publish", "--config-file", str(path), "--wait", "--force")
            assert forced.returncode == 0, forced.stderr
            digest = await a.head_digest()
            await f.wait_converged(digest)
            assert await b.unit.get("/config") == site(1, apps=1)
            path.write_text(json.dumps({"listeners": {}, "routes": [], "applications": {}}))
            blank = await cli(a, "publish", "--config-file", str(path))
            assert blank.returncode == 1 and "409 blank_config" in blank.stderr
