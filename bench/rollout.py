"""A 3-wave staged rollout across N agents, side by side with a plain publish of the same kind of
change, in one fleet.

    python -m bench.rollout --agents 10 --rounds 4

Every agent keeps its own loopback listener (``/listeners`` excluded, so the emulated Units, all
in this process, do not fight over ports) and has a health gate on it: ``GET /healthz`` through
its emulated Unit, 2xx expected, ``--gate-attempts`` tries ``--gate-interval`` s apart. Rounds
alternate ``plain`` (``POST /v1/publish`` with a new config) and ``staged`` (the same with
``stages: [1, "50%", "100%"]`` and ``wait``: the agent answers when the rollout is complete).
Timed: plain, from the publish request to the last agent's ``head.applied_at``; staged, to the
publish's answer (the rollout complete: the last wave's gates passed and reported) and to the
last ``head.applied_at``. Counted per round over the whole fleet: messages sent by kind
(``unit_p2p_messages_total``), CPU seconds (agents + emulated Units). Writes
bench/results/rollout.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from collections import Counter

import trio

from bench import common
from bench.common import md_table
from unit_p2p.fleet import free_ports

STAGES = [1, "50%", "100%"]
_MESSAGE = re.compile(r'^unit_p2p_messages_total\{direction="sent",kind="([a-z_]+)",'
                      r'protocol="([a-z]+)"\} ([0-9.e+]+)$')


def config(round_: int) -> dict:
    return {"applications": {},
            "routes": [{"match": {"uri": "/healthz"}, "action": {"return": 200}},
                       {"match": {"uri": f"/round/{round_}/*"}, "action": {"return": 204}},
                       {"action": {"return": 404}}]}


def sent(metrics_text: str) -> Counter:
    """Messages this agent sent, by protocol/kind."""
    out: Counter = Counter()
    for line in metrics_text.splitlines():
        m = _MESSAGE.match(line)
        if m:
            out[f"{m.group(2)}/{m.group(1)}"] += float(m.group(3))
    return out


async def fleet_sent(fleet) -> Counter:
    total: Counter = Counter()
    for a in fleet:
        total += sent(await a.call("metrics", http_timeout=30))
    return total


async def main(args: argparse.Namespace) -> int:
    meta = {"machine": common.machine(), "agents": args.agents, "rounds": args.rounds,
            "stages": STAGES, "gate": {"attempts": args.gate_attempts,
                                       "interval": args.gate_interval},
            "command": "python -m bench.rollout " + " ".join(sys.argv[1:])}
    print(common.machine_line(meta["machine"]), flush=True)
    rounds = []
    async with common.running_fleet(args.agents, "mesh", seed=args.seed,
                                    announce_interval=common.DEFAULT_ANNOUNCE,
                                    start_timeout=args.start_timeout,
                                    start_agents=False) as fleet:
        ports = free_ports(args.agents, 33000, 34000)
        for a, port in zip(fleet, ports, strict=True):
            await a.unit.put("/config", {"listeners": {f"127.0.0.1:{port}": {"pass": "routes"}},
                                         **config(0)})
            a.extra_args = ["--exclude", "/listeners",
                            "--health-url", f"http://127.0.0.1:{port}/healthz",
                            "--health-attempts", str(args.gate_attempts),
                            "--health-interval", str(args.gate_interval)]
            a.start()
        with trio.fail_after(args.start_timeout):
            for a in fleet:
                await a.wait_ready()
        await common.wait_mesh_formed(fleet, "mesh", 60)
        for r in range(1, args.rounds + 1):
            kind = "staged" if r % 2 == 0 else "plain"
            before = await fleet_sent(fleet)
            cpu0 = common.fleet_cpu(fleet)
            t0 = time.time()
            options = {"stages": STAGES, "wait": True, "timeout": args.deadline} \
                if kind == "staged" else {}
            result = await fleet[0].call("publish", config=config(r), **options,
                                         http_timeout=args.deadline + 30)
            answered = time.time()
            applied = await common.wait_applied(fleet.agents, result["revision"], args.deadline)
            cpu = common.fleet_cpu(fleet) - cpu0
            await trio.sleep(1)  # the last reports and wave messages are counted too
            messages = await fleet_sent(fleet) - before
            ok = len(applied) == args.agents
            state = (result.get("rollout") or {}).get("state")
            if kind == "staged" and state != "complete":
                ok = False
            row = {"round": r, "kind": kind, "applied": len(applied),
                   "all_applied_ms": (max(applied.values()) - t0) * 1000 if ok else None,
                   "answered_ms": (answered - t0) * 1000, "state": state,
                   "waves": [len(w["hosts"]) for w in (result.get("rollout") or {})
                             .get("waves", [])],
                   "cpu_s": cpu, "messages": dict(messages), "load": os.getloadavg()[0]}
            rounds.append(row)
            total = sum(messages.values())
            print(f"  round {r} ({kind}{' ' + str(state) if state else ''}): "
                  + (f"all {args.agents} applied in {row['all_applied_ms']:.0f} ms, answered in "
                     f"{row['answered_ms']:.0f} ms" if ok
                     else f"MISS {len(applied)}/{args.agents}")
                  + f", {total:.0f} messages sent, {cpu:.1f} CPU s, load {row['load']:.1f}",
                  flush=True)
            await trio.sleep(2)

    def med(kind: str, key: str) -> float | None:
        values = [x[key] for x in rounds if x["kind"] == kind and x[key] is not None]
        return statistics.median(values) if values else None

    kinds = sorted({k for x in rounds for k in x["messages"]})

    def per_kind(kind: str) -> list[str]:
        rows = [x for x in rounds if x["kind"] == kind]
        return [f"{statistics.median([x['messages'].get(k, 0) for x in rows]):.0f}"
                for k in kinds]

    rows = [[str(x["round"]), x["kind"], x["state"] or "-",
             "/".join(map(str, x["waves"])) or "-", common.fmt_ms(x["all_applied_ms"]),
             common.fmt_ms(x["answered_ms"]), f"{x['applied']}/{args.agents}",
             f"{sum(x['messages'].values()):.0f}", f"{x['cpu_s']:.1f}", f"{x['load']:.1f}"]
            for x in rounds]
    markdown = "\n".join([
        f"# A 3-wave staged rollout across {args.agents} agents", "",
        f"Machine: {common.machine_line(meta['machine'])}.", "",
        f"Command: `{meta['command']}`. Mesh topology (mDNS off), each agent with a health gate "
        f"(GET /healthz through its emulated Unit, {args.gate_attempts} tries "
        f"{args.gate_interval} s apart). Rounds alternate a plain publish and a staged one "
        f"(`stages: {STAGES}`, `wait`), both from agent 0. All applied: publish request to the "
        "last agent's `head.applied_at`; answered: to the publish's answer (for a staged "
        "publish, the rollout complete: every gate of the last wave passed and reported).", "",
        md_table(["round", "kind", "rollout", "wave sizes", "all applied ms", "answered ms",
                  "applied", "messages sent", "CPU s (agents + Units)", "load (1 min)"],
                 rows), "",
        "Messages the whole fleet sent per round (median), by protocol/kind:", "",
        md_table(["kind", *kinds], [["plain", *per_kind("plain")],
                                    ["staged", *per_kind("staged")]]), "",
        f"Median: plain all applied **{common.fmt_ms(med('plain', 'all_applied_ms'))} ms**; "
        f"staged all applied **{common.fmt_ms(med('staged', 'all_applied_ms'))} ms**, rollout "
        f"complete **{common.fmt_ms(med('staged', 'answered_ms'))} ms**; CPU "
        f"{med('plain', 'cpu_s') or 0:.1f} vs {med('staged', 'cpu_s') or 0:.1f} s.", ""])
    common.write_result(args.out, markdown, {"meta": meta, "rounds": rounds})
    print()
    print(markdown)
    return 0 if all(x["all_applied_ms"] is not None for x in rounds) else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.rollout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=10)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--gate-attempts", type=int, default=3)
    p.add_argument("--gate-interval", type=float, default=0.2)
    p.add_argument("--deadline", type=float, default=120.0)
    p.add_argument("--start-timeout", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default="rollout", help="results name under bench/results/")
    args = p.parse_args(argv)
    if args.agents < 3 or args.rounds < 2:
        p.error("--agents must be at least 3 and --rounds at least 2")
    return args


if __name__ == "__main__":
    sys.exit(common.run_main(main, parse()))
