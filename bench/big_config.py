"""A big config (about 1.5 MB, 20k routes) published to N agents, against one local PUT.

    python -m bench.big_config --agents 10 --routes 20000 --rounds 3

Each round publishes a different big config from agent 0 (``POST /v1/publish`` with the config:
the publisher PUTs it into its own Unit first) and times it to the latest ``head.applied_at``
of all agents (each pulled 1.5 MB over libp2p, verified the digest, PUT it and read it back).
The baseline is what a single host does without a mesh: one PUT of the same config to an
emulated Unit, and the PUT plus the read-back the agent also does.

Every emulated Unit (the agents' and the baseline's) listens on a unix control socket and cuts
answers larger than the socket's send buffer, as Unit 1.35 does, so every read of the whole
config is done in pieces (docs/unit.md); the baseline's read-back too. For scale the baseline is
also measured with whole answers (``--whole-answers`` on the emulator). ``--whole-answers`` runs
the fleet's emulated Units that way too, which is what a loopback TCP control socket gives.

The agent refuses documents over ``max_config_bytes`` (default 8 MiB), so 1.5 MB is well within.
Writes bench/results/big_config.{md,json} (``--out`` names another).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import trio

from bench import common
from bench.common import md_table
from unit_p2p.fleet import BASE_CONFIG
from unit_p2p.sync.revision import canonical_json
from unit_p2p.unit.client import UnitClient
from unit_p2p.unit.emulator import UnitEmulator


def big_config(routes: int, round_: int) -> dict:
    """``routes`` distinct URI routes ahead of the catch-all; the round number makes each new."""
    table = [{"match": {"uri": f"/api/v{round_}/items/{i:05d}/*", "method": "GET"},
              "action": {"return": 200 + i % 3}} for i in range(routes)]
    return dict(BASE_CONFIG, routes=[*table, *BASE_CONFIG["routes"]])


def local_put(address: str, config: dict, repeats: int) -> dict[str, float]:
    """Median ms of one PUT, and of PUT + GET (the agent's read-back), over ``repeats``."""
    put, put_get = [], []
    with UnitClient(address, timeout=60) as unit:
        unit.put("/config", BASE_CONFIG)
        for _ in range(repeats):
            t0 = time.perf_counter()
            unit.put("/config", config)
            t1 = time.perf_counter()
            unit.get("/config")
            t2 = time.perf_counter()
            put.append((t1 - t0) * 1000)
            put_get.append((t2 - t0) * 1000)
            unit.put("/config", BASE_CONFIG)
        return {"put_ms": statistics.median(put), "put_get_ms": statistics.median(put_get),
                "piece_requests_per_read": unit.piece_requests / repeats}


async def baseline(workdir: Path, config: dict, repeats: int, cut: bool) -> dict[str, float]:
    """``local_put`` from a process of its own, like an agent: a client thread in the
    emulator's own process shares its interpreter lock, which changes how fast it reads and
    so how Unit's (and the emulator's) cut falls."""
    sock = workdir / f"baseline-{'cut' if cut else 'whole'}.sock"
    conf_file = workdir / "baseline-config.json"
    conf_file.write_text(json.dumps(config))
    async with trio.open_nursery() as nursery:
        emu = UnitEmulator(f"unix:{sock}", cut_unix_answers=cut)
        await nursery.start(emu.serve)
        done = await trio.run_process(
            [sys.executable, "-m", "bench.big_config", "--local-put", f"unix:{sock}",
             str(conf_file), str(repeats)], capture_stdout=True)
        nursery.cancel_scope.cancel()
    return json.loads(done.stdout)


async def main(args: argparse.Namespace) -> int:
    meta = {"machine": common.machine(), "agents": args.agents, "routes": args.routes,
            "whole_answers": args.whole_answers,
            "rounds": args.rounds, "topology": args.topology,
            "command": "python -m bench.big_config " + " ".join(sys.argv[1:])}
    print(common.machine_line(meta["machine"]), flush=True)
    configs = [big_config(args.routes, r + 1) for r in range(args.rounds)]
    size = len(canonical_json(configs[0]))
    meta["config_bytes"] = size
    print(f"config: {args.routes} routes, {size / 1e6:.2f} MB canonical JSON", flush=True)

    rounds = []
    async with common.running_fleet(args.agents, args.topology, seed=args.seed,
                                    announce_interval=common.DEFAULT_ANNOUNCE,
                                    start_timeout=args.start_timeout,
                                    extra_args=("--unit-timeout", str(args.unit_timeout))) as fleet:
        await common.wait_mesh_formed(fleet, args.topology, 60)
        for a in fleet:
            a.emulator.cut_unix_answers = not args.whole_answers
        whole = await baseline(fleet[0].dir.parent, configs[0], args.repeats, cut=False)
        base = await baseline(fleet[0].dir.parent, configs[0], args.repeats, cut=True)
        print(f"one local PUT to an emulated Unit: {base['put_ms']:.0f} ms "
              f"(with the read-back in pieces {base['put_get_ms']:.0f} ms, "
              f"{base['piece_requests_per_read']:.0f} requests; with whole answers "
              f"{whole['put_get_ms']:.0f} ms)", flush=True)
        for r, cfg in enumerate(configs, 1):
            cuts0 = sum(a.emulator.cut_answers for a in fleet)
            cpu0 = common.fleet_cpu(fleet)
            t0 = time.time()
            result = await fleet[0].call("publish", config=cfg, http_timeout=args.deadline)
            published = time.time()
            applied = await common.wait_applied(fleet.agents, result["revision"], args.deadline)
            cpu = common.fleet_cpu(fleet) - cpu0
            cuts = sum(a.emulator.cut_answers for a in fleet) - cuts0
            ok = len(applied) == args.agents
            ms = (max(applied.values()) - t0) * 1000 if ok else None
            rounds.append({"round": r, "all_applied_ms": ms, "cpu_s": cpu, "cut_answers": cuts,
                           "load": os.getloadavg()[0], "publish_call_ms":
                           (published - t0) * 1000, "applied": len(applied),
                           "per_agent_ms": sorted((t - t0) * 1000 for t in applied.values())})
            print(f"  round {r}: publish call {(published - t0) * 1000:.0f} ms, "
                  + (f"all {args.agents} applied in {ms:.0f} ms" if ok else
                     f"MISS: {len(applied)}/{args.agents} within {args.deadline:g} s")
                  + f", {cpu:.1f} CPU s (agents + emulated Units), {cuts} answers cut",
                  flush=True)
            await trio.sleep(2)
        rss = common.fleet_rss(fleet)

    done = [r["all_applied_ms"] for r in rounds if r["all_applied_ms"] is not None]
    rows = [[str(r["round"]), f"{r['publish_call_ms']:.0f}",
             common.fmt_ms(r["all_applied_ms"]), f"{r['applied']}/{args.agents}",
             common.fmt_ms(r["per_agent_ms"][0] if r["per_agent_ms"] else None),
             common.fmt_ms(statistics.median(r["per_agent_ms"]) if r["per_agent_ms"] else None),
             f"{r['cpu_s']:.1f}", str(r["cut_answers"]), f"{r['load']:.1f}"]
            for r in rounds]
    table = md_table(["round", "publish call ms (local PUT + announce)", "all applied ms",
                      "applied", "first agent ms", "median agent ms",
                      "CPU s (agents + Units)", "answers cut", "load (1 min)"], rows)
    # The fleet is measured against the baseline read the same way (in pieces, or whole).
    ref = whole if args.whole_answers else base
    ratio = (f"{statistics.median(done) / ref['put_get_ms']:.1f}x one local PUT + read-back"
             if done else "-")
    target_ms = 3 * ref["put_get_ms"] + 1000
    met = bool(done) and len(done) == len(rounds) and max(done) <= target_ms
    markdown = "\n".join([
        f"# Big config: {size / 1e6:.2f} MB ({args.routes} routes) to {args.agents} agents", "",
        f"Machine: {common.machine_line(meta['machine'])}.", "",
        f"Command: `{meta['command']}`. Topology {args.topology} (mDNS off), agent defaults "
        f"(max_config_bytes 8 MiB). Each round publishes a new {size / 1e6:.2f} MB config from "
        f"agent 0; time from the publish request to the last agent's `head.applied_at`.", "",
        table, "",
        f"Baseline, one local PUT of the same config to an emulated Unit on a unix socket "
        f"that cuts big answers (median of {args.repeats}): **{base['put_ms']:.0f} ms**, with "
        f"the read-back (in pieces, {base['piece_requests_per_read']:.0f} requests) "
        f"**{base['put_get_ms']:.0f} ms**; with whole answers the PUT + read-back takes "
        f"{whole['put_get_ms']:.0f} ms. For scale: real NGINX Unit takes about 70-145 ms "
        f"for a 1.5 MB PUT (../shared/unit-fixtures, measured on an idle machine). Every "
        f"agent's apply reads the whole config after its PUT (before it, only its host-local "
        f"values, once it holds the head; round 1 reads the small base config whole), "
        + ("and the agents' Units send whole answers (`--whole-answers`, as over TCP): the "
           "target is against the baseline with whole answers."
           if args.whole_answers else "each read in pieces."),
        "",
        f"All {args.agents} applied, median over rounds: **"
        f"{common.fmt_ms(statistics.median(done) if done else None)} ms** ({ratio}). Target "
        f"(all applied within 3x one local PUT + read-back, + 1 s = {target_ms:.0f} ms): "
        f"**{'met' if met else 'missed'}**.", "",
        f"Agent RSS after the rounds: {common.fmt_mib(rss)} MiB median (min-max).", ""])
    common.write_result(args.out, markdown, {"meta": meta, "baseline": base,
                                                 "baseline_whole_answers": whole,
                                                 "target_ms": target_ms, "target_met": met,
                                                 "rounds": rounds, "rss_mib": rss})
    print()
    print(markdown)
    return 0 if len(done) == len(rounds) else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.big_config", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=10)
    p.add_argument("--routes", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="local PUTs for the baseline")
    p.add_argument("--topology", choices=["mesh", "star"], default="mesh")
    p.add_argument("--deadline", type=float, default=600.0)
    p.add_argument("--unit-timeout", type=float, default=300.0,
                   help="agents' unit_timeout (per request to the emulated Unit)")
    p.add_argument("--start-timeout", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--whole-answers", action="store_true",
                   help="the agents' emulated Units send whole answers (as over TCP)")
    p.add_argument("--out", default="big_config", help="results name under bench/results/")
    args = p.parse_args(argv)
    if args.agents < 2 or args.routes < 1 or args.rounds < 1:
        p.error("--agents must be at least 2, --routes and --rounds at least 1")
    return args


if __name__ == "__main__":
    if sys.argv[1:2] == ["--local-put"]:  # the baseline's client process (see baseline())
        address, conf_path, repeats = sys.argv[2:5]
        result = local_put(address, json.loads(Path(conf_path).read_text()), int(repeats))
        print(json.dumps(result))
        sys.exit(0)
    sys.exit(common.run_main(main, parse()))
