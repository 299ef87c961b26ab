"""Staged rollouts on the in-memory network: waves, health gates, halting, reverting, forged
wave messages. The real-process versions are in tests/agent/test_rollout.py."""

from __future__ import annotations

import pytest
import trio

from tests.sync.test_reconciler import cluster, config, until
from unit_p2p.errors import PublishRefused
from unit_p2p.sync import wire
from unit_p2p.sync.health import GateResult, status_matches
from unit_p2p.sync.plan import EVERYONE, Plan, PlanError, make_plan
from unit_p2p.sync.waves import sign_wave


class FakeGate:
    """A health gate whose answer the test sets; counts its checks."""

    configured = True

    def __init__(self, passed: bool = True, hold: trio.Event | None = None):
        self.passed = passed
        self.hold = hold
        self.checks = 0

    async def check(self) -> GateResult:
        self.checks += 1
        if self.hold is not None:
            await self.hold.wait()
        return GateResult(True) if self.passed else GateResult(False, "health_gate: GET "
                                                              "http://127.0.0.1:1/ answered 500")


def ordered(nodes):
    """The nodes in wave order for a rollout published by nodes[0]."""
    first, rest = nodes[0], sorted(nodes[1:], key=lambda n: n.peer_id)
    return [first, *rest]


def test_plans_from_stages():
    peers = [f"12D3KooW{c * 44}" for c in "BCDEFGHIJKL"]
    plan = make_plan(["1", "10%", "50%", "100%"], "12D3KooW" + "A" * 44, peers,
                     max_failures=2, auto_revert=True)
    assert [len(w) for w in plan.waves] == [1, 1, 4, 1] and plan.waves[-1] == (EVERYONE,)
    assert plan.waves[0] == ("12D3KooW" + "A" * 44,)
    assert Plan.from_json(plan.to_json()) == plan
    assert plan.wave_of("12D3KooW" + "Z" * 44) == 4  # unknown at publish time: the last wave
    with pytest.raises(PlanError, match="last stage must be 100%"):
        make_plan(["1", "50%"], "12D3KooW" + "A" * 44, peers)
    with pytest.raises(PlanError, match="adds no host"):
        make_plan(["2", "1", "100%"], "12D3KooW" + "A" * 44, peers)
    with pytest.raises(PlanError, match="only ever the whole last wave"):
        Plan.from_json({"waves": [["*"], ["12D3KooW" + "B" * 44]], "max_failures": 0,
                        "auto_revert": False})
    assert status_matches(204, "2xx") and status_matches(204, "204")
    assert not status_matches(500, "2xx") and not status_matches(200, "204")


async def test_second_wave_fails_its_gate_halts_and_auto_revert_restores_the_first(tmp_path):
    async with cluster(tmp_path, 4) as (_, nodes):
        with trio.fail_after(20):
            base = await nodes[0].rec.publish(config(1), wait=True, timeout=10)
        assert base.converged
        first, second, third, fourth = ordered(nodes)
        for node in nodes:
            node.rec.rollouts.gate = FakeGate(node is not second)
        with trio.fail_after(30):
            result = await first.rec.publish(config(2), stages=[1, 2, "100%"],
                                             max_failures=0, auto_revert=True, wait=True,
                                             timeout=20)
        rollout = result.rollout
        assert rollout["state"] == "halted" and rollout["wave"] == 2, rollout
        assert rollout["waves"][0]["applied"] == [first.peer_id]
        assert "answered 500" in rollout["waves"][1]["failed"][second.peer_id]
        assert not rollout["waves"][2]["open"]
        with trio.fail_after(20):
            await until(lambda: first.rec.rollouts.by_revision[result.revision].reverted_by)
            reverted = first.rec.rollouts.by_revision[result.revision].reverted_by
            await until(lambda: all(str(n.rec.head.revision) == reverted for n in nodes))
        for node in nodes:
            assert node.unit.config == config(1)
        # the third wave never took the staged revision: one apply (the base), then the revert
        for node in (third, fourth):
            with trio.fail_after(10):
                await until(lambda n=node: len(n.rec.history.entries) == 2)
            assert [e.revision for e in node.rec.history.entries] == [
                str(base.revision), reverted]
        assert second.rec.history.entries[1].revision == str(result.revision)


