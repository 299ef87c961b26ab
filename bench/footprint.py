"""What one agent costs a host: RSS, idle CPU, start-to-ready time, and what it imports.

    python -m bench.footprint --agents 5

1. One agent alone under ``-X importtime`` (``PYTHONPROFILEIMPORTTIME=1``), started, ready,
   stopped: the import costs, grouped by package and by which unit_p2p module pulls them in.
2. ``--agents`` agents (mesh: each bootstraps from 2-3 earlier ones), started one at a time:
   spawn -> ``GET /v1/healthz`` answering. Once all are up and connected, ``--settle`` seconds,
   then idle CPU over ``--idle`` seconds (utime + stime from /proc/PID/stat) and RSS (VmRSS).
   Then one publish, and RSS again; then ``--publishes`` more (each a new config, from the
   agents in turn, each applied by all before the next), and RSS again: it must not grow.

Writes bench/results/footprint.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import trio

from bench import common
from bench.common import md_table
from unit_p2p.fleet import BASE_CONFIG, AgentProc, spawn
from unit_p2p.lean_libp2p import ABSENT, DEFERRED, SUBSTITUTED, is_absent

TARGETS = {"rss_mib": 56, "ready_s": 0.5, "idle_cpu_pct": 0.15}


@dataclass
class ImportLine:
    name: str
    self_us: int
    cumulative_us: int
    level: int
    parent: str | None = None


def parse_importtime(text: str) -> list[ImportLine]:
    """``import time: self | cumulative | name`` lines; nesting is the name's indentation.

    Python prints an import after its children, so read backwards: a line's parent is the last
    line seen (backwards) one level up.
    """
    lines = []
    for raw in text.splitlines():
        if not raw.startswith("import time:") or "|" not in raw:
            continue
        fields = raw[len("import time:"):].split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue
        name = fields[2].rstrip()
        level = (len(name) - len(name.lstrip(" ")) - 1) // 2
        lines.append(ImportLine(name.strip(), int(fields[0]), int(fields[1]), level))
    stack: dict[int, str] = {}
    for line in reversed(lines):
        line.parent = stack.get(line.level - 1)
        stack[line.level] = line.name
    return lines


def import_report(lines: list[ImportLine], top: int = 12) -> dict[str, Any]:
    by_package: dict[str, int] = defaultdict(int)
    by_sub: dict[str, int] = defaultdict(int)
    for ln in lines:
        parts = ln.name.split(".")
        by_package[parts[0]] += ln.self_us
        by_sub[".".join(parts[:3])] += ln.self_us
    heavy = sorted(by_package.items(), key=lambda kv: -kv[1])[:top]
    heavy_names = {name for name, _ in heavy[:4]}
    subs = sorted(((k, v) for k, v in by_sub.items() if k.split(".")[0] in heavy_names
                   and "." in k), key=lambda kv: -kv[1])[:top]
    # Where the agent's own modules step into third-party code, and what each step costs.
    entry = sorted(((ln.parent, ln.name, ln.cumulative_us) for ln in lines
                    if ln.parent and ln.parent.startswith("unit_p2p")
                    and not ln.name.startswith("unit_p2p")), key=lambda t: -t[2])[:top]
    parent = {ln.name: ln.parent for ln in lines}
    chains = {}
    for name, _ in heavy:
        first = next((ln for ln in lines if ln.name.split(".")[0] == name), None)
        if first is None or name in ("unit_p2p", "encodings"):
            continue
        chain, cur = [first.name], first.parent
        while cur:
            chain.append(cur)
            cur = parent.get(cur)
        chains[name] = " < ".join(chain)
    return {"total_ms": sum(ln.self_us for ln in lines) / 1000, "modules": len(lines),
            "chains": chains,
            "by_package_ms": [(k, v / 1000) for k, v in heavy],
            "by_subpackage_ms": [(k, v / 1000) for k, v in subs],
            "entry_points_ms": [(p, n, c / 1000) for p, n, c in entry],
            "quic_grpc_etc": sorted({u for ln in lines
                                     if (u := _unused(ln.name)) and not is_absent(ln.name)}),
            "placeholders": sorted({ln.name for ln in lines if is_absent(ln.name)})}



UNUSED = ("quic", "grpc", "websocket", "relay", "mplex", "secio", "insecure", "floodsub",
          "webrtc", "webtransport", "tls", "autonat", "bitswap")


def _unused(name: str) -> str | None:
    """The package part of ``name`` that names a transport/protocol the agent does not run."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if any(w in part for w in UNUSED):
            return ".".join(parts[:i + 1])
    return None


