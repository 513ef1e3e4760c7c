"""The writer thread's work: one storage write transaction per loop iteration.

Rule: one transaction (one commit) persists every group's Ready of the iteration: save
(hard state, entries, snapshot), apply the committed entries, record a new membership,
compact. It runs on the single writer thread and touches nothing but the storage.

Rule: a transaction is flushed as durable unless every plan in it only applies committed
entries and moves the commit index (``durable``), and it applies no shard admin entry
(the storage flushes those: ``Writer.must_flush``). A machine crash may undo such a
transaction (a process crash cannot), which is safe because everything it held is
rebuilt from durable state (see ``durable``), as etcd commits its backend in the
background.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kvstore.consensus.types import ConfState, MessageType, Ready, Role
from kvstore.node.metrics import NodeMetrics
from kvstore.node.snapshot_recv import discard_installed
from kvstore.statemachine import ApplyResult
from kvstore.storage import NodeStorage


@dataclass(slots=True)
class Plan:
    """What the writer thread does for one group in one transaction."""

    group: int
    rd: Ready
    compact_to: int
    conf_state: ConfState | None = None
    addresses: dict[int, str] = field(default_factory=dict)
    """Member addresses the applied conf changes give ("": forget), see node/members.py."""
    log_changes: bool = True
    """The Ready changes the log or what a vote depends on: entries, a snapshot, or a term
    or vote (Paxos: promise) other than the durable one. False: it only applies committed
    entries and moves the commit index (``ReplicaLoop.plan`` decides)."""


@dataclass(slots=True)
class ShardChanges:
    """What a persist did to the node's shards (filled by ``persist_plans``)."""

    created: list[int] = field(default_factory=list)
    """Groups a split created on this node."""
    admin_results: dict[int, dict[int, int]] = field(default_factory=dict)
    """group -> entry index -> result of the admin command applied there."""
    merged: list[tuple[int, int]] = field(default_factory=list)
    """(target, source) of merges applied here: the source replica is gone."""
    merge_anomalies: list[str] = field(default_factory=list)
    changed: bool = False
    """Some group's shard descriptor may have changed (split, snapshot, conf change)."""


_LEADER_EARLY = frozenset(
    {MessageType.APPEND, MessageType.HEARTBEAT, MessageType.ACCEPT, MessageType.PAXOS_HEARTBEAT}
)


def may_send_before_persist(
    role: Role, persisted_term: int, persisted_vote: int, rd: Ready
) -> bool:
    """A leader replicates in parallel with its own disk write (Raft thesis 10.2.1): its
    APPENDs / ACCEPTs and heartbeats depend on no state this Ready persists (term and
    vote, or the Paxos promise, are already durable; both cores count the leader's own
    entries only once they are durable, in ``advance``). Anything else waits for the
    persist. ``role``: as of the last Ready. Checked for both cores by the driver model
    (tests/sim/driver_model.py)."""
    if role != Role.LEADER or rd.snapshot is not None:
        return False
    if rd.soft_state is not None and rd.soft_state.role != Role.LEADER:
        return False
    hs = rd.hard_state
    if hs is not None and (hs.term, hs.vote) != (persisted_term, persisted_vote):
        return False
    return all(m.type in _LEADER_EARLY for m in rd.messages)


class NodeStorageView:
    """The node storage as the replica loop reads it (replica.ReplicaStorage)."""

    __slots__ = ("_storage",)

    def __init__(self, storage: NodeStorage) -> None:
        self._storage = storage

    @property
    def tight(self) -> bool:
        return self._storage.tight

    def first_index(self, group: int) -> int:
        return self._storage.group(group).first_index()

    def member_addresses(self, group: int) -> dict[int, str]:
        return self._storage.group(group).member_addresses()

    def applied_time(self, group: int) -> int:
        return self._storage.kv(group).applied_time()

    def log_time(self, group: int) -> int:
        return self._storage.kv(group).log_time()


def needs_write(p: Plan) -> bool:
    rd = p.rd
    return bool(
        rd.hard_state is not None
        or rd.entries
        or rd.snapshot is not None
        or rd.committed
        or p.compact_to
        or p.conf_state is not None
        or bool(p.addresses)
    )


def durable(plans: list[Plan]) -> bool:
    """Must the transaction holding ``plans`` be durable when it returns?

    Not when every plan only applies committed entries and moves the commit index
    (etcd's ``MustSync`` is false there too). Such a transaction may be undone by a
    machine crash (storage/env.py: never torn, and undone only together with every later
    non-durable one), and nothing that left the node depended on it: the entries it
    applies were appended by an earlier durable transaction and are committed, i.e.
    durable on a quorum's logs; the applied index is written in the same transaction as
    the state it describes (``Writer.apply``), so an undone apply is an applied index
    that moved back with its state, and the restarted node re-applies those entries from
    its log (the state machine is deterministic: same state, same answers); the commit
    index need not be durable in Raft or Paxos (a restarted node learns it again, and
    never applies past what its storage says is committed). Acks, votes and promises
    depend only on entries and hard state, which make their transaction durable, and a
    durable transaction makes every earlier one durable too. Membership records, member
    addresses and compactions are flushed as well: they are rare and not worth the
    argument. So is a transaction that applies a shard admin entry (the storage flushes
    it: ``Writer.must_flush``): a merge coordinator acts on a PrepareMerge's apply as
    this node reports it, irrevocably."""
    return any(
        p.log_changes or p.compact_to or p.conf_state is not None or p.addresses for p in plans
    )


def persist_plans(
    storage: NodeStorage,
    metrics: NodeMetrics,
    plans: list[Plan],
    shards: ShardChanges | None = None,
    on_applied: Callable[[dict[int, list[ApplyResult]]], None] | None = None,
) -> dict[int, list[ApplyResult]]:
    """One transaction, one fsync, for all groups; returns each group's apply results
    (and fills ``shards`` when given). ``on_applied(results)`` is called with them once
    the transaction is staged, just before its commit (ReplicaLoop.answer_applied says
    why answering then is safe), so the commit's fsync overlaps the replies."""
    t0 = time.perf_counter()
    results: dict[int, list[ApplyResult]] = {}
    with storage.write(durable=durable(plans)) as w:
        for p in plans:
            rd = p.rd
            if rd.hard_state is not None or rd.entries or rd.snapshot is not None:
                w.save(p.group, hard_state=rd.hard_state, entries=rd.entries, snapshot=rd.snapshot)
            if rd.committed:
                results[p.group] = w.apply(p.group, rd.committed)
            if p.conf_state is not None:
                w.set_conf_state(p.group, p.conf_state)
            for node, address in p.addresses.items():
                w.set_member_address(p.group, node, address)
            if p.compact_to > 0:
                w.compact(p.group, p.compact_to)
        if shards is not None:
            shards.created += w.created
            shards.merged += w.merged
            shards.merge_anomalies += w.merge_anomalies
            for g, rs in w.admin_results.items():
                shards.admin_results.setdefault(g, {}).update(rs)
            shards.changed = shards.changed or bool(
                w.created
                or w.merged
                or w.admin_results
                or any(p.conf_state is not None or p.rd.snapshot is not None for p in plans)
            )
        if on_applied is not None and results:
            on_applied(results)
    metrics.fsync_latency.observe(time.perf_counter() - t0)
    for p in plans:
        if p.rd.snapshot is not None:
            discard_installed(p.group, p.rd.snapshot.data)
    return results
