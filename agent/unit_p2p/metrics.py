"""Prometheus metrics of one agent, on a registry of its own (tests run several per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.peers_connected = Gauge("unit_p2p_peers_connected", "Peers with a live connection",
                                     registry=r)
        self.head_counter = Gauge("unit_p2p_head_revision_counter",
                                  "Counter of the revision applied on this host (0: none)",
                                  registry=r)
        self.applies = Counter("unit_p2p_applies", "Revisions applied to the local Unit",
                               ["result"], registry=r)
        self.publishes = Counter("unit_p2p_publishes", "Revisions published from this host",
                                 registry=r)
        self.pulls_served = Counter("unit_p2p_pulls_served", "Documents served to peers",
                                    registry=r)
        self.pull_bytes = Counter("unit_p2p_pulled_bytes", "Document bytes pulled from peers",
                                  registry=r)
        self.rejected = Counter("unit_p2p_messages_rejected",
                                "Messages, streams or revisions refused, by reason",
                                ["reason"], registry=r)
        self.messages = Counter(
            "unit_p2p_messages",
            "Messages sent and received, by protocol (gossip, notify, heads, pull, gossipsub, "
            "ping) and kind (announce, nohead, report, pull, served, error; gossipsub: message, "
            "ihave, iwant, graft, prune, idontwant, subscribe; ping: ping)",
            ["protocol", "kind", "direction"], registry=r)
        self.drifted = Gauge("unit_p2p_unit_drifted",
                             "1 while Unit holds a config other than the head (minus exclusions) "
                             "for reasons other than an apply", registry=r)
        self.drift_repairs = Counter("unit_p2p_drift_repairs",
                                     "Re-applies of the head after drift, by result",
                                     ["result"], registry=r)
        self.unit_up = Gauge("unit_p2p_unit_reachable", "1 when the local Unit answers",
                             registry=r)
        self.last_convergence = Gauge(
            "unit_p2p_last_convergence_seconds",
            "Seconds from a revision's announcement reaching this host to it being applied",
            registry=r)
        self.certificate_expiry = Gauge(
            "unit_p2p_certificate_expiry_seconds",
            "When each certificate of the head expires (its leaf's notAfter), as a Unix "
            "timestamp in seconds, like blackbox_exporter's probe_ssl_earliest_cert_expiry",
            ["name"], registry=r)

    def refused(self, reason: str, n: int = 1) -> None:
        """Count ``n`` refusals (messages, streams, connections or revisions) of ``reason``."""
        self.rejected.labels(reason).inc(n)

    def message(self, protocol: str, kind: str, direction: str, n: int = 1) -> None:
        """Count ``n`` messages; ``direction`` is ``sent`` or ``received``."""
        self.messages.labels(protocol, kind, direction).inc(n)

    def message_counts(self) -> dict[tuple[str, str, str], int]:
        out: dict[tuple[str, str, str], int] = {}
        for metric in self.messages.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    lab = sample.labels
                    out[(lab["protocol"], lab["kind"], lab["direction"])] = int(sample.value)
        return out

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def rejected_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for metric in self.rejected.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels["reason"]] = int(sample.value)
        return out

    def applies_count(self, result: str) -> int:
        return int(self._sample(self.applies, "unit_p2p_applies_total", {"result": result}))

    def pulls_served_count(self) -> int:
        return int(self._sample(self.pulls_served, "unit_p2p_pulls_served_total", {}))

    @staticmethod
    def _sample(metric, name: str, labels: dict) -> float:
        # The public collect() view, not prometheus-client's private value holders.
        for family in metric.collect():
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return 0.0
