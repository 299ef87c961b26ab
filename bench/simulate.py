"""The fleet simulator: the agent's real sync code on N hosts in one process, in simulated time.

    python -m bench.simulate --n 100 1000 5000 --label before

Each host is the agent's own ``Reconciler`` with its own ``StateStore`` (on a tmpfs), Ed25519
identity, trust policy and metrics; only the mesh and Unit under it are in-memory stand-ins
(``bench/simulate_net.py``: links with latency and loss, gossipsub's mesh delivery and mesh
upkeep, streams, churn and partitions). Time is trio's MockClock with autojump, so a simulated
minute costs only the CPU the code needs.

The hosts' connections (``--topology``): ``random`` (default), each host dials random hosts
until it has ``--peer-target`` connections, like discovery; ``star``, every host connects to host
0 only, like agents that bootstrap from one address without a DHT (the hub's gossip mesh holds
at most Dhi of its leaves, the rest are pruned and hear of gossip only by IHAVE or from the sync
layer; the hub never leaves nor is cut off). Gossip reaches a host's reconciler as
``on_announcement(origin, data, via=forwarder)`` when its ``on_announcement`` takes ``via``, as
``on_announcement(origin, data)`` otherwise, so one simulator runs the sync code of before and
after that parameter; ``SimMesh.gossip_pruned_peers()`` answers like the real mesh's.

For each N, one fleet starts converged on revision 1, then runs its publishes one after another,
each a new config from a random live host:

- ``steady``: ``--publishes`` plain publishes (latency and loss only);
- ``churn``: ``--churn`` of the hosts leave 50 ms after the publish, half of them restart
  (their state kept) 300 ms after it, and as many fresh hosts (no state) join;
- ``partition``: ``--partition`` of the hosts cut off from the rest before the publish, the
  partition heals ``--heal`` s after it.

Per publish: messages and bytes by kind counted at the network layer from the publish until
``--settle`` s after the last live host applied (background anti-entropy in that window
included), their max and mean per host, the simulated time until every live host applied and
until the publisher's wait saw all of them, the hops over which the announcement reached the
last host, and the hosts that missed ``--deadline``. Results are kept per ``--label`` in
``bench/results/simulate.json`` (and ``.csv``, ``.md``, ``.png``), so a run of today's code and
one of a changed protocol end up side by side.
"""

from __future__ import annotations

import argparse
import csv
import gc
import inspect
import json
import logging
import math
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio.testing

from bench.simulate_net import (
    HUB,
    Host,
    Latency,
    SimMesh,
    SimNet,
    SimUnit,
    Topology,
    derive_seed,
    inline_threads,
    state_root,
)
from unit_p2p.identity import peer_id_of
from unit_p2p.mesh import TrustPolicy
from unit_p2p.mesh.bus import GossipParams
from unit_p2p.metrics import Metrics
from unit_p2p.settings import Settings
from unit_p2p.sync.revision import Document, Head, Revision, sign_revision
from unit_p2p.sync.store import StateStore

log = logging.getLogger("bench.simulate")

RESULTS = Path(__file__).resolve().parent / "results"
MESH = "sim"


def make_reconciler(settings: Settings, keypair: Any, peer_id: str, mesh: SimMesh,
                    unit: SimUnit, store: StateStore, trust: TrustPolicy, metrics: Metrics) -> Any:
    """The one place that knows how the agent builds its sync core (``agent.py`` does the same)."""
    from unit_p2p.sync.reconciler import Reconciler

    rec = Reconciler(settings, keypair.private_key, peer_id, mesh, unit, store, trust, metrics)
    mesh.events = rec
    return rec


def config_for(k: int, routes: int) -> dict:
    """The config of publish ``k``; its first route's URI is the marker the Unit stand-in sees."""
    return {
        "listeners": {"*:8080": {"pass": "routes"}},
        "routes": [{"match": {"uri": f"/sim/{k}"}, "action": {"return": 200}}]
        + [{"match": {"uri": f"/app/{i}/*"}, "action": {"pass": f"applications/app{i % 4}"}}
           for i in range(routes)],
        "applications": {f"app{i}": {"type": "python", "path": f"/srv/app{i}", "module": "wsgi"}
                         for i in range(4)},
    }


# --- the fleet ----------------------------------------------------------------------------------


@dataclass
class SimParams:
    n: int
    seed: int = 1
    latency: Latency = field(default_factory=lambda: Latency.parse("lognormal:10:0.5"))
    loss: float = 0.01
    cpu_per_msg: float = 0.0
    topo: Topology = field(default_factory=Topology)
    routes: int = 20
    publishes: int = 2
    churn: float = 0.05
    partition: float = 0.2
    heal: float = 10.0
    warmup: float = 5.0
    settle: float = 3.0
    deadline: float = 60.0
    budget: float | None = None  # wall seconds for the whole size
    scenarios: tuple[str, ...] = ("steady", "churn", "partition")


class BudgetExceeded(Exception):
    pass


