"""The fleet simulator at a small size: it must converge and its counters must add up.

Simulated time only (trio's MockClock): the simulator's own deadline bounds every wait.
"""

from __future__ import annotations

from bench.simulate import SimParams, run
from bench.simulate_net import marker_of


def test_small_fleet_with_loss_and_churn_converges_and_counts_add_up():
    seen: list[dict] = []

    def inspect(fleet, row):
        live = fleet.live()
        marker = f"/sim/{row['publish']}"
        seen.append({
            "row": row,
            "unit_markers": {marker_of(fleet.units[i].config) for i in live},
            "heads": {fleet.net.hosts[i].rec.status()["head"]["revision"] for i in live},
            "marker": marker,
        })

    out = run(SimParams(n=30, seed=7, loss=0.05, publishes=1, scenarios=("steady", "churn"),
                        churn=0.1, deadline=60.0), inspect)
    assert out["error"] is None
    assert [s["row"]["scenario"] for s in seen] == ["steady", "churn"]
    for s in seen:
        row = s["row"]
        # every live host (joiners included) holds the published revision, in Unit and as head
        assert row["missed"] == 0 and row["applied"] == row["live"]
        assert s["unit_markers"] == {s["marker"]}
        assert s["heads"] == {row["revision"]}
        assert row["t_all_applied_s"] is not None
        # each transmission counted once by kind, once as sent, once as received or lost
        assert sum(v["msgs"] for v in row["by_kind"].values()) == row["msgs"]
        assert sum(v["bytes"] for v in row["by_kind"].values()) == row["bytes"]
        assert row["sent_total"] == row["msgs"]
        assert row["recv_total"] + row["lost"] == row["msgs"]
        assert row["lost"] > 0  # the loss model was exercised
    churn = seen[1]["row"]
    assert churn["left"] == 3 and churn["joined"] == 3
    assert churn["live"] == 30