async def import_costs(start_timeout: float) -> tuple[dict[str, Any], float]:
    """One agent alone, its imports profiled; returns the report and its start-to-ready time."""
    async with common.running_fleet(1, "mesh", seed=0, announce_interval=common.DEFAULT_ANNOUNCE,
                                    start_timeout=start_timeout, start_agents=False) as fleet:
        a: AgentProc = fleet[0]
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPROFILEIMPORTTIME="1")
        spawned = time.monotonic()
        a.proc = spawn(a.command(), a.dir / "agent.log", env)
        with trio.fail_after(start_timeout):
            await a.wait_ready()
        ready = time.monotonic() - spawned
        cpu = common.cpu_seconds(a.proc.pid) or 0.0
        text = (a.dir / "agent.log").read_text(errors="replace")
    report = import_report(parse_importtime(text))
    report["ready_cpu_s"] = cpu
    return report, ready


async def idle_cpu(pids: dict[int, int], seconds: float) -> dict[int, float]:
    """% of a core each process used over the next ``seconds`` (utime + stime)."""
    cpu0 = {i: common.cpu_seconds(p) for i, p in pids.items()}
    t0 = time.monotonic()
    await trio.sleep(seconds)
    elapsed = time.monotonic() - t0
    cpu1 = {i: common.cpu_seconds(p) for i, p in pids.items()}
    return {i: 100 * (cpu1[i] - cpu0[i]) / elapsed for i in pids
            if cpu0[i] is not None and cpu1[i] is not None}


