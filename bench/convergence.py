"""Publish -> every agent applied, against N, in mesh and star topologies; Serf side by side.

    python -m bench.convergence --n 10 30 50 --publishes 20

For each N and topology: N agent processes (emulated Units in this process, or with
``--unit-processes`` each in its own, as each host runs its own Unit), mesh formed, one
warm-up publish (not counted), then ``--publishes`` publishes from random agents, 1-2 s apart,
each a different config. A publish's latency is from just before ``POST /v1/publish`` (which
PUTs the config into the publisher's Unit first) to the latest ``head.applied_at`` among all N
agents (stamped by each agent after its pull, PUT and read-back). A publish not applied by all N
within ``--deadline`` is a miss. The benchmark waits as an operator does, on the publish itself
(``wait``: it answers when every peer has reported), and then reads each agent's status once;
``--poll`` polls every agent's status every 0.3 s instead, which loads the fleet it measures (Serf's
deliveries are read from files, at no cost to its agents). Then N Serf agents with the same join
topology, and the same count of ``serf event -coalesce=false`` from random nodes, timed to the last
handler run.

Writes bench/results/convergence.{md,json,png} after every run, so an interrupted benchmark
keeps what it measured.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import trio

from bench import common
from bench.common import fmt_mib, fmt_ms, md_table, summary
from bench.serf import ensure_serf, running_serf, serf_version
from unit_p2p.fleet import BASE_CONFIG, Fleet

LOGS_KEPT = Path("/tmp/unit-p2p-bench-logs")


def publish_config(tag: str, i: int) -> dict:
    cfg = {k: v for k, v in BASE_CONFIG.items()}
    cfg["routes"] = [{"match": {"uri": f"/bench/{tag}/{i}"}, "action": {"return": 200}},
                     *BASE_CONFIG["routes"]]
    return cfg


def ours_label(args: argparse.Namespace) -> str:
    label = f"unit-p2p (liveness {args.liveness})" if args.liveness else "unit-p2p"
    return label + (" polled" if args.poll else "")


def keep_logs(fleet: Fleet, indices: list[int], label: str) -> Path:
    """Copy the logs of agents that missed a publish out of the temporary dir, for a look."""
    dest = LOGS_KEPT / label
    dest.mkdir(parents=True, exist_ok=True)
    for i in indices:
        src = fleet[i].dir / "agent.log"
        if src.exists():
            shutil.copy(src, dest / f"agent{i}.log")
    return dest


async def describe_pending(fleet: Fleet, pending: list[int]) -> str:
    limiter = trio.CapacityLimiter(8)
    st = await common.statuses([fleet[i] for i in pending], limiter)
    parts = []
    for i in pending[:6]:
        s = st.get(i) or {}
        head = (s.get("head") or {}).get("revision", "none")
        err = (s.get("last_error") or {}).get("reason")
        parts.append(f"a{i}: head={head[:12]} conn={s.get('peers', {}).get('connected')} "
                     f"pending={len(s.get('pending', []))} err={err}")
    return "; ".join(parts)


async def fleet_messages(fleet: Fleet) -> dict[str, float]:
    """``unit_p2p_messages_total`` summed over the fleet, by "protocol/kind/direction"."""
    totals: dict[str, float] = {}
    limiter = trio.CapacityLimiter(8)

    async def scrape(agent) -> None:
        async with limiter:
            text = await agent.call("metrics", http_timeout=20)
        for line in text.splitlines():
            if line.startswith("unit_p2p_messages_total{"):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
                key = f"{labels['protocol']}/{labels['kind']}/{labels['direction']}"
                totals[key] = totals.get(key, 0.0) + float(line.rsplit(" ", 1)[1])

    async with trio.open_nursery() as nursery:
        for agent in fleet:
            nursery.start_soon(scrape, agent)
    return totals


def per_publish(before: dict[str, float], after: dict[str, float], publishes: int,
                ) -> dict[str, float]:
    keys = sorted(set(before) | set(after))
    out = {k: round((after.get(k, 0.0) - before.get(k, 0.0)) / max(publishes, 1), 1)
           for k in keys}
    return {k: v for k, v in out.items() if v}


async def bench_ours(n: int, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed + n)
    run: dict[str, Any] = {"system": ours_label(args), "n": n, "topology": kind,
                           "loadavg_start": list(common.machine()["loadavg"])}
    started = time.monotonic()
    async with common.running_fleet(n, kind, seed=args.seed + n,
                                    announce_interval=args.announce_interval,
                                    start_timeout=args.start_timeout,
                                    liveness=args.liveness,
                                    unit_processes=args.unit_processes) as fleet:
        run["all_ready_s"] = round(time.monotonic() - started, 1)
        run["mesh_formed_s"] = round(await common.wait_mesh_formed(fleet, kind, 60), 1)
        await trio.sleep(args.settle)
        tag = f"{kind}{n}-{int(time.time())}"
        latencies: list[float] = []
        per_agent: list[float] = []
        reached: list[int] = []
        misses: list[dict] = []
        counted_from: dict[str, float] = {}
        pids = [a.proc.pid for a in fleet if a.proc]
        # the emulated Units' own processes (--unit-processes): the stand-in's cost, apart
        unit_pids = [a.unit_proc.pid for a in fleet if a.unit_proc]
        cpu_from = unit_cpu_from = 0.0
        for i in range(args.publishes + 1):
            if i == 1:
                counted_from = await fleet_messages(fleet)
                cpu_from = common.processes_cpu(pids)
                unit_cpu_from = common.processes_cpu(unit_pids)
            publisher = fleet[0] if i == 0 else fleet[rng.randrange(n)]
            t0 = time.time()
            deadline = args.deadline * (3 if i == 0 else 1)
            result = await publisher.call("publish", config=publish_config(tag, i),
                                          wait=not args.poll, timeout=deadline,
                                          http_timeout=30)
            rev = result["revision"]
            # With the wait, one status sweep finds them all; the poll loop below only runs
            # for agents whose report did not reach the publisher in time.
            applied = await common.wait_applied(
                fleet.agents, rev, max(1.0, deadline - (time.time() - t0)))
            label = "warm-up" if i == 0 else f"{i:2d}/{args.publishes}"
            if i > 0:
                reached.append(len(applied))
                per_agent += [(t - t0) * 1000 for t in applied.values()]
            if len(applied) == n:
                ms = (max(applied.values()) - t0) * 1000
                if i == 0:
                    run["warmup_ms"] = round(ms, 1)
                else:
                    latencies.append(ms)
                print(f"  ours {kind:4} N={n:2} publish {label} from a{publisher.index}: "
                      f"all {n} applied in {ms:.0f} ms", flush=True)
            else:
                pending = [a.index for a in fleet if a.index not in applied]
                where = await describe_pending(fleet, pending)
                logs = keep_logs(fleet, [publisher.index, *pending[:5]], f"{tag}-{i}")
                print(f"  ours {kind:4} N={n:2} publish {label} from a{publisher.index}: MISS "
                      f"{len(applied)}/{n} within {deadline:.0f} s; {where}; logs in {logs}",
                      flush=True)
                if i > 0:
                    misses.append({"publish": i, "applied": len(applied), "pending": pending,
                                   "logs": str(logs)})
            await trio.sleep(rng.uniform(1.0, 2.0))
        # Everything the fleet sent and received from the first counted publish to the end of
        # the last one's pause, per publish: background traffic (pings, gossipsub heartbeats,
        # anti-entropy) over that time is included, as it is in what a publish costs.
        run["cpu_s_per_publish"] = round(
            (common.processes_cpu(pids) - cpu_from) / args.publishes, 3)
        if unit_pids:
            run["unit_cpu_s_per_publish"] = round(
                (common.processes_cpu(unit_pids) - unit_cpu_from) / args.publishes, 3)
        run["messages_per_publish"] = per_publish(counted_from, await fleet_messages(fleet),
                                                  args.publishes)
        sent = {k: v for k, v in run["messages_per_publish"].items() if k.endswith("/sent")}
        print(f"  ours {kind:4} N={n:2} messages sent per publish (whole fleet): "
              + ", ".join(f"{k[:-5]} {v:g}" for k, v in sent.items()), flush=True)
        if args.keep_logs:
            run["logs"] = str(keep_logs(fleet, list(range(n)), tag))
        run.update(latency_ms=summary(latencies), per_agent_ms=summary(per_agent),
                   samples_ms=[round(x, 1) for x in latencies], misses=len(misses),
                   miss_detail=misses, reached=reached,
                   rss_mib=[round(r, 1) for r in common.fleet_rss(fleet)])
    run["loadavg_end"] = list(common.machine()["loadavg"])
    return run


async def bench_serf(serf: str, n: int, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed + 1000 + n)
    run: dict[str, Any] = {"system": "serf", "n": n, "topology": kind,
                           "loadavg_start": list(common.machine()["loadavg"])}
    async with running_serf(serf, n, kind, seed=args.seed + n) as cluster:
        run["mesh_formed_s"] = round(cluster.formed_s, 1)
        await trio.sleep(args.settle)
        latencies: list[float] = []
        per_agent: list[float] = []
        reached: list[int] = []
        misses = 0
        pids = [n_.proc.pid for n_ in cluster.nodes if n_.proc]
        cpu_from = 0.0
        for i in range(args.publishes + 1):
            if i == 1:
                cpu_from = common.processes_cpu(pids)
            node = cluster.nodes[0] if i == 0 else cluster.nodes[rng.randrange(n)]
            payload = f"{kind}{n}-{i}-{int(time.time())}"
            t0 = time.time()
            await trio.to_thread.run_sync(cluster.send_event, node, payload)
            got = await cluster.wait_delivered(payload, args.deadline)
            label = "warm-up" if i == 0 else f"{i:2d}/{args.publishes}"
            if i > 0:
                reached.append(len(got))
                per_agent += [(t - t0) * 1000 for t in got.values()]
            if len(got) == n:
                ms = (max(got.values()) - t0) * 1000
                if i > 0:
                    latencies.append(ms)
                print(f"  serf {kind:4} N={n:2} event   {label} from s{node.index}: "
                      f"all {n} handlers ran in {ms:.0f} ms", flush=True)
            else:
                misses += i > 0
                print(f"  serf {kind:4} N={n:2} event   {label} from s{node.index}: MISS "
                      f"{len(got)}/{n} within {args.deadline:.0f} s", flush=True)
            await trio.sleep(rng.uniform(1.0, 2.0))
        run["cpu_s_per_publish"] = round(
            (common.processes_cpu(pids) - cpu_from) / args.publishes, 3)
        run.update(latency_ms=summary(latencies), per_agent_ms=summary(per_agent),
                   samples_ms=[round(x, 1) for x in latencies], misses=misses, reached=reached,
                   rss_mib=[round(r, 1) for n_ in cluster.nodes
                            if n_.proc and (r := common.rss_mib(n_.proc.pid)) is not None])
    run["loadavg_end"] = list(common.machine()["loadavg"])
    return run


# --- report ---------------------------------------------------------------------------------------

def _find(runs: list[dict], system: str, n: int, kind: str) -> dict | None:
    return next((r for r in runs if r["system"] == system and r["n"] == n
                 and r["topology"] == kind), None)


def _misses(run: dict | None, meta: dict) -> str:
    if not run:
        return "-"
    return "error" if run["misses"] is None else f"{run['misses']}/{meta['publishes']}"


def _reached(run: dict | None) -> str:
    """How many agents a publish reached within the deadline, median over the publishes."""
    if not run or not run["reached"]:
        return "-"
    return f"{sorted(run['reached'])[len(run['reached']) // 2]}/{run['n']}"


def _cpu(run: dict | None, n: int) -> str:
    # CPU of every process of the fleet from the first counted publish to the end of the last
    # one's pause, per publish: background work over that time (pings, heartbeats,
    # anti-entropy, the Unit watch) is in it, as it is in what a publish costs a host.
    if not run or run.get("cpu_s_per_publish") is None:
        return "-"
    s = run["cpu_s_per_publish"]
    return f"{s:.2f} ({s / n * 1000:.0f})"


def _lat(run: dict | None) -> str:
    if not run:
        return "-"
    lat = run["latency_ms"]
    return f"{fmt_ms(lat['p50'])} / {fmt_ms(lat['p99'])} / {fmt_ms(lat['max'])}"


def report(runs: list[dict], meta: dict) -> str:
    rows = []
    for n in meta["n"]:
        for kind in meta["topologies"]:
            ours, serf = _find(runs, meta["ours"], n, kind), _find(runs, "serf", n, kind)
            if not ours and not serf:
                continue
            ratio = "-"
            if ours and serf and ours["latency_ms"]["p99"] and serf["latency_ms"]["p99"]:
                ratio = f"{ours['latency_ms']['p99'] / serf['latency_ms']['p99']:.2f}"
            load = ours or serf
            rows.append([
                str(n), kind, _lat(ours), _misses(ours, meta), _reached(ours),
                _lat(serf), _misses(serf, meta), _reached(serf), ratio,
                _cpu(ours, n), _cpu(serf, n),
                fmt_mib(ours["rss_mib"]) if ours else "-",
                fmt_mib(serf["rss_mib"]) if serf else "-",
                f"{load['loadavg_start'][0]:.1f}"])
    table = md_table(["N", "topology", f"{meta['ours']} p50 / p99 / max ms", "misses",
                      "agents reached (median)", "Serf p50 / p99 / max ms", "Serf misses",
                      "Serf reached (median)", "p99 ratio (ours/Serf)",
                      "fleet CPU s / publish (ms per host)", "Serf CPU s / publish",
                      "unit-p2p RSS MiB median (min-max)", "Serf RSS MiB", "load avg (1 min)"],
                     rows)
    detail = []
    for r in runs:
        if r.get("error"):
            detail.append(f"- {r['system']} {r['topology']} N={r['n']}: FAILED: {r['error']}")
            continue
        extra = (f"agents ready {r['all_ready_s']} s, " if "all_ready_s" in r else "")
        warm = f", warm-up publish {r['warmup_ms']:.0f} ms" if r.get("warmup_ms") else ""
        pa = r["per_agent_ms"]
        if r.get("unit_cpu_s_per_publish") is not None:
            s = r["unit_cpu_s_per_publish"]
            warm += (f", the emulated Units' processes {s:.2f} CPU s per publish "
                     f"({s / r['n'] * 1000:.0f} ms per host, not in the fleet CPU column)")
        detail.append(f"- {r['system']} {r['topology']} N={r['n']}: {extra}mesh formed "
                      f"{r['mesh_formed_s']} s{warm}; per-agent delivery p50 "
                      f"{fmt_ms(pa['p50'])} ms, p95 {fmt_ms(pa['p95'])} ms; load average "
                      f"{r['loadavg_start'][0]:.1f} -> {r['loadavg_end'][0]:.1f}")
    for r in runs:
        mpp = r.get("messages_per_publish")
        if mpp:
            sent = ", ".join(f"{k[:-5]} {v:g}" for k, v in mpp.items() if k.endswith("/sent"))
            detail.append(f"- {r['system']} {r['topology']} N={r['n']}: messages sent per "
                          f"publish, whole fleet (protocol/kind): {sent}")
    return "\n".join([
        "# Convergence: publish -> every agent applied (unit-p2p) vs user event -> every "
        "handler ran (Serf)", "",
        f"Machine: {common.machine_line(meta['machine'])}.", "",
        f"Command: `{meta['command']}`. {meta['publishes']} publishes per run from random "
        f"agents, 1-2 s apart, after {meta.get('settle_s', 0):g} s idle once the mesh formed "
        f"and one warm-up publish; miss = not applied by all N within "
        f"{meta['deadline']:.0f} s. unit-p2p: agent defaults (announce interval "
        f"{meta['announce_interval']:g} s, log level info), mDNS off; mesh = each agent "
        f"bootstraps from 2-3 random earlier agents, DHT on; star = every agent bootstraps "
        f"only agent 0, `--no-mdns --no-dht`. unit-p2p latency includes the publisher's "
        f"local PUT, every agent's pull (a config over 16 KiB), PUT and read-back. Emulated "
        f"Units: {meta.get('units', 'all in the benchmark process')}. "
        f"Serf: {meta['serf_version']}, "
        f"same join topology, `serf event -coalesce=false`, latency to the last handler run. "
        f"p99 of 20 samples is their maximum but one (nearest rank).", "",
        table, "", "Runs:", "", *detail, "",
        f"![latency against N]({meta['out']}.png)", ""])


def plot(runs: list[dict], meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = meta["topologies"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.2), squeeze=False,
                             sharey=True)
    styles = {meta["ours"]: ("tab:blue", "o"), "serf": ("tab:orange", "s")}
    for ax, kind in zip(axes[0], kinds, strict=True):
        for system, (color, marker) in styles.items():
            sel = sorted((r for r in runs if r["system"] == system and r["topology"] == kind
                          and r["latency_ms"]["p50"] is not None), key=lambda r: r["n"])
            ns = [r["n"] for r in sel]
            ax.plot(ns, [r["latency_ms"]["p50"] for r in sel], color=color, marker=marker,
                    label=f"{system} p50")
            ax.plot(ns, [r["latency_ms"]["p99"] for r in sel], color=color, marker=marker,
                    linestyle="--", label=f"{system} p99")
            lost = [r for r in runs if r["system"] == system and r["topology"] == kind
                    and r["latency_ms"]["p50"] is None]
            for r in lost:
                ax.plot([r["n"]], [meta["deadline"] * 1000], color=color, marker="x",
                        linestyle="none", markersize=10)
                ax.annotate("all missed" if r["misses"] else "failed",
                            (r["n"], meta["deadline"] * 1000), textcoords="offset points",
                            xytext=(4, -12), fontsize=8, color=color)
            for r in sel:
                if r["misses"]:
                    ax.annotate(f"{r['misses']} miss", (r["n"], r["latency_ms"]["p99"]),
                                textcoords="offset points", xytext=(4, 4), fontsize=8,
                                color=color)
        ax.set_title(f"{kind} topology")
        ax.set_xlabel("agents (N)")
        ax.set_xticks(meta["n"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("publish -> all N (ms, log scale)")
    axes[0][0].set_yscale("log")
    la = meta["machine"]["loadavg"]
    fig.suptitle(f"unit-p2p publish -> all applied vs Serf user event -> all handlers "
                 f"({meta['machine']['nproc']} cores, load {la[0]:.0f})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save(runs: list[dict], meta: dict) -> None:
    markdown = report(runs, meta)
    common.write_result(meta["out"], markdown, {"meta": meta, "runs": runs})
    plot(runs, meta, common.RESULTS / f"{meta['out']}.png")


async def recorded(system: str, n: int, kind: str, run) -> dict[str, Any]:
    """One run's result; a run that broke (a process died, start-up timed out) is recorded
    with its error, and the benchmark goes on with the next."""
    load = list(common.machine()["loadavg"])
    try:
        return await run
    except (RuntimeError, AssertionError, OSError, trio.TooSlowError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        print(f"  {system} {kind} N={n} failed: {error[:2000]}", flush=True)
        return {"system": system, "n": n, "topology": kind, "error": error[:300],
                "latency_ms": summary([]), "per_agent_ms": summary([]), "misses": None,
                "reached": [], "rss_mib": [], "mesh_formed_s": None, "loadavg_start": load,
                "loadavg_end": list(common.machine()["loadavg"])}


def replot(name: str) -> int:
    """Rewrite the table and plot from a run's saved JSON (no benchmark)."""
    import json

    data = json.loads((common.RESULTS / f"{name}.json").read_text())
    save(data["runs"], data["meta"])
    print(report(data["runs"], data["meta"]))
    return 0


