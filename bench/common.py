"""Shared pieces of the benchmarks: the agent fleet, process stats, statistics, output.

The fleet is the package's launcher (``unit_p2p.fleet``, also behind the demo and the tests):
real ``python -m unit_p2p agent`` processes, each with its own emulated Unit; the emulators all
live in the benchmark's own trio loop (one process, which matters on a 2-core machine at N=50).
Run the benchmarks from the repository root (``python -m bench.<name>``) so ``bench`` is
importable.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import random
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from unit_p2p.fleet import AgentProc, Fleet, stop_processes
from unit_p2p.settings import Settings

__all__ = ["stop_processes"]  # re-exported: the serf benchmark stops its processes the same way

RESULTS = Path(__file__).resolve().parent / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The agent's own defaults, so the benchmark measures what a user runs (the tests tune the
# announce interval down and log at debug).
DEFAULT_ANNOUNCE = {f.name: f.default for f in dataclasses.fields(Settings)}["announce_interval"]


# --- the machine --------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    """What the numbers were measured on; the load average says how shared the machine was."""
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                         platform.processor())
    except OSError:
        model = platform.processor()
    return {"nproc": os.cpu_count(), "cpu": model, "ram_gib": round(mem_kib / 2**20, 1),
            "loadavg": [round(x, 2) for x in os.getloadavg()], "kernel": platform.release(),
            "python": platform.python_version(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}


def machine_line(m: dict[str, Any]) -> str:
    la = m["loadavg"]
    return (f"{m['date_utc']} UTC, {m['nproc']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, "
            f"Python {m['python']}, load average {la[0]} / {la[1]} / {la[2]} (1/5/15 min)")


# --- processes ----------------------------------------------------------------------------------

def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def cancel_on_signals(scope: trio.CancelScope) -> None:
    """SIGTERM/SIGHUP end the run like Ctrl-C does: cancelled, so every ``finally`` cleans up."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            print(f"\n{signal.Signals(signum).name}: stopping", flush=True)
            scope.cancel()
            return


def run_main(main, *args) -> int:
    """Run ``main(*args)`` under trio; Ctrl-C and SIGTERM exit 130 after cleanup."""
    async def wrapper():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_on_signals, nursery.cancel_scope)
            result = await main(*args)
            nursery.cancel_scope.cancel()
            return result

    try:
        result = trio.run(wrapper)
    except KeyboardInterrupt:
        print("interrupted; processes stopped", flush=True)
        return 130
    return 130 if result is None else result


# --- the agent fleet ----------------------------------------------------------------------------

def use_variant(fleet: Fleet, liveness: str) -> None:
    """Run ``fleet``'s agents through ``bench.agent_variant`` (same CLI) with liveness
    ``interval,timeout,misses`` instead of the default."""
    os.environ["BENCH_LIVENESS"] = liveness  # inherited by the agents the fleet spawns
    for a in fleet:
        a.launcher = (sys.executable, "-m", "bench.agent_variant", "agent")


def agent_args(kind: str, announce_interval: float, mdns: bool) -> list[str]:
    """The flags every agent of a benchmark fleet gets."""
    args = ["--log-level", "info", "--announce-interval", str(announce_interval)]
    args += ["--mdns"] if mdns else ["--no-mdns"]
    if kind == "star":
        args += ["--no-dht"]  # bootstrap-only: agent 0 is all anyone knows
    return args


@asynccontextmanager
async def running_fleet(n: int, kind: str, *, seed: int, announce_interval: float,
                        mdns: bool = False, start_timeout: float = 300.0,
                        config: dict | None = None,
                        ready_s: dict[int, float] | None = None,
                        ready_cpu_s: dict[int, float] | None = None,
                        start_agents: bool = True,
                        liveness: str | None = None,
                        extra_args: tuple[str, ...] = (),
                        unit_processes: bool = False) -> AsyncIterator[Fleet]:
    """N agents up (API answering) in a temporary dir; stopped and removed on exit, always.

    With ``ready_s`` the agents start one at a time, and it gets each one's spawn -> API
    answering time (starting all at once would measure the CPU contention among them), and
    ``ready_cpu_s`` the CPU seconds each used until then (what a quiet machine's wall time
    would be near).
    Without ``start_agents`` only the Units run; agents the caller starts are stopped too.
    ``liveness`` ("interval,timeout,misses") runs a what-if variant (bench/agent_variant.py).
    ``unit_processes``: each emulated Unit in a process of its own (see ``Fleet.start_unit``).
    """
    with tempfile.TemporaryDirectory(prefix=f"unit-p2p-bench-{kind}-") as tmp:
        async with trio.open_nursery() as nursery:
            fleet = Fleet(Path(tmp), nursery, n, mesh=f"bench-{kind}",
                          agent_args=[*agent_args(kind, announce_interval, mdns), *extra_args])
            if liveness:
                use_variant(fleet, liveness)
            fleet.topology(kind, random.Random(seed))
            try:
                with trio.fail_after(start_timeout):
                    for a in fleet:
                        await fleet.start_unit(a, config, process=unit_processes)
                    if not start_agents:
                        pass
                    elif ready_s is None:
                        for a in fleet:
                            a.start()
                        for a in fleet:
                            await a.wait_ready()
                    else:
                        for a in fleet:
                            spawned = time.monotonic()
                            a.start()
                            await a.wait_ready()
                            ready_s[a.index] = time.monotonic() - spawned
                            if ready_cpu_s is not None:
                                ready_cpu_s[a.index] = cpu_seconds(a.proc.pid) or 0.0
                yield fleet
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(stop_processes, fleet.processes())
                nursery.cancel_scope.cancel()


