"""Prometheus metrics of one node, in a registry of its own (many nodes may share a process
in tests). kvstore.server.process serves the registry over HTTP.

Rule (bounded cardinality): per-shard series carry the label ``group``, the shard id (0:
the meta group), for at most MAX_SHARD_SERIES shards a node hosts, given out first come
first served as the node starts hosting them. Past the cap, and for groups the node does
not host (messages for an unknown group), counters and histograms add up under
``group="other"`` and gauges are not exported. ``forget_shard`` removes every series
of a shard that left the node (moved away, merged, destroyed) and frees its slot, so a
node's series never grow with the shards it has ever hosted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from kvstore.node.limits import NodeBudget

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
)


MAX_SHARD_SERIES = 64
OTHER = "other"


class _NoGauge:
    """A gauge child that exports nothing (a shard past the cap)."""

    def set(self, value: float) -> None:
        pass


@dataclass(frozen=True, slots=True)
class ShardSeries:
    """A shard's per-Ready series, looked up once (a label lookup per Ready costs)."""

    term: Any
    commit: Any
    applied: Any
    latency: Any


class NodeMetrics:
    def __init__(self, max_shard_series: int = MAX_SHARD_SERIES) -> None:
        self.max_shard_series = max_shard_series
        self._shards: dict[int, None] = {}
        """Shards with series of their own (at most max_shard_series)."""
        self._series: dict[int, ShardSeries] = {}
        r = self.registry = CollectorRegistry()
        self.term = Gauge(
            "kvstore_term", "Current term (Raft) or ballot (Paxos)", ["group"], registry=r
        )
        self.commit = Gauge("kvstore_commit_index", "Commit index", ["group"], registry=r)
        self.applied = Gauge("kvstore_applied_index", "Applied index", ["group"], registry=r)
        self.is_leader = Gauge("kvstore_is_leader", "1 when this node leads", ["group"], registry=r)
        self.leader_changes = Counter(
            "kvstore_leader_changes", "Leader changes seen", ["group"], registry=r
        )
        self.proposal_latency = Histogram(
            "kvstore_proposal_seconds",
            "Client write: queued to applied",
            ["group"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fsync_latency = Histogram(
            "kvstore_persist_seconds",
            "One storage write transaction (one fsync) per Ready batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_ops = Histogram(
            "kvstore_entry_ops",
            "Client commands per proposed log entry",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
            registry=r,
        )
        self.sent = Counter(
            "kvstore_messages_sent", "Consensus messages sent", ["group"], registry=r
        )
        self.received = Counter(
            "kvstore_messages_received", "Consensus messages received", ["group"], registry=r
        )
        self.dropped = Counter(
            "kvstore_messages_dropped",
            "Messages dropped, by reason",
            ["group", "reason"],
            registry=r,
        )
        self.rejected_batches = Counter(
            "kvstore_peer_batches_rejected",
            "Peer batches rejected (wrong cluster id, unknown sender, junk)",
            ["reason"],
            registry=r,
        )
        self.client_ops = Counter(
            "kvstore_client_ops", "Client operations answered", ["op", "code"], registry=r
        )
        self.storage_used = Gauge(
            "kvstore_storage_used_bytes", "LMDB pages in use, in bytes", registry=r
        )
        self.storage_cap = Gauge(
            "kvstore_storage_map_bytes", "LMDB map size: writes fail past it", registry=r
        )
        self.peer_phi = Gauge(
            "kvstore_peer_phi", "Phi-accrual suspicion of a peer", ["peer"], registry=r
        )
        self.snapshots_rejected = Counter(
            "kvstore_snapshots_rejected",
            "Snapshots from peers refused before install (bad checksum or image)",
            ["group", "reason"],
            registry=r,
        )
        self.snapshots_sent = Counter(
            "kvstore_snapshots_sent",
            "Snapshot transfers to peers, by result (ok, failed)",
            ["group", "result"],
            registry=r,
        )
        self.peer_connected = Gauge(
            "kvstore_peer_connected", "1 when the stream to the peer is up", ["peer"], registry=r
        )
        self.inflight_ops = Gauge(
            "kvstore_client_inflight_ops",
            "Client ops admitted and not yet answered and sent",
            registry=r,
        )
        self.inflight_bytes = Gauge(
            "kvstore_client_inflight_bytes",
            "Bytes of client requests running and answers not yet sent",
            registry=r,
        )

    def host_shard(self, group: int) -> None:
        """This node now hosts shard ``group``: it gets series of its own if a slot is
        free."""
        if len(self._shards) < self.max_shard_series:
            self._shards[group] = None

    def shard(self, group: int) -> str:
        """The ``group`` label value for a counter or histogram of shard ``group``."""
        return str(group) if group in self._shards else OTHER

    def shard_gauge(self, gauge: Gauge, group: int) -> Any:
        """The child of a per-shard gauge (a no-op past the cap: a sum means nothing)."""
        label = self.shard(group)
        return _NoGauge() if label == OTHER else gauge.labels(label)

    def series(self, group: int) -> ShardSeries:
        s = self._series.get(group)
        if s is None:
            s = self._series[group] = ShardSeries(
                term=self.shard_gauge(self.term, group),
                commit=self.shard_gauge(self.commit, group),
                applied=self.shard_gauge(self.applied, group),
                latency=self.proposal_latency.labels(self.shard(group)),
            )
        return s

    def forget_shard(self, group: int) -> None:
        """Drop every series of shard ``group`` (it left this node) and free its slot."""
        self._shards.pop(group, None)
        self._series.pop(group, None)
        label = str(group)
        for metric in self._per_shard():
            for labels in [k for k in _children(metric) if k and k[0] == label]:
                metric.remove(*labels)

    def _per_shard(self) -> list[Any]:
        return [
            self.term,
            self.commit,
            self.applied,
            self.is_leader,
            self.leader_changes,
            self.proposal_latency,
            self.sent,
            self.received,
            self.dropped,
            self.snapshots_rejected,
            self.snapshots_sent,
        ]

    def watch_budget(self, budget: NodeBudget) -> None:
        """Read the node's in-flight budget at every scrape."""
        self.inflight_ops.set_function(lambda: budget.ops)
        self.inflight_bytes.set_function(lambda: budget.bytes)


def _children(metric: Any) -> list[tuple[str, ...]]:
    """The label values of a labelled metric's children (prometheus_client keeps them in
    ``_metrics``; no public accessor)."""
    with metric._lock:
        return list(metric._metrics)