class Fleet:
    def __init__(self, p: SimParams, nursery: trio.Nursery, root: Path):
        self.p, self.nursery, self.root = p, nursery, root
        self.rng = random.Random(p.seed)
        # room for fresh joiners: every identity exists (and is trusted) from the start
        spare = max(1, math.ceil(p.n * p.churn)) if "churn" in p.scenarios else 0
        total = p.n + spare
        self.keys = [_keypair(p.seed, i) for i in range(total)]
        self.ids = [peer_id_of(k) for k in self.keys]
        self.fresh = list(range(p.n, total))
        self.settings = Settings(mesh=MESH, state_dir=root / "settings", trust="allowlist",
                                 trusted_peers=tuple(self.ids))
        self.trust = TrustPolicy("allowlist", self.ids, self.ids[0])
        self.net = SimNet(self.ids, latency=p.latency, loss=p.loss, topo=p.topo, rng=self.rng,
                          cpu_per_msg=p.cpu_per_msg)
        self.units: dict[int, SimUnit] = {}
        self.stores: dict[int, StateStore] = {}
        self.metrics: dict[int, Metrics] = {}
        self.wall_started = time.monotonic()

    def seed_state(self, config: dict) -> None:
        """Every initial host holds revision 1 (published by host 0) as if it had applied it."""
        doc = Document.from_config(config, self.settings.exclusions)
        rev = Revision(1, self.ids[0])
        head = Head(rev, doc.digest, doc.size,
                    sign_revision(self.keys[0].private_key, MESH, rev, doc.digest))
        for i in range(self.p.n):
            store = self.store(i)
            store.save_document(doc)
            store.save_head(head, 1, 0.0)
            self.units[i] = SimUnit(self.net, i, config)

    def store(self, i: int) -> StateStore:
        if i not in self.stores:
            self.stores[i] = StateStore(self.root / f"h{i}", keep=self.settings.keep_configs)
        return self.stores[i]

    async def start(self, i: int) -> None:
        net = self.net
        unit = self.units.setdefault(i, SimUnit(net, i, {"listeners": {}, "routes": [],
                                                         "applications": {}}))
        mesh = SimMesh(net, i)
        self.metrics[i] = Metrics()
        rec = make_reconciler(self.settings, self.keys[i], self.ids[i], mesh, unit,
                              self.store(i), self.trust, self.metrics[i])
        await rec.load()
        rec.register_handlers()
        host = Host(i, mesh, unit, rec, trio.CancelScope())
        await self.nursery.start(self._run_host, host)
        net.hosts[i] = host

    async def _run_host(self, host: Host, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with host.scope:
            async with trio.open_nursery() as nursery:
                host.nursery = nursery
                send, recv = trio.open_memory_channel(math.inf)
                host.inbox = send
                nursery.start_soon(_read_gossip, recv, host.rec)
                await nursery.start(host.rec.serve)
                task_status.started()

    def stop(self, i: int) -> None:
        net = self.net
        host = net.hosts[i]
        if host is None:
            return
        net.hosts[i] = None
        neighbours = list(net.links[i])
        for nb in neighbours:
            net.disconnect(i, nb)
        for s in list(net.open_streams[i]):
            s._in.feed_reset()
            s._out.feed_reset()
        net.reset_router(i)
        host.scope.cancel()
        # discovery refills the neighbours' connections a few seconds later
        for nb in neighbours:
            net.sched.at(trio.current_time() + 5.0, self.rediscover, nb)

    def rediscover(self, i: int) -> None:
        if self.net.live(i) and len(self.net.links[i]) < self.p.topo.peer_target:
            self.net.dial_to_target(i, self.candidates())

    def candidates(self) -> list[int]:
        live = [i for i, h in enumerate(self.net.hosts) if h is not None]
        return self.rng.sample(live, min(len(live), 4 * self.p.topo.peer_target))

    def refusals(self) -> Counter:
        """Messages the hosts' sync layers refused, by reason, summed over every host started."""
        total: Counter = Counter()
        for m in self.metrics.values():
            total.update(m.rejected_counts())
        return total

    def live(self) -> list[int]:
        return [i for i, h in enumerate(self.net.hosts) if h is not None]

    def movable(self) -> list[int]:
        """The live hosts churn and partitions may pick: all but the star's hub (without it a
        star has no connections at all)."""
        pinned = HUB if self.p.topo.kind == "star" else None
        return [i for i in self.live() if i != pinned]

    def check_budget(self) -> None:
        if self.p.budget is not None and time.monotonic() - self.wall_started > self.p.budget:
            raise BudgetExceeded(f"over the wall-clock budget of {self.p.budget:.0f} s")


async def _read_gossip(recv: Any, rec: Any) -> None:
    # the mesh's announcement reader: one message at a time, in arrival order, with the peer that
    # relayed it to reconcilers that take it (the sync code before ``via`` existed does not)
    takes_via = "via" in inspect.signature(rec.on_announcement).parameters
    async for origin, data, via in recv:
        if takes_via:
            await rec.on_announcement(origin, data, via=via)
        else:
            await rec.on_announcement(origin, data)


def _keypair(seed: int, i: int) -> Any:
    from libp2p.crypto.ed25519 import create_new_key_pair

    return create_new_key_pair(derive_seed(seed, i))


# --- one publish --------------------------------------------------------------------------------


async def publish_round(fleet: Fleet, k: int, scenario: str) -> dict:
    p, net = fleet.p, fleet.net
    rng = fleet.rng
    cfg = config_for(k, p.routes)
    marker = f"/sim/{k}"
    digest = Document.from_config(cfg, fleet.settings.exclusions).digest
    wall0 = time.monotonic()

    cut: list[int] = []
    if scenario == "partition":
        live = fleet.movable()
        cut = rng.sample(live, int(len(fleet.live()) * p.partition))
        net.cut = set(cut)
        for a in cut:
            for b in list(net.links[a]):
                if b not in net.cut:
                    net.disconnect(a, b)
                    net.cut_links.add((a, b))
        await trio.sleep(1.0)  # the partition is in place before the publish
    candidates = [i for i in fleet.live() if i not in net.cut]
    origin = rng.choice(candidates)

    before = net.traffic.snapshot()
    refused_before = fleet.refusals()
    net.watch = digest.encode()
    net.learn_hops = {origin: 0}
    t0 = trio.current_time()
    all_applied = [trio.Event()]  # replaced when hosts join: they count from then on
    churned = trio.Event()

    def check(*_: Any) -> None:
        done = net.applied[marker]
        if all(i in done for i in fleet.live()):
            all_applied[0].set()

    net.on_apply = check
    left: list[int] = []
    joined: list[int] = []

    async def churn() -> None:
        await trio.sleep(0.05)
        live = [i for i in fleet.movable() if i != origin]
        count = max(1, round(len(fleet.live()) * p.churn))
        left.extend(rng.sample(live, count))
        for i in left:
            fleet.stop(i)
        check()
        await trio.sleep(0.25)
        restart = left[: len(left) // 2]
        fresh = fleet.fresh[: count - len(restart)]
        del fleet.fresh[: len(fresh)]
        for i in restart + fresh:
            await fleet.start(i)
            net.dial_to_target(i, fleet.candidates())
            joined.append(i)
        all_applied[0] = trio.Event()
        check()
        churned.set()

    async def heal() -> None:
        await trio.sleep(p.heal)
        net.cut = set()
        for a, b in sorted(net.cut_links):
            net.connect(a, b)
        net.cut_links.clear()

    reports_at: list[float] = []
    publisher_saw = [0]
    publisher_done = trio.Event()

    async def publisher_wait(rec: Any, revision: Any) -> None:
        # the publisher's own view (what `publish --wait` reports): every other live host
        others = len(fleet.live()) - 1
        res = await rec.wait_revision(revision, timeout=p.deadline, min_peers=others,
                                      require_all=False)
        publisher_saw[0] = len(res.applied)
        if len(res.applied) - 1 >= others:
            reports_at.append(trio.current_time() - t0)
        publisher_done.set()

    async with trio.open_nursery() as nursery:
        if scenario == "churn":
            nursery.start_soon(churn)
        if scenario == "partition":
            nursery.start_soon(heal)
        rec = net.hosts[origin].rec
        result = await rec.publish(cfg)
        nursery.start_soon(publisher_wait, rec, result.revision)
        with trio.move_on_at(t0 + p.deadline):
            if scenario == "churn":
                await churned.wait()
            await all_applied[0].wait()
        t_all = trio.current_time() - t0 if all_applied[0].is_set() else None
        await trio.sleep(p.settle)
        # the publish's cost is counted until here; the publisher's wait may take longer
        after = net.traffic.snapshot()
        refused = fleet.refusals() - refused_before
        window = trio.current_time() - t0
        with trio.move_on_at(t0 + p.deadline + 1.0):
            await publisher_done.wait()
        nursery.cancel_scope.cancel()
    net.on_apply = None
    net.watch = None

    live = fleet.live()
    applied = net.applied[marker]
    missing = [i for i in live if i not in applied]
    hops = [net.learn_hops[i] for i in live if i in net.learn_hops and i != origin]
    took = sorted(applied[i] - t0 for i in live if i in applied and i != origin)
    msgs = after["msgs"] - before["msgs"]
    nbytes = after["bytes"] - before["bytes"]
    lost = after["lost"] - before["lost"]
    recv = [a - b for a, b in zip(after["recv"], before["recv"], strict=True)]
    sent = [a - b for a, b in zip(after["sent"], before["sent"], strict=True)]
    per_host = [recv[i] + sent[i] for i in live]
    total = sum(msgs.values())
    control = sum(msgs[k] for k in CONTROL_KINDS)
    return {
        "scenario": scenario,
        "publish": k,
        "revision": str(result.revision),
        "origin": origin,
        "live": len(live),
        "applied": len(live) - len(missing),
        "missed": len(missing),
        "left": len(left),
        "joined": len(joined),
        "partitioned": len(cut),
        "t_all_applied_s": t_all,
        "t_reports_s": reports_at[0] if reports_at else None,
        # each host's time from the publish to its Unit holding the config (nearest rank)
        "t_host_p50_s": _rank(took, 0.50),
        "t_host_p99_s": _rank(took, 0.99),
        "publisher_saw": publisher_saw[0],
        "window_s": window,
        "hops_max": max(hops) if hops else None,
        "hops_mean": sum(hops) / len(hops) if hops else None,
        "msgs": total,
        "msgs_sync": total - control,
        "bytes": sum(nbytes.values()),
        "msgs_per_host_mean": sum(per_host) / len(live),
        "msgs_per_host_max": max(per_host),
        # the publisher hears every host's report; the busiest of the others
        "msgs_per_host_max_others": max(recv[i] + sent[i] for i in live if i != origin),
        "recv_per_host_max": max(recv[i] for i in live),
        "sent_per_host_max": max(sent[i] for i in live),
        "sent_by_origin": sent[origin],
        "recv_by_origin": recv[origin],
        "lost": sum(lost.values()),
        "sent_total": sum(sent),
        "recv_total": sum(recv),
        "by_kind": {kind: {"msgs": msgs[kind], "bytes": nbytes[kind]} for kind in sorted(msgs)},
        "streams": dict(after["streams"] - before["streams"]),
        "refused": dict(refused),
        "dials": after["dials"] - before["dials"],
        "gossip_duplicates": after["gossip_duplicates"] - before["gossip_duplicates"],
        "wall_s": time.monotonic() - wall0,
    }


def _rank(values: list[float], q: float) -> float | None:
    return values[min(len(values) - 1, math.ceil(q * len(values)) - 1)] if values else None


async def simulate(p: SimParams, progress: Any = None) -> dict:
    """One fleet of ``p.n`` hosts, its publishes run one after another; ``progress(fleet, row)``
    after each."""
    root = Path(tempfile.mkdtemp(prefix="unit-p2p-sim-", dir=state_root()))
    wall0 = time.monotonic()
    random.seed(p.seed)  # the reconciler's jitter (announce rounds, relay delays)
    out: dict[str, Any] = {"n": p.n, "publishes": [], "error": None}
    try:
        with inline_threads():
            async with trio.open_nursery() as nursery:
                fleet = Fleet(p, nursery, root)
                net = fleet.net
                fleet.seed_state(config_for(0, p.routes))
                for i in range(p.n):
                    await fleet.start(i)
                nursery.start_soon(net.sched.run, fleet.check_budget)
                for i in fleet.rng.sample(range(p.n), p.n):
                    net.dial_to_target(i, fleet.candidates())
                net.heartbeat()
                degrees = [len(net.links[i]) for i in range(p.n)]
                await trio.sleep(p.warmup)
                gdeg = [len(net.gmesh[i]) for i in range(p.n)]
                out["setup_wall_s"] = time.monotonic() - wall0
                out["degree"] = {"mean": sum(degrees) / p.n, "max": max(degrees),
                                 "min": min(degrees)}
                out["gossip_degree"] = {"mean": sum(gdeg) / p.n, "max": max(gdeg),
                                        "min": min(gdeg)}
                plan = (["steady"] * p.publishes if "steady" in p.scenarios else []) + \
                    [s for s in p.scenarios if s != "steady"]
                for k, scenario in enumerate(plan, start=1):
                    out["at"] = f"publish {k} ({scenario})"
                    row = await publish_round(fleet, k, scenario)
                    out["publishes"].append(row)
                    if progress:
                        progress(fleet, row)
                nursery.cancel_scope.cancel()
    except* BudgetExceeded as group:
        out["error"] = f"{group.exceptions[0]}, during {out.get('at')}"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out["wall_s"] = time.monotonic() - wall0
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run(p: SimParams, progress: Any = None) -> dict:
    gc.collect()
    return trio.run(simulate, p, progress, clock=trio.testing.MockClock(autojump_threshold=0))


# --- report -------------------------------------------------------------------------------------

#: gossipsub's own control traffic (the rest is what the sync layer sends: announcements, pushes,
#: heads, pulls, reports)
CONTROL_KINDS = ("ihave", "iwant", "graft", "prune")
#: run parameters added after results were recorded without them, and their value then
ADDED_DEFAULTS = {"topology": "random"}
SUMMARY_KEYS = ("msgs", "msgs_sync", "bytes", "msgs_per_host_mean", "msgs_per_host_max",
                "msgs_per_host_max_others", "recv_per_host_max", "sent_by_origin",
                "recv_by_origin", "t_all_applied_s", "t_reports_s", "t_host_p50_s", "t_host_p99_s",
                "hops_max", "hops_mean")


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(size: dict, scenario: str) -> dict | None:
    rows = [r for r in size["publishes"] if r["scenario"] == scenario]
    if not rows:
        return None
    for r in rows:  # rows written before the column existed
        r.setdefault("msgs_per_host_max_others", None)
        r.setdefault("t_host_p50_s", None)
        r.setdefault("t_host_p99_s", None)
        r.setdefault("msgs_sync", r["msgs"] - sum(r["by_kind"].get(k, {}).get("msgs", 0)
                                                  for k in CONTROL_KINDS))
    out: dict[str, Any] = {k: _mean([r[k] for r in rows]) for k in SUMMARY_KEYS}
    if any(r["t_all_applied_s"] is None for r in rows):
        out["t_all_applied_s"] = None
    out["publishes"] = len(rows)
    out["missed_publishes"] = sum(1 for r in rows if r["missed"])
    out["missed_hosts"] = sum(r["missed"] for r in rows)
    kinds: dict[str, float] = {}
    for r in rows:
        for kind, v in r["by_kind"].items():
            kinds[kind] = kinds.get(kind, 0) + v["msgs"] / len(rows)
    out["by_kind"] = kinds
    out["publisher_saw"] = _mean([r.get("publisher_saw") for r in rows])
    if any(r["t_reports_s"] is None for r in rows):
        out["t_reports_s"] = None
    refused: Counter = Counter()
    for r in rows:
        refused.update(r.get("refused") or {})
    out["refused"] = ", ".join(f"{k} {v / len(rows):,.0f}" for k, v in sorted(refused.items())) \
        or ("0" if all("refused" in r for r in rows) else "-")
    return out


def _fmt(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def _slope(points: list[tuple[int, float]]) -> str:
    """Log-log growth exponent between the smallest and largest N (1 = linear, 2 = quadratic)."""
    points = [(n, v) for n, v in points if v]
    if len(points) < 2:
        return "-"
    (n1, v1), (n2, v2) = points[0], points[-1]
    return f"N^{math.log(v2 / v1) / math.log(n2 / n1):.2f}"


def render(results: dict) -> str:
    lines = ["# Fleet simulator", ""]
    runs = _ordered(results["runs"])
    header = ["N", "policy", "msgs / publish", "msgs / N", "without gossipsub control / N",
              "KiB / publish", "per host mean", "per host max (publisher)",
              "per host max (others)", "host applied p50 / p99 s", "all applied s",
              "publisher saw all s",
              "hops max (mean)", "misses", "refused by the hosts", "wall s (size)"]
    lines += [*summary_table(runs), ""]
    for scenario in ("steady", "churn", "partition"):
        rows = []
        growth = []
        for label, run_ in runs.items():
            pts_msgs, pts_host = [], []
            for n_key in sorted(run_["sizes"], key=int):
                size = run_["sizes"][n_key]
                n = int(n_key)
                s = summarize(size, scenario)
                if s is None and scenario not in run_["params"].get("scenarios", [scenario]):
                    continue
                if s is None:
                    note = size.get("error") or "not run"
                    rows.append([f"{n:,}", label, note] + [""] * (len(header) - 3))
                    continue
                pts_msgs.append((n, s["msgs"]))
                pts_host.append((n, s["msgs_per_host_max_others"] or s["msgs_per_host_max"]))
                miss = f"{s['missed_publishes']}/{s['publishes']}"
                if s["missed_hosts"]:
                    miss += f" ({s['missed_hosts']} hosts)"
                rows.append([f"{n:,}", label, _fmt(s["msgs"]), _fmt(s["msgs"] / n, 1),
                             _fmt(s["msgs_sync"] / n, 1) if s["msgs_sync"] is not None else "-",
                             _fmt(s["bytes"] / 1024), _fmt(s["msgs_per_host_mean"], 1),
                             _fmt(s["sent_by_origin"] + s["recv_by_origin"]),
                             _fmt(s["msgs_per_host_max_others"])
                             if s["msgs_per_host_max_others"] is not None
                             else _fmt(s["msgs_per_host_max"]) + " (any host)",
                             f"{_fmt(s['t_host_p50_s'], 2)} / {_fmt(s['t_host_p99_s'], 2)}",
                             _fmt(s["t_all_applied_s"], 2),
                             _fmt(s["t_reports_s"], 2) if s["t_reports_s"] is not None
                             else f"never (saw {s['publisher_saw']})",
                             f"{_fmt(s['hops_max'])} ({_fmt(s['hops_mean'], 1)})", miss,
                             s["refused"],
                             _fmt(size["wall_s"]) + ("" if not size.get("error")
                                                     else " (stopped)")])
                if size.get("error"):
                    rows[-1][-1] += f": {size['error']}"
            if not pts_msgs:
                continue
            growth.append(f"{label}: messages per publish grow as {_slope(pts_msgs)}, "
                          f"the busiest host's (publisher aside) as {_slope(pts_host)}")
        if not rows:
            continue
        lines += [f"## {scenario}", "", md_table(header, rows), ""]
        lines += [f"- {g}" for g in growth] + [""]
    lines += ["## Messages per publish by kind (steady)", ""]
    for label, run_ in runs.items():
        kinds = sorted({k for size in run_["sizes"].values()
                        for k in (summarize(size, "steady") or {}).get("by_kind", {})})
        rows = []
        for n_key in sorted(run_["sizes"], key=int):
            s = summarize(run_["sizes"][n_key], "steady")
            if s is None:
                continue
            rows.append([f"{int(n_key):,}"] + [_fmt(s["by_kind"].get(k, 0)) for k in kinds])
        if rows:
            lines += [f"{label}:", "", md_table(["N", *kinds], rows), ""]
    lines += ["## Runs", ""]
    for label, run_ in runs.items():
        params = run_["params"]
        lines.append(f"- {label}: commit {run_['commit']}, {run_['machine_line']}; "
                     f"topology {params.get('topology', 'random')}, "
                     f"latency {params['latency']}, loss {params['loss']}, "
                     f"CPU per received message {params.get('cpu_per_msg_ms', 0)} ms, "
                     f"peer_target {params['peer_target']}, gossip D {params['d']} "
                     f"(Dlo {params['d_lo']}, Dhi {params['d_hi']}, IHAVE window "
                     f"{params.get('gossip_window', 3)}), "
                     f"{params['publishes']} steady publishes, churn {params['churn']}, "
                     f"partition {params['partition']} healed after {params['heal']} s, "
                     f"settle {params['settle']} s, seed {params['seed']}"
                     + (f", what-if: offers to at most {params['have_fanout']} peers"
                        if params.get("have_fanout") is not None else "")
                     + (", what-if: no gossip of the announcement"
                        if params.get("no_gossip_announce") else ""))
        for n_key in sorted(run_["sizes"], key=int):
            size = run_["sizes"][n_key]
            extra = f", stopped: {size['error']}" if size.get("error") else ""
            if not size["publishes"]:
                lines.append(f"  - N={int(n_key):,}: {size.get('error')}")
                continue
            lines.append(f"  - N={int(n_key):,} (commit {size.get('commit', run_['commit'])}, "
                         f"load {size.get('loadavg', ['?'])[0]}): {size['wall_s']:.0f} s wall "
                         f"(setup {size.get('setup_wall_s', 0):.0f} s), peak RSS "
                         f"{size['peak_rss_mib']:.0f} MiB, degree mean "
                         f"{size.get('degree', {}).get('mean', 0):.1f}, gossip mesh degree mean "
                         f"{size.get('gossip_degree', {}).get('mean', 0):.1f}{extra}")
    return "\n".join(lines) + "\n"


def _ordered(runs: dict) -> dict:
    """"before", "after", then the other labels alphabetically."""
    first = {"before": 0, "after": 1}
    return {label: runs[label] for label in sorted(runs, key=lambda x: (first.get(x, 2), x))}


def summary_table(runs: dict, labels: list[str] | None = None) -> list[str]:
    """Steady publishes, the policies side by side: messages per publish (per host), the
    busiest host other than the publisher, simulated seconds until all applied."""
    runs = {k: v for k, v in _ordered(runs).items() if labels is None or k in labels}
    sizes = sorted({int(n) for run_ in runs.values() for n in run_["sizes"]})
    header = ["N"]
    for label in runs:
        header += [f"{label}: msgs / publish (/ N)", f"{label}: busiest other host",
                   f"{label}: host applied p50 / p99 s",
                   f"{label}: all applied s (publisher saw all s)"]
    rows = []
    for n in sizes:
        row = [f"{n:,}"]
        for run_ in runs.values():
            size = run_["sizes"].get(str(n))
            s = summarize(size, "steady") if size else None
            if s is None:
                error = (size or {}).get("error") or "not run"
                row += ["not run (see the notes)" if error.startswith("not run") else error, "",
                        "", ""]
                continue
            others = s["msgs_per_host_max_others"]
            row += [f"{_fmt(s['msgs'])} ({_fmt(s['msgs'] / n, 1)})",
                    _fmt(others) if others is not None
                    else f"{_fmt(s['msgs_per_host_max'])} (any host)",
                    f"{_fmt(s['t_host_p50_s'], 2)} / {_fmt(s['t_host_p99_s'], 2)}",
                    f"{_fmt(s['t_all_applied_s'], 2)} ("
                    + (_fmt(s["t_reports_s"], 2) if s["t_reports_s"] is not None
                       else f"never: {_fmt(s['publisher_saw'])} of {n:,}") + ")"]
        rows.append(row)
    return ["## Summary: steady publishes", "", md_table(header, rows)]


def md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def write_csv(results: dict, path: Path) -> None:
    kinds = sorted({k for run_ in results["runs"].values() for size in run_["sizes"].values()
                    for row in size["publishes"] for k in row["by_kind"]})
    cols = ["policy", "commit", "n", "scenario", "publish", "live", "applied", "missed",
            "t_all_applied_s", "t_reports_s", "hops_max", "hops_mean", "msgs", "msgs_sync",
            "bytes",
            "msgs_per_host_mean", "msgs_per_host_max", "msgs_per_host_max_others",
            "recv_per_host_max", "sent_per_host_max", "sent_by_origin", "recv_by_origin", "lost",
            "dials", "wall_s"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols + [f"msgs:{k}" for k in kinds] + [f"bytes:{k}" for k in kinds])
        for label, run_ in results["runs"].items():
            for n_key, size in sorted(run_["sizes"].items(), key=lambda kv: int(kv[0])):
                for row in size["publishes"]:
                    base = {"policy": label, "commit": run_["commit"], "n": n_key, **row}
                    w.writerow([base.get(c) for c in cols]
                               + [row["by_kind"].get(k, {}).get("msgs", 0) for k in kinds]
                               + [row["by_kind"].get(k, {}).get("bytes", 0) for k in kinds])


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("msgs", "messages per publish (all hosts)"),
              ("msgs_per_host_max_others", "messages per publish, busiest host (publisher aside)"),
              ("t_all_applied_s", "simulated s until all applied")]
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.6))
    all_n: set[int] = set()
    for ax, (key, title) in zip(axes, panels, strict=True):
        for color, (label, run_) in enumerate(_ordered(results["runs"]).items()):
            for scenario, style in (("steady", "o-"), ("churn", "s--"), ("partition", "^:")):
                pts = []
                for n_key in sorted(run_["sizes"], key=int):
                    s = summarize(run_["sizes"][n_key], scenario)
                    # rows from before the "others" column: the busiest host overall
                    value = s and (s.get(key) or (key == "msgs_per_host_max_others"
                                                  and s.get("msgs_per_host_max")))
                    if value:
                        pts.append((int(n_key), value))
                if pts:
                    all_n.update(n for n, _ in pts)
                    ax.plot([x for x, _ in pts], [y for _, y in pts], style,
                            color=f"C{color}", label=f"{label} {scenario}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("hosts N")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    if all_n:
        ns = sorted(all_n)
        for mult, ref in ((8, "8 N (target)"), (1, "N^2")):
            ys = [mult * n for n in ns] if ref.startswith("8") else [n * n for n in ns]
            axes[0].plot(ns, ys, color="grey", lw=0.8, ls="-." if mult == 8 else ":", label=ref)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(results: dict, name: str, label: str | None = None) -> Path:
    """Write the results; with ``label``, only that run is replaced in what is on disk, so runs
    of other labels (possibly written meanwhile by another invocation) are kept."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    if label is not None and path.exists():
        on_disk = json.loads(path.read_text())
        on_disk["runs"][label] = results["runs"][label]
        results = on_disk
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    (RESULTS / f"{name}.md").write_text(render(results))
    write_csv(results, RESULTS / f"{name}.csv")
    plot(results, RESULTS / f"{name}.png")
    return RESULTS / f"{name}.md"


def commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        # the last commit of the sync code under test (stable across rebases of this branch)
        sha = subprocess.run(["git", "log", "-1", "--format=%h", "--", "agent/unit_p2p/sync"],
                             cwd=root, text=True, capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "agent"], cwd=root,
                               text=True, capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + (" (agent/ modified)" if dirty else "")


# --- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    gossip = GossipParams()
    ap = argparse.ArgumentParser(prog="python -m bench.simulate",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100, 1000, 5000], help="fleet sizes")
    ap.add_argument("--label", default=None,
                    help="name of this run's column (default: the commit); results of other "
                         "labels in the JSON are kept")
    ap.add_argument("--publishes", type=int, default=2, help="steady publishes per size")
    ap.add_argument("--scenarios", nargs="+", default=["steady", "churn", "partition"],
                    choices=["steady", "churn", "partition"])
    ap.add_argument("--latency", default="lognormal:10:0.5",
                    help="one-way link latency: const:MS, uniform:LO:HI, lognormal:MEDIAN:SIGMA "
                         "(add ,jitter=F for per-message jitter, default 0.1)")
    ap.add_argument("--loss", type=float, default=0.01, help="per-transmission loss rate")
    ap.add_argument("--cpu-per-msg", type=float, default=0.0, metavar="MS",
                    help="CPU ms each received message costs its host, one at a time (default "
                         "0: infinite CPU, simulated time is network time only)")
    ap.add_argument("--topology", choices=["random", "star"], default="random",
                    help="random: each host dials random hosts up to --peer-target connections "
                         "(discovery's bounded-degree graph); star: every host connects to host "
                         "0 only (bootstrap from one address, no DHT), which never leaves nor is "
                         "cut off")
    ap.add_argument("--peer-target", type=int, default=8)
    ap.add_argument("--gossip-window", type=int, default=gossip.gossip_window,
                    help="heartbeats a message id is in IHAVE gossip (default: the agent's "
                         f"GossipParams, {gossip.gossip_window}); a what-if knob")
    ap.add_argument("--have-fanout", type=int, default=None,
                    help="what-if: offer a fetched revision to at most this many connected peers "
                         "(sync.spread.HAVE_FANOUT; default: the agent's)")
    ap.add_argument("--no-gossip-announce", action="store_true",
                    help="what-if: the publisher pushes its head to its connected peers but does "
                         "not gossip it (the holders' offers carry it on)")
    ap.add_argument("--churn", type=float, default=0.05, help="fraction leaving (and joining)")
    ap.add_argument("--partition", type=float, default=0.2, help="fraction cut off")
    ap.add_argument("--heal", type=float, default=10.0, help="s after the publish")
    ap.add_argument("--routes", type=int, default=20, help="routes in the published config")
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--deadline", type=float, default=60.0, help="simulated s per publish")
    ap.add_argument("--budget", type=float, default=None,
                    help="wall-clock s per size; a size over it stops and is reported as such")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--commit", default=None,
                    help="the commit the sync code under test is from, when it is not this "
                         "checkout's (e.g. PYTHONPATH=<export of an older commit>/agent)")
    ap.add_argument("--out", default="simulate", help="results name under bench/results/")
    ap.add_argument("--replot", action="store_true", help="rewrite md/csv/png from the JSON")
    ap.add_argument("--not-run", metavar="REASON", default=None,
                    help="record the --n sizes as not simulated, with REASON (a size this "
                         "machine cannot afford under this policy), instead of running them")
    args = ap.parse_args(argv)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # so the fleet's state dir on /dev/shm is removed on the way out

    signal.signal(signal.SIGTERM, interrupted)
    path = RESULTS / f"{args.out}.json"
    results = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    if args.replot:
        print(write_results(results, args.out).read_text())
        return 0
    from bench.common import machine, machine_line

    code_commit = args.commit or commit()
    label = args.label or code_commit
    topo = Topology(kind=args.topology, peer_target=args.peer_target, d=gossip.degree,
                    d_lo=gossip.degree_low, d_hi=gossip.degree_high,
                    heartbeat=float(gossip.heartbeat_interval), gossip_window=args.gossip_window,
                    prune_back_off=float(gossip.prune_back_off))
    latency = Latency.parse(args.latency)
    from unit_p2p.sync import spread

    if args.have_fanout is not None:
        spread.HAVE_FANOUT = args.have_fanout
    if args.no_gossip_announce:
        async def published(self: Any) -> None:
            await self.broadcast(self.local_state(), gossip=False)

        spread.Spread.published = published
    run_ = {"commit": code_commit, "machine": machine(), "machine_line": machine_line(machine()),
            "params": {"topology": topo.kind, "latency": str(latency), "loss": args.loss,
                       "cpu_per_msg_ms": args.cpu_per_msg, "peer_target": topo.peer_target,
                       "d": topo.d, "d_lo": topo.d_lo, "d_hi": topo.d_hi,
                       "gossip_window": topo.gossip_window, "have_fanout": args.have_fanout,
                       "no_gossip_announce": args.no_gossip_announce,
                       "publishes": args.publishes, "churn": args.churn,
                       "partition": args.partition, "heal": args.heal, "settle": args.settle,
                       "routes": args.routes, "deadline": args.deadline, "seed": args.seed,
                       "scenarios": args.scenarios},
            "sizes": {}}
    previous = results["runs"].get(label)

    def same(a: dict, b: dict) -> bool:  # a parameter added later with its default is the same
        def set_(params: dict) -> dict:
            return {k: v for k, v in params.items() if v and v != ADDED_DEFAULTS.get(k)}

        return set_(a) == set_(b)

    if previous is not None and same(previous["params"], run_["params"]):
        # the same run's other sizes are kept (one size at a time is how N=5,000 fits a session)
        run_["sizes"] = previous["sizes"]
    results["runs"][label] = run_

    def progress(fleet: Fleet, row: dict) -> None:
        n = fleet.p.n
        print(f"  N={n} {row['scenario']}: {row['applied']}/{row['live']} applied in "
              f"{_fmt(row['t_all_applied_s'], 2)} s, {row['msgs']:,} msgs "
              f"({row['msgs'] / n:.1f}/host), busiest host {row['msgs_per_host_max']:,}, "
              f"{row['wall_s']:.0f} s wall", flush=True)

    for n in args.n:
        if args.not_run:
            run_["sizes"][str(n)] = {"n": n, "publishes": [], "wall_s": 0.0, "peak_rss_mib": 0.0,
                                     "error": f"not run: {args.not_run}", "commit": code_commit}
            continue
        print(f"N={n} ({label})", flush=True)
        p = SimParams(n=n, seed=args.seed, latency=latency, loss=args.loss, topo=topo,
                      cpu_per_msg=args.cpu_per_msg / 1000,
                      routes=args.routes, publishes=args.publishes, churn=args.churn,
                      partition=args.partition, heal=args.heal, settle=args.settle,
                      deadline=args.deadline, budget=args.budget,
                      scenarios=tuple(args.scenarios))
        size = run(p, progress)
        size.pop("at", None)
        size["commit"] = code_commit
        size["loadavg"] = machine()["loadavg"]
        run_["sizes"][str(n)] = size
        run_["machine"]["loadavg_end"] = machine()["loadavg"]
        write_results(results, args.out, label)
        print(f"  {size['wall_s']:.0f} s wall, peak RSS {size['peak_rss_mib']:.0f} MiB"
              + (f", STOPPED: {size['error']}" if size.get("error") else ""), flush=True)
    print(write_results(results, args.out, label).read_text())
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
