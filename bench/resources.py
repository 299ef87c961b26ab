"""A config with 3 TLS listeners and their 3 certificate bundles synced to N agents, against the
same kind of config without bundles, side by side in one fleet.

    python -m bench.resources --agents 10 --rounds 4

Rounds alternate: ``plain`` publishes a new config without TLS (the agents delete the bundles
they uploaded), ``bundles`` a new config naming three bundles ``site0..2``, each new (fresh keys
and certificates every round, so every agent pulls all three and uploads them to its Unit under
new names). Each publish goes from agent 0 (``POST /v1/publish`` with the config and, for
``bundles``, the three PEM texts), timed to the latest ``head.applied_at`` of all agents (stamped
by each agent after its pulls, uploads, PUT and read-back). Also counted per round: pull requests
sent by the whole fleet (document + blobs), bytes pulled, CPU seconds (agents + emulated Units).
Writes bench/results/resources.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time

import trio

from bench import common
from bench.common import md_table
from tests.tlsbundle import bundle

LISTENERS = 3


def config(round_: int, tls: bool) -> dict:
    """Wildcard listeners: the emulated Units, all in this process, bind loopback ones only."""
    listeners = {f"*:{8443 + i}": {"pass": "routes", **({"tls": {"certificate": f"site{i}"}}
                                                        if tls else {})}
                 for i in range(LISTENERS)}
    return {"listeners": listeners, "applications": {},
            "routes": [{"match": {"uri": f"/round/{round_}/*"}, "action": {"return": 200}},
                       {"action": {"return": 204}}]}


def counters(metrics_text: str) -> tuple[float, float]:
    """(pull requests sent, bytes pulled) of one agent."""
    pulls = pulled = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("unit_p2p_messages_total{") and 'protocol="pull"' in line \
                and 'kind="pull"' in line and 'direction="sent"' in line:
            pulls += float(line.rsplit(" ", 1)[1])
        elif re.match(r"unit_p2p_pulled_bytes_total ", line):
            pulled += float(line.rsplit(" ", 1)[1])
    return pulls, pulled


async def fleet_counters(fleet) -> tuple[float, float]:
    total = [0.0, 0.0]
    for a in fleet:
        pulls, pulled = counters(await a.call("metrics", http_timeout=30))
        total[0] += pulls
        total[1] += pulled
    return total[0], total[1]


async def main(args: argparse.Namespace) -> int:
    meta = {"machine": common.machine(), "agents": args.agents, "rounds": args.rounds,
            "command": "python -m bench.resources " + " ".join(sys.argv[1:])}
    print(common.machine_line(meta["machine"]), flush=True)
    rounds = []
    async with common.running_fleet(args.agents, "mesh", seed=args.seed,
                                    announce_interval=common.DEFAULT_ANNOUNCE,
                                    start_timeout=args.start_timeout) as fleet:
        await common.wait_mesh_formed(fleet, "mesh", 60)
        for r in range(1, args.rounds + 1):
            kind = "bundles" if r % 2 == 0 else "plain"
            certificates = {f"site{i}": bundle(f"site{i}.example.com")[0].decode()
                            for i in range(LISTENERS)} if kind == "bundles" else None
            pulls0, bytes0 = await fleet_counters(fleet)
            cpu0 = common.fleet_cpu(fleet)
            t0 = time.time()
            result = await fleet[0].call("publish", config=config(r, kind == "bundles"),
                                         certificates=certificates, http_timeout=args.deadline)
            applied = await common.wait_applied(fleet.agents, result["revision"], args.deadline)
            cpu = common.fleet_cpu(fleet) - cpu0
            pulls, pulled = await fleet_counters(fleet)
            ok = len(applied) == args.agents
            ms = (max(applied.values()) - t0) * 1000 if ok else None
            if kind == "bundles" and ok:
                held = [len(a.emulator.certificates) for a in fleet]
                assert held == [LISTENERS] * args.agents, held
            rounds.append({"round": r, "kind": kind, "all_applied_ms": ms, "cpu_s": cpu,
                           "pulls": pulls - pulls0, "pulled_bytes": pulled - bytes0,
                           "document_bytes": result["size"], "applied": len(applied),
                           "load": os.getloadavg()[0]})
            print(f"  round {r} ({kind}): " + (f"all {args.agents} applied in {ms:.0f} ms"
                                                if ok else f"MISS {len(applied)}/{args.agents}")
                  + f", {pulls - pulls0:.0f} pulls, {(pulled - bytes0) / 1e3:.1f} kB pulled, "
                  f"{cpu:.1f} CPU s, load {os.getloadavg()[0]:.1f}", flush=True)
            await trio.sleep(2)

    def med(kind: str, key: str) -> float | None:
        values = [x[key] for x in rounds if x["kind"] == kind and x[key] is not None]
        return statistics.median(values) if values else None

    rows = [[str(x["round"]), x["kind"], common.fmt_ms(x["all_applied_ms"]),
             f"{x['applied']}/{args.agents}", f"{x['pulls']:.0f}",
             f"{x['pulled_bytes'] / 1e3:.1f}", f"{x['cpu_s']:.1f}", f"{x['load']:.1f}"]
            for x in rounds]
    plain_ms, bundle_ms = med("plain", "all_applied_ms"), med("bundles", "all_applied_ms")
    ratio = f"{bundle_ms / plain_ms:.2f}x" if plain_ms and bundle_ms else "-"
    cpu_ratio = (f"{med('bundles', 'cpu_s') / med('plain', 'cpu_s'):.2f}x"
                 if med("plain", "cpu_s") and med("bundles", "cpu_s") else "-")
    markdown = "\n".join([
        f"# A config + {LISTENERS} certificate bundles to {args.agents} agents", "",
        f"Machine: {common.machine_line(meta['machine'])}.", "",
        f"Command: `{meta['command']}`. Mesh topology (mDNS off). Rounds alternate a new config "
        f"without TLS (`plain`) and a new config with {LISTENERS} TLS listeners and "
        f"{LISTENERS} new bundles (`bundles`: EC P-256 leaf + CA + key, about 1.7 kB each), "
        "published from agent 0; time from the publish request to the last agent's "
        "`head.applied_at`; pulls and bytes pulled by the whole fleet.", "",
        md_table(["round", "kind", "all applied ms", "applied", "pull requests",
                  "kB pulled", "CPU s (agents + Units)", "load (1 min)"], rows), "",
        f"Median all applied: plain **{common.fmt_ms(plain_ms)} ms**, with {LISTENERS} new "
        f"bundles **{common.fmt_ms(bundle_ms)} ms** ({ratio}); CPU {cpu_ratio}.", ""])
    common.write_result(args.out, markdown, {"meta": meta, "rounds": rounds})
    print()
    print(markdown)
    return 0 if all(x["all_applied_ms"] is not None for x in rounds) else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.resources", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=10)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--deadline", type=float, default=120.0)
    p.add_argument("--start-timeout", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default="resources", help="results name under bench/results/")
    args = p.parse_args(argv)
    if args.agents < 2 or args.rounds < 2:
        p.error("--agents and --rounds must be at least 2")
    return args


if __name__ == "__main__":
    sys.exit(common.run_main(main, parse()))
