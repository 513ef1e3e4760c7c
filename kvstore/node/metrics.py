"""Prometheus metrics of one node, in a registry of its own (many nodes may share a process
in tests). kvstore.server.process serves the registry over HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING

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


class NodeMetrics:
    def __init__(self) -> None:
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

    def watch_budget(self, budget: NodeBudget) -> None:
        """Read the node's in-flight budget at every scrape."""
        self.inflight_ops.set_function(lambda: budget.ops)
        self.inflight_bytes.set_function(lambda: budget.bytes)
