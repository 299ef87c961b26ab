"""unit_p2p_info and unit_p2p_publish's rollback / force, with their run() against real agents.

run() is what main() calls with the AnsibleModule's parameters and check/diff flags; here it
talks to real agent processes (tests.agent's fleet), so the answers are the agent's own.
"""

from __future__ import annotations

import pytest
import trio
from ansible_helpers import ad_hoc_result, run_ansible, tool

from ansible_collections.unit_p2p.mesh.plugins.module_utils.agent_api import AgentAPI, AgentError
from ansible_collections.unit_p2p.mesh.plugins.modules import unit_p2p_info as info
from ansible_collections.unit_p2p.mesh.plugins.modules import unit_p2p_publish as publish
from tests.agent.harness import running_fleet
from tests.agent.test_history import site

pytestmark = pytest.mark.slow


def module(agent, fn, *args, **kwargs):
    """Run a module's run() against ``agent``'s socket in a thread."""
    api = AgentAPI(agent.api.removeprefix("unix:"))
    return trio.to_thread.run_sync(lambda: fn(*args, api, **kwargs))


async def test_info_rollback_in_check_diff_and_real_mode_and_force(tmp_path, ansible_env):
    async with running_fleet(tmp_path, 2, extra_args=["--no-mdns"]) as f:
        a, b = f
        with trio.fail_after(120):
            good = await module(a, publish.run, {"config": site(1), "wait": True})
            assert good["changed"] and good["peers"]["applied"]
            bad = await module(a, publish.run, {"config": site(2), "wait": True})

            facts = await module(a, info.run, {"revision": "previous"})
            assert facts["changed"] is False and facts["peer_id"] == a.peer_id
            assert facts["head"]["revision"] == bad["revision"]
            assert [r["revision"] for r in facts["history"]] == [bad["revision"],
                                                                 good["revision"]]
            assert facts["history"][0]["summary"] == "routes ~4"
            assert {p["peer_id"] for p in facts["peers"]} == {b.peer_id}
            assert facts["config"] == site(1)

            # check mode with diff: what a rollback would do, nothing published
            checked = await module(a, publish.run, {"rollback": "previous"}, check_mode=True,
                                   diff=True)
            assert checked["changed"] and checked["rolled_back_to"] == good["revision"]
            assert checked["diff"]["before"] == site(2) and checked["diff"]["after"] == site(1)
            assert "check mode published nothing" in checked["msg"]
            assert await a.unit.get("/config") == site(2)

            back = await module(b, publish.run, {"rollback": "previous", "wait": True})
            assert back["rolled_back_to"] == good["revision"]
            assert back["msg"].startswith(f"rolled back to {good['revision']} as revision ")
            await f.wait_converged(good["digest"])

            # a shrink is refused by name, then forced
            small = site(1, apps=1)
            with pytest.raises(AgentError, match=r"refused to publish \(shrink; nothing "
                                                 r"changed\).*app1, app2, app3.*force"):
                await module(a, publish.run, {"config": small})
            forced = await module(a, publish.run, {"config": small, "force": True,
                                                   "wait": True})
            assert forced["changed"] and forced["converged"]

            # through Ansible itself: the module_utils travel with the module
            argv = [tool("ansible"), "localhost", "-i", "localhost,", "-c", "local", "-m",
                    "unit_p2p.mesh.unit_p2p_info", "-a", f"socket={a.api.removeprefix('unix:')}"]
            proc = await trio.to_thread.run_sync(run_ansible, argv, ansible_env)
            state, ad_hoc = ad_hoc_result(proc)
            assert state == "SUCCESS", proc.stdout + proc.stderr
            assert ad_hoc["head"]["revision"] == forced["revision"]
            assert ad_hoc["history"][0]["summary"] == "applications -3"

            with pytest.raises(AgentError, match="has no such revision"):
                await module(a, info.run, {"revision": "999"})
            with pytest.raises(AgentError, match="mutually exclusive"):
                await module(a, publish.run, {"config": small, "rollback": "previous"})