async def main(args: argparse.Namespace) -> int:
    meta = {"machine": common.machine(), "agents": args.agents, "idle_s": args.idle,
            "settle_s": args.settle, "command": "python -m bench.footprint "
            + " ".join(sys.argv[1:])}
    print(common.machine_line(meta["machine"]), flush=True)
    print("one agent with -X importtime ...", flush=True)
    imports, ready_profiled = await import_costs(args.start_timeout)
    print(f"  {imports['modules']} modules imported in {imports['total_ms']:.0f} ms", flush=True)

    ready_s: dict[int, float] = {}
    ready_cpu: dict[int, float] = {}
    print(f"{args.agents} agents, started one at a time ...", flush=True)
    async with common.running_fleet(args.agents, "mesh", seed=args.seed,
                                    announce_interval=common.DEFAULT_ANNOUNCE,
                                    start_timeout=args.start_timeout,
                                    ready_s=ready_s, ready_cpu_s=ready_cpu) as fleet:
        formed = await common.wait_mesh_formed(fleet, "mesh", 60)
        print(f"  all ready, connected after {formed:.1f} s; settling {args.settle:g} s, "
              f"then idle CPU over {args.idle:g} s", flush=True)
        await trio.sleep(args.settle)
        pids = {a.index: a.proc.pid for a in fleet}
        idle_pct = await idle_cpu(pids, args.idle)
        rss_idle = {i: common.rss_mib(p) for i, p in pids.items()}
        async def publish(k: int) -> list:
            cfg = dict(BASE_CONFIG, routes=[{"match": {"uri": f"/footprint/{k}"},
                                             "action": {"return": 200}}])
            result = await fleet[k % len(fleet)].call("publish", config=cfg, http_timeout=30)
            return await common.wait_applied(fleet.agents, result["revision"], 60)

        applied = await publish(0)
        rss_pub = {i: common.rss_mib(p) for i, p in pids.items()}
        print(f"  {args.publishes} more publishes ...", flush=True)
        fully_applied = 0
        for k in range(1, args.publishes + 1):
            fully_applied += len(await publish(k)) == len(fleet)
        rss_many = {i: common.rss_mib(p) for i, p in pids.items()}
        idle_head_pct: dict[int, float] = {}
        if args.idle_with_head:
            # Idle again, now with a head: the anti-entropy rounds exchange heads with a peer
            # (without one they skip), and gossip's message cache has drained after 5 s.
            await trio.sleep(10)
            idle_head_pct = await idle_cpu(pids, args.idle)
        meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]

    with_head = bool(idle_head_pct)
    rows = [[f"a{i}", f"{ready_s[i]:.2f}", f"{ready_cpu[i]:.2f}", f"{rss_idle[i]:.1f}",
             f"{idle_pct.get(i, 0):.2f}", f"{rss_pub[i]:.1f}", f"{rss_many[i]:.1f}"]
            + ([f"{idle_head_pct.get(i, 0):.2f}"] if with_head else [])
            for i in sorted(pids)]
    med = {"ready_s": statistics.median(ready_s.values()),
           "ready_cpu_s": statistics.median(ready_cpu.values()),
           "rss_mib": statistics.median(rss_idle.values()),
           "idle_cpu_pct": statistics.median(idle_pct.values()),
           "rss_after_publish_mib": statistics.median(rss_pub.values()),
           "rss_after_publishes_mib": statistics.median(rss_many.values())}
    if with_head:
        med["idle_with_head_cpu_pct"] = statistics.median(idle_head_pct.values())
    rows.append(["**median**", f"{med['ready_s']:.2f}", f"{med['ready_cpu_s']:.2f}",
                 f"{med['rss_mib']:.1f}",
                 f"{med['idle_cpu_pct']:.2f}", f"{med['rss_after_publish_mib']:.1f}",
                 f"{med['rss_after_publishes_mib']:.1f}"]
                + ([f"{med['idle_with_head_cpu_pct']:.2f}"] if with_head else []))
    rows.append(["target", f"<= {TARGETS['ready_s']:g}", "", f"<= {TARGETS['rss_mib']}",
                 f"<= {TARGETS['idle_cpu_pct']:g}", "", "no growth"]
                + ([""] if with_head else []))
    table = md_table(["agent", "start -> ready s", "CPU s used until ready", "RSS idle MiB",
                      "idle CPU % of a core",
                      "RSS after a publish MiB",
                      f"RSS after {args.publishes} more MiB"]
                     + (["idle CPU % with a head"] if with_head else []), rows)
    pkg = md_table(["package", "self import time ms"],
                   [[k, f"{v:.0f}"] for k, v in imports["by_package_ms"]])
    sub = md_table(["subpackage", "self ms"],
                   [[k, f"{v:.0f}"] for k, v in imports["by_subpackage_ms"]])
    entry = md_table(["unit_p2p module", "imports", "cumulative ms"],
                     [[p, n, f"{c:.0f}"] for p, n, c in imports["entry_points_ms"]])
    markdown = "\n".join([
        "# Footprint: one agent's RSS, idle CPU, start-up and imports", "",
        f"Machine: {common.machine_line(meta['machine'])}.", "",
        f"Command: `{meta['command']}`. {args.agents} agents (mesh, each bootstraps from 2-3 "
        f"earlier ones, DHT on, mDNS off, log level info), each with its emulated Unit in the "
        f"benchmark process; started one at a time; idle CPU measured over {args.idle:g} s "
        f"after {args.settle:g} s settling; the first publish applied by "
        f"{len(applied)}/{args.agents}, the {args.publishes} more by all in "
        f"{fully_applied}/{args.publishes}. Load average at the end: "
        f"{' / '.join(str(x) for x in meta['loadavg_end'])}.",
        "", table, "",
        f"## Imports (one agent alone, `PYTHONPROFILEIMPORTTIME=1`, start -> ready "
        f"{ready_profiled:.2f} s, {imports['ready_cpu_s']:.2f} CPU s, with the profiling on)", "",
        f"{imports['modules']} modules, {imports['total_ms']:.0f} ms of import time in total "
        f"(wall clock on this machine at this load).", "", pkg, "",
        "Heaviest subpackages of the heaviest packages:", "", sub, "",
        "Where the agent's modules step into third-party code (cumulative, including "
        "everything below):", "", entry, "",
        "Why each heavy package is imported (first import, then who imported it, up to the "
        "entry point):", "", *[f"- `{k}`: {v}" for k, v in imports["chains"].items()], "",
        "Modules imported that a TCP + Noise + yamux agent never runs: "
        + (", ".join(f"`{m}`" for m in imports["quic_grpc_etc"]) or "none") + ".", "",
        f"Served as placeholders, not loaded (`unit_p2p/lean_libp2p.py`): "
        f"{len(imports['placeholders'])} module names under "
        + ", ".join(f"`{a}`" for a in ABSENT) + ".", "",
        "Loaded on first use, not at start (imported as stand-ins): "
        + ", ".join(f"`{a}`" for a in DEFERRED) + ". Served by `unit_p2p/lean_noise.py` "
        "(PyNaCl + hashlib instead of cryptography): "
        + ", ".join(f"`{a}`" for a in SUBSTITUTED) + ".", ""])
    data = {"meta": meta, "ready_s": ready_s, "ready_cpu_s": ready_cpu,
            "rss_idle_mib": rss_idle, "idle_cpu_pct": idle_pct,
            "rss_after_publish_mib": rss_pub, "idle_with_head_cpu_pct": idle_head_pct,
            "rss_after_publishes_mib": rss_many,
            "publishes_applied_by_all": fully_applied, "median": med, "imports": imports,
            "ready_profiled_s": ready_profiled}
    common.write_result("footprint", markdown, data)
    print()
    print(markdown)
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=5)
    p.add_argument("--idle", type=float, default=60.0, help="seconds of idle CPU measurement")
    # The DHT rendezvous backs off 0.5 s -> 60 s while it finds nothing new; 70 s puts the
    # measurement in the steady state a long-running agent lives in.
    p.add_argument("--settle", type=float, default=70.0,
                   help="seconds after the mesh formed before measuring")
    p.add_argument("--start-timeout", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--publishes", type=int, default=100,
                   help="publishes after the first, before RSS is read again (no growth)")
    p.add_argument("--idle-with-head", action="store_true",
                   help="after the publishes, measure idle CPU again over --idle s (the fleet "
                   "then has a head, which the anti-entropy rounds exchange)")
    args = p.parse_args(argv)
    if args.agents < 2:
        p.error("--agents must be at least 2")
    return args


if __name__ == "__main__":
    sys.exit(common.run_main(main, parse()))