async def main(args: argparse.Namespace) -> int:
    serf = None if args.no_serf else await trio.to_thread.run_sync(ensure_serf)
    meta = {"machine": common.machine(), "n": args.n, "topologies": args.topology,
            "publishes": args.publishes, "deadline": args.deadline,
            "announce_interval": args.announce_interval, "settle_s": args.settle,
            "serf_version": serf_version(serf) if serf else "not run",
            "command": "python -m bench.convergence " + " ".join(sys.argv[1:]),
            "out": args.out,
            "units": ("one process each" if args.unit_processes
                      else "all in the benchmark process"),
            "ours": ours_label(args)}
    print(common.machine_line(meta["machine"]), flush=True)
    runs: list[dict] = []
    with trio.fail_after(args.max_minutes * 60):
        for n in args.n:
            for kind in args.topology:
                if not args.no_ours:
                    print(f"{meta['ours']}: {n} agents, {kind}", flush=True)
                    runs.append(await recorded(meta["ours"], n, kind, bench_ours(n, kind, args)))
                    save(runs, meta)
                if serf:
                    print(f"serf: {n} agents, {kind}", flush=True)
                    runs.append(await recorded("serf", n, kind, bench_serf(serf, n, kind, args)))
                    save(runs, meta)
    print()
    print(report(runs, meta))
    print(f"\nwritten: {common.RESULTS / meta['out']}.{{md,png,json}}")
    return 0 if all(r["misses"] == 0 for r in runs if r["system"] != "serf") else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.convergence", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[10, 30, 50], help="agent counts")
    p.add_argument("--topology", nargs="+", choices=["mesh", "star"], default=["mesh", "star"])
    p.add_argument("--publishes", type=int, default=20)
    p.add_argument("--deadline", type=float, default=15.0,
                   help="seconds for a publish to reach all N before it counts as a miss")
    p.add_argument("--announce-interval", type=float, default=common.DEFAULT_ANNOUNCE,
                   help="agents' anti-entropy interval (default: the agent's default)")
    p.add_argument("--start-timeout", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--no-serf", action="store_true", help="only unit-p2p")
    p.add_argument("--no-ours", action="store_true", help="only Serf")
    p.add_argument("--liveness", metavar="INTERVAL,TIMEOUT,MISSES",
                   help="what-if: run the agents with these liveness settings instead of the "
                   "default 2,2,3 (bench/agent_variant.py); results go to --out")
    p.add_argument("--unit-processes", action="store_true",
                   help="run each emulated Unit as a process of its own, as each host has its "
                   "own Unit (default: all in the benchmark's process)")
    p.add_argument("--settle", type=float, default=0.0,
                   help="seconds both systems idle after their mesh formed, before the warm-up "
                   "publish (the start's discovery rounds, handshakes and mesh upkeep over)")
    p.add_argument("--poll", action="store_true",
                   help="poll every agent's status during a publish instead of waiting on the "
                   "publish (what-if: the cost of watching)")
    p.add_argument("--out", default="convergence", help="results name under bench/results/")
    p.add_argument("--replot", action="store_true",
                   help="only rewrite bench/results/<out>.md and .png from <out>.json")
    p.add_argument("--keep-logs", action="store_true",
                   help=f"copy every agent's log to {LOGS_KEPT}/ (missed publishes always are)")
    p.add_argument("--max-minutes", type=float, default=150.0, help="whole run's bound")
    args = p.parse_args(argv)
    if min(args.n) < 2 or args.publishes < 1:
        p.error("--n must be at least 2 and --publishes at least 1")
    return args


if __name__ == "__main__":
    _args = parse()
    sys.exit(replot(_args.out) if _args.replot else common.run_main(main, _args))