async def statuses(agents: list[AgentProc], limiter: trio.CapacityLimiter,
                   http_timeout: float = 10.0) -> dict[int, dict | None]:
    """Every agent's /v1/status, concurrently (bounded); None where the agent did not answer."""
    out: dict[int, dict | None] = {}

    async def one(a: AgentProc) -> None:
        async with limiter:
            try:
                out[a.index] = await a.call("status", http_timeout=http_timeout)
            except Exception as exc:
                out[a.index] = None
                print(f"  status of agent {a.index} failed: {exc}", flush=True)

    async with trio.open_nursery() as nursery:
        for a in agents:
            nursery.start_soon(one, a)
    return out


async def wait_mesh_formed(fleet: Fleet, kind: str, timeout: float) -> float:
    """Until every agent has a connection (and the star's hub has all of them); seconds taken."""
    started = time.monotonic()
    limiter = trio.CapacityLimiter(8)
    n = len(fleet.agents)
    with trio.move_on_after(timeout):
        while True:
            st = await statuses(fleet.agents, limiter)
            conn = {i: (s or {}).get("peers", {}).get("connected", 0) for i, s in st.items()}
            hub_ok = kind != "star" or conn.get(0, 0) >= n - 1
            if hub_ok and all(c >= 1 for c in conn.values()):
                break
            await trio.sleep(0.5)
    return time.monotonic() - started


async def wait_applied(agents: list[AgentProc], revision: str, deadline_s: float,
                       poll: float = 0.3) -> dict[int, float]:
    """Poll statuses until every agent's head is ``revision`` or ``deadline_s`` passes.

    Returns ``{agent index: head.applied_at}`` for the agents that applied it (wall clock stamped
    by the agent itself, so the poll interval does not add to the measured latency).
    """
    limiter = trio.CapacityLimiter(8)
    applied: dict[int, float] = {}
    with trio.move_on_after(deadline_s):
        while True:
            pending = [a for a in agents if a.index not in applied]
            if not pending:
                break
            for i, st in (await statuses(pending, limiter)).items():
                head = (st or {}).get("head") or {}
                if head.get("revision") == revision and head.get("applied_at"):
                    applied[i] = head["applied_at"]
            if len(applied) < len(agents):
                await trio.sleep(poll)
    return applied


def fleet_cpu(fleet: Fleet) -> float:
    """CPU seconds used so far by all agents plus this process (the emulated Units)."""
    own = os.times()
    return own.user + own.system + processes_cpu([a.proc.pid for a in fleet if a.proc])


def processes_cpu(pids: list[int]) -> float:
    """CPU seconds (utime + stime) used so far by the processes that are still there."""
    return sum(c for pid in pids if (c := cpu_seconds(pid)) is not None)


def fleet_rss(fleet: Fleet) -> list[float]:
    return [r for a in fleet if a.proc and (r := rss_mib(a.proc.pid)) is not None]


# --- statistics and output ----------------------------------------------------------------------

def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (with 20 samples p99 is the maximum)."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def summary(values: list[float]) -> dict[str, float | None]:
    return {"p50": pct(values, 50), "p95": pct(values, 95), "p99": pct(values, 99),
            "max": max(values) if values else None}


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def fmt_mib(values: list[float]) -> str:
    if not values:
        return "-"
    s = sorted(values)
    return f"{s[len(s) // 2]:.0f} ({s[0]:.0f}-{s[-1]:.0f})"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_result(name: str, markdown: str, data: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(markdown)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return RESULTS / f"{name}.md"