async def test_every_wave_passes_and_the_rollout_completes(tmp_path):
    async with cluster(tmp_path, 3) as (_, nodes):
        for node in nodes:
            node.rec.rollouts.gate = FakeGate(True)
        with trio.fail_after(30):
            result = await nodes[0].rec.publish(config(1), stages=["1", "2", "100%"],
                                                wait=True, timeout=20)
        assert result.rollout["state"] == "complete", result.rollout
        for node in nodes:
            assert node.unit.config == config(1)
            assert node.rec.rollouts.gate.checks == 1
        # everyone learned the end
        with trio.fail_after(10):
            await until(lambda: all(
                n.rec.rollouts.by_revision[result.revision].wave.state == "complete"
                for n in nodes))


async def test_forged_or_altered_wave_messages_are_refused_and_counted(tmp_path):
    async with cluster(tmp_path, 3, extra_untrusted=1) as (_, nodes):
        a, b, c, outsider = nodes
        first, second, third = ordered([a, b, c])
        for node in (a, b, c):
            node.rec.rollouts.gate = FakeGate(node is not second)
        with trio.fail_after(30):
            result = await first.rec.publish(config(1), stages=[1, 2, "100%"], wait=True,
                                             timeout=20)
        assert result.rollout["state"] == "halted"
        rev = result.revision
        state = first.rec.rollouts.by_revision[rev].wave
        # a relaying peer alters the wave (opens the last wave) under the driver's signature
        altered = wire.Wave(state.mesh, rev, state.digest, "open", 3, state.seq + 1, None,
                            state.signer, state.signature)
        # and one signed by a key nobody trusts
        forged = sign_wave(outsider.keys.private_key, state.mesh, rev, state.digest, "complete",
                           3, state.seq + 1, outsider.peer_id, None)
        for msg in (altered, forged):
            await second.rec.mesh.send_message(third.peer_id, wire.PROTO_NOTIFY,
                                               wire.encode(msg))
        with trio.fail_after(10):
            await until(lambda: third.rejected("bad_signature") >= 1
                        and third.rejected("untrusted_signer") >= 1)
        await trio.sleep(0.3)
        assert third.unit.config != config(1)
        assert third.rec.rollouts.by_revision[rev].wave.state == "halted"


async def test_a_staged_publish_with_impossible_stages_is_refused(tmp_path):
    async with cluster(tmp_path, 2) as (_, nodes):
        with pytest.raises(PublishRefused, match="adds no host"), trio.fail_after(10):
            await nodes[0].rec.publish(config(1), stages=[5, 6, "100%"])


async def test_abort_keeps_the_closed_waves_out_and_revert_goes_back(tmp_path):
    async with cluster(tmp_path, 3) as (_, nodes):
        with trio.fail_after(20):
            base = await nodes[0].rec.publish(config(1), wait=True, timeout=10)
        first, second, third = ordered(nodes)
        gate_runs = trio.Event()  # the second wave's gate runs until the test lets it end
        for node in nodes:
            node.rec.rollouts.gate = FakeGate(True, gate_runs if node is second else None)
        with trio.fail_after(30):
            result = await first.rec.publish(config(2), stages=[1, 2, "100%"], wait=False)
            rev = result.revision
            await until(lambda: second.rec.rollouts.gate.checks == 1
                        and rev in third.rec.rollouts.held)
        # an operator aborts from the third host, with a revert, while the second wave runs
        with trio.fail_after(20):
            await third.rec.rollouts.driver.abort(str(rev), revert=True)
            await until(lambda: all(n.rec.rollouts.by_revision[rev].wave.state == "aborted"
                                    for n in nodes))
            reverted = third.rec.rollouts.by_revision[rev].reverted_by
            await until(lambda: all(str(n.rec.head.revision) == reverted for n in nodes))
            gate_runs.set()
        for node in nodes:
            assert node.unit.config == config(1)
        assert rev in third.rec.candidates.failed  # never applied, given up
        with trio.fail_after(10):
            await until(lambda: len(third.rec.history.entries) == 2)
        assert [e.revision for e in third.rec.history.entries] == [str(base.revision), reverted]
        with pytest.raises(PublishRefused, match="aborted"):
            await first.rec.rollouts.driver.resume(str(rev))


async def test_a_host_away_during_the_rollout_learns_where_it_stands_when_it_connects(tmp_path):
    async with cluster(tmp_path, 3) as (_, nodes):
        first, second, late = ordered(nodes)
        for node in nodes:
            node.rec.rollouts.gate = FakeGate(True)
        late.mesh.up = False
        with trio.fail_after(30):
            result = await first.rec.publish(config(1), stages=[1, 2, "100%"])
            rollout = first.rec.rollouts.by_revision[result.revision]
            # the last wave is open, and waits for the host that is away
            await until(lambda: rollout.wave.wave == 3)
        view = await first.rec.rollouts.driver.view(None, gather=False)
        assert view["state"] == "open" and view["waves"][2]["pending"] == [late.peer_id]
        assert late.unit.config == config(0)
        # back: its peers see a new connection (as the mesh reports one) and tell it
        late.mesh.up = True
        for node in (first, second):
            await node.rec.on_peer_connected(late.peer_id)
            await late.rec.on_peer_connected(node.peer_id)
        with trio.fail_after(20):
            await until(lambda: late.rec.head is not None
                        and late.rec.head.revision == result.revision)
            await until(lambda: rollout.wave.state == "complete")
        assert late.unit.config == config(1)


async def test_a_restart_during_the_gate_runs_it_again(tmp_path):
    async with cluster(tmp_path, 2) as (_, nodes):
        first, second = ordered(nodes)
        gate_runs = trio.Event()
        first.rec.rollouts.gate = FakeGate(True)
        second.rec.rollouts.gate = FakeGate(True, gate_runs)
        with trio.fail_after(30):
            result = await first.rec.publish(config(1), stages=[1, "100%"], wait=False)
            await until(lambda: second.rec.rollouts.gate.checks == 1)
        # the agent stops before its gate ends: a new one on the same state dir runs it again
        from unit_p2p.sync.rollout import Rollouts

        again = Rollouts(second.rec, second.settings.state_dir, FakeGate(True))
        spawned = []
        second.rec.spawn = lambda fn, *args: spawned.append(fn.__name__)
        await again.load(second.rec.head)
        assert second.rec.head.revision == result.revision
        assert spawned == ["_gate_and_report"]
        # and the publisher, restarted while its rollout waits for that gate, drives it again
        restarted = Rollouts(first.rec, first.settings.state_dir, FakeGate(True))
        first.rec.spawn = lambda fn, *args: spawned.append(fn.__name__)
        await restarted.load(first.rec.head)
        assert spawned == ["_gate_and_report", "_drive"]
        gate_runs.set()


async def test_resume_next_passes_a_wave_that_cannot_finish(tmp_path):
    async with cluster(tmp_path, 3) as (_, nodes):
        first, second, third = ordered(nodes)
        gate_runs = trio.Event()  # the second wave's gate never ends (its host is as if gone)
        for node in nodes:
            node.rec.rollouts.gate = FakeGate(True, gate_runs if node is second else None)
        with trio.fail_after(30):
            result = await first.rec.publish(config(1), stages=[1, 2, "100%"])
            rev = result.revision
            await until(lambda: second.rec.rollouts.gate.checks == 1
                        and rev in third.rec.rollouts.held)
            # a plain resume drives the open wave: it still waits for the second host
            await third.rec.rollouts.driver.resume(str(rev))
            assert rev in third.rec.rollouts.held
            await third.rec.rollouts.driver.resume(str(rev), next_wave=True)
            await until(lambda: third.rec.head is not None and third.rec.head.revision == rev)
            assert third.rec.rollouts.by_revision[rev].wave.signer == third.peer_id
            gate_runs.set()
            await until(lambda: first.rec.rollouts.by_revision[rev].wave.state == "complete")
        assert third.unit.config == config(1)
