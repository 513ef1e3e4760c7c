"""The replica loop: what one node does with one consensus group's Ready, written once and
run by the node (LMDB, gRPC peers, the event loop's clock) and by the seeded simulation
(in-memory storage, simulated network and time, tests/sim/cluster.py) alike.

Rules this module keeps (the Ready contract of kvstore/consensus/types.py):
- One batch is ``begin`` -> the host persists ``Batch.plans`` in ONE storage transaction
  (save, apply, membership, compaction) -> ``finish`` -> ``advance``. Nothing else
  touches a core of the batch between its ``ready()`` and its ``advance()`` except
  ``step`` of peer messages (etcd allows it) and ``apply_conf_change`` of the Ready's
  committed conf changes, which ``begin`` calls so the persisted membership is the one
  after them.
- Messages leave before the persist only where ``may_send_before_persist`` allows (a
  leader's appends and heartbeats); all others after it, before any client is answered.
- A write is answered when the entry at its ProposalId's index applies with the same
  term; another term there means the proposal was lost (definite, retryable). A read
  index is answered once the group applied up to it. Answers are deferred (``replies``)
  and flushed by the host once its next persist is under way.
- The I/O lives behind three small boundaries the host implements: ``ReplicaStorage``
  (what a replica reads between persists), ``send`` (the transport) and ``Clock``.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from kvstore.consensus.types import (
    ConfChange,
    ConfState,
    ConsensusError,
    Entry,
    EntryType,
    Message,
    MessageType,
    NotLeaderError,
    ProposalDroppedError,
    ProposalId,
    Ready,
    Role,
)
from kvstore.node import log
from kvstore.node.errors import InvalidOp, NotLeaderOp, OpError, UnavailableOp
from kvstore.node.hlc import MAX_AHEAD_MS, HybridClock
from kvstore.node.log_bytes import HOLD_FACTOR
from kvstore.node.members import address_change
from kvstore.node.metrics import NodeMetrics, ShardSeries
from kvstore.node.pending import (
    GroupState,
    Inflight,
    Replies,
    Waiter,
    Write,
    fail,
    ok,
    pack_entries,
)
from kvstore.node.persist import Plan, may_send_before_persist
from kvstore.node.shards import propose_admin_entries, resolve_admin
from kvstore.statemachine import ApplyResult, encode_batch, entry_stamp, entry_time_ms

MAX_ENTRY_BYTES = 4 << 20
MAX_ENTRY_OPS = 4096


class ReplicaStorage(Protocol):
    """The storage as a replica reads it between persists (the node: LMDB's NodeStorage;
    the simulation: its in-memory twin). Writing is the host's one-transaction persist of
    a batch's plans."""

    @property
    def tight(self) -> bool:
        """Nearly full: compact the whole applied log at every persist."""
        ...

    def first_index(self, group: int) -> int: ...

    def member_addresses(self, group: int) -> dict[int, str]:
        """Members' addresses as the group's durable state (a snapshot) records them."""
        ...

    def applied_time(self, group: int) -> int:
        """The group's applied time as of the last persist (statemachine/apply.py)."""
        ...

    def log_time(self, group: int) -> int:
        """The group's log time (session expiry) as of the last persist."""
        ...


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds: request deadlines and latencies."""
        ...

    def wall_ms(self) -> int:
        """The wall clock: the physical part of hybrid clock stamps (hlc.py). Never log
        time (logclock.py), which follows monotonic time."""
        ...


@dataclass(slots=True)
class Batch:
    """One iteration's Readies between ``begin`` and ``finish``."""

    readies: list[tuple[GroupState, Ready]]
    plans: list[Plan]
    late: list[Message]
    """Messages that may leave only after the persist."""


class ReplicaLoop:
    """The per-group replica loop of one node; the node runs it for all of its groups."""

    def __init__(
        self,
        *,
        node_id: int,
        storage: ReplicaStorage,
        send: Callable[[list[Message]], None],
        clock: Clock,
        metrics: NodeMetrics,
        endpoints: dict[int, str],
        snapshot_entries: int,
        snapshot_bytes: int = 0,
        unsafe_ack_before_commit: bool = False,
        ctx_nonce: bytes = b"",
        on_member_address: Callable[[int, str], None] = lambda node, address: None,
    ) -> None:
        self.node_id = node_id
        self.storage = storage
        self.send = send
        self.clock = clock
        self.metrics = metrics
        self.endpoints = endpoints
        self.snapshot_entries = snapshot_entries
        """Compact the log after this many applied entries (lagging nodes get a snapshot)."""
        self.snapshot_bytes = snapshot_bytes
        """... or once the applied entries above the last compaction hold this many bytes
        (0: never; log_bytes.py)."""
        self.unsafe_ack_before_commit = unsafe_ack_before_commit
        self.on_member_address = on_member_address
        self.may_send_early = may_send_before_persist
        """The early-send rule (persist.py); the simulation's sabotage replaces it to prove
        its checks catch a driver that sends too early."""
        self.replies = Replies()
        """Answers of the last batch; the host flushes them once its next persist is under
        way (so the per-op reply work overlaps the next fsync instead of delaying it)."""
        self.seq = itertools.count()
        """Tie-breaker of the applied-index waiter heaps."""
        self.hlc = HybridClock()
        """The node's hybrid logical clock: every proposed entry carries a stamp (hlc.py)."""
        # Read contexts must be unique cluster-wide and across restarts: the leader keys
        # pending reads by ctx, and a duplicate would be answered with the read index of
        # an earlier request (a stale read). Node id + per-process nonce + counter.
        self._ctx_prefix = node_id.to_bytes(8, "big") + ctx_nonce
        self._ctx = itertools.count(1)

    def _group_metrics(self, group: int) -> ShardSeries:
        """The group's labelled metrics, looked up once (a label lookup per Ready costs)."""
        return self.metrics.series(group)

    def not_leader(self, g: GroupState) -> NotLeaderOp:
        return NotLeaderOp(
            f"node {self.node_id} is not the leader of group {g.id}"
            + (f"; leader is {g.leader}" if g.leader else "; no leader known"),
            definite=True,
            leader_id=g.leader,
            leader_endpoint=self.endpoints.get(g.leader, ""),
        )

    # -- proposals (outside ready()/advance()) ----------------------------------------
    def propose_queued(self, g: GroupState) -> None:
        """Hand the group's queued writes (as few entries as fit), conf changes, admin
        commands and reads to its core."""
        self._propose_writes(g)
        if g.time.wanted > g.time.proposed and g.role == Role.LEADER:
            self._propose_stamp(g)
        self._propose_confs(g)
        if g.admin:
            propose_admin_entries(g, self.not_leader)
        self._start_reads(g)

    def _propose_writes(self, g: GroupState) -> None:
        if not g.writes:
            return
        writes, g.writes = g.writes, []
        if g.role != Role.LEADER:
            refused = self.not_leader(g)
            for w in writes:
                fail(w.fut, refused)
            return
        now_ms = self.clock.wall_ms()
        log_ms = g.log_clock.stamp(g.term, self.clock.now())
        for chunk in pack_entries(writes, MAX_ENTRY_OPS, MAX_ENTRY_BYTES):
            stamp = g.time.proposed = self.hlc.tick(now_ms)
            try:
                pid = g.core.propose(encode_batch([w.cmd for w in chunk], log_ms, stamp))
            except (NotLeaderError, ProposalDroppedError) as e:
                lost: OpError = (
                    self.not_leader(g)
                    if isinstance(e, NotLeaderError)
                    else UnavailableOp(f"proposal dropped: {e}", definite=True)
                )
                for w in chunk:
                    fail(w.fut, lost)
                continue
            self.metrics.batch_ops.observe(len(chunk))
            deadline = max(w.deadline for w in chunk)
            older = g.inflight.get(pid.index)
            if older is not None:
                # Our own earlier entry at this index was truncated away: it never commits.
                lost_old = UnavailableOp("proposal lost: its log entry was replaced", definite=True)
                for w in older.writes:
                    fail(w.fut, lost_old)
            g.inflight[pid.index] = Inflight(pid.term, chunk, deadline)
            if self.unsafe_ack_before_commit:
                _unsafe_ack(pid, chunk)

    def _propose_stamp(self, g: GroupState) -> None:
        """An empty stamped entry: moves the group's applied time for a causal read."""
        stamp = self.hlc.tick(self.clock.wall_ms())
        try:
            g.core.propose(encode_batch([], g.log_clock.stamp(g.term, self.clock.now()), stamp))
        except (NotLeaderError, ProposalDroppedError):
            return  # the waiting reads time out and retry elsewhere
        g.time.proposed = stamp

    def wait_for_time(self, g: GroupState, t: int, waiter: Waiter) -> None:
        """Answer ``waiter`` once the group's applied time reaches ``t``; ask for an
        entry that gets it there (hlc.py)."""
        heapq.heappush(g.time.waiters, (t, next(self.seq), waiter))
        self.hlc.observe(t)
        if g.role == Role.LEADER:
            g.time.wanted = max(g.time.wanted, t)
        elif g.leader and g.time.should_ask(t, self.clock.now()):
            self.send(
                [
                    Message(
                        type=MessageType.TIME_REQUEST,
                        group=g.id,
                        from_=self.node_id,
                        to=g.leader,
                        index=t,
                    )
                ]
            )

    def acceptable_time(self, t: int) -> bool:
        """May a time from outside (a client's token, a peer's request) be observed?"""
        return self.hlc.acceptable(t, self.clock.wall_ms())

    def time_refusal(self, t: int) -> InvalidOp:
        return InvalidOp(
            f"causal token {t} is more than {MAX_AHEAD_MS // 1000} s (hlc.MAX_AHEAD_MS) "
            f"ahead of node {self.node_id}'s clock: no node can have handed it out",
            definite=True,
        )

    def on_time_request(self, g: GroupState, m: Message) -> None:
        """A follower waits for time ``m.index``: a leader stamps an entry above it."""
        if not self.acceptable_time(m.index):
            self.metrics.dropped.labels(self.metrics.shard(g.id), "time_too_far").inc()
            return
        self.hlc.observe(m.index)
        if g.role == Role.LEADER and m.index > g.time.applied:
            g.time.wanted = max(g.time.wanted, m.index)

    def _propose_confs(self, g: GroupState) -> None:
        confs, g.confs = g.confs, []
        for c in confs:
            try:
                pid = g.core.propose_conf_change(c.change)
            except NotLeaderError:
                fail(c.fut, self.not_leader(g))
                continue
            except ProposalDroppedError as e:
                fail(c.fut, UnavailableOp(f"conf change dropped: {e}", definite=True))
                continue
            except ConsensusError as e:  # the core's own checks (e.g. already a learner)
                fail(c.fut, InvalidOp(f"conf change refused: {e}", definite=True))
                continue
            g.conf_inflight[pid.index] = (pid.term, c)

    def _start_reads(self, g: GroupState) -> None:
        if not g.reads:
            return
        reads, g.reads = g.reads, []
        ctx = self._ctx_prefix + next(self._ctx).to_bytes(8, "big")
        try:
            g.core.read_index(ctx)
        except NotLeaderError:
            err = self.not_leader(g)
            for r in reads:
                fail(r.fut, err)
            return
        g.read_ctx[ctx] = reads

    # -- one batch: begin, (host persists), finish --------------------------------------
    def begin(self, groups: Iterable[GroupState]) -> Batch | None:
        """Take each group's Ready, plan its persist and send what may leave before it.
        None: no group has a Ready."""
        readies = [(g, g.core.ready()) for g in groups if g.core.has_ready()]
        if not readies:
            return None
        plans = [self.plan(g, rd) for g, rd in readies]
        early: list[Message] = []
        late: list[Message] = []
        for g, rd in readies:
            if self.may_send_early(g.role, g.persisted_term, g.persisted_vote, rd):
                early.extend(rd.messages)
            else:
                late.extend(rd.messages)
        if early:
            self.send(early)
        return Batch(readies, plans, late)

    def finish(
        self,
        batch: Batch,
        results: dict[int, list[ApplyResult]],
        admin_results: dict[int, dict[int, int]],
    ) -> None:
        """After the batch's persist: send the rest, answer clients (``advance`` next)."""
        if batch.late:
            self.send(batch.late)
        for g, rd in batch.readies:
            self.after_persist(g, rd, results.get(g.id, []))
            if g.admin_inflight and rd.committed:
                resolve_admin(g, rd.committed, admin_results.get(g.id, {}), self.replies.defer)

    @staticmethod
    def advance(batch: Batch) -> None:
        """The batch is done: every core may hand out its next Ready."""
        for g, rd in batch.readies:
            g.core.advance(rd)

    def answer_applied(self, batch: Batch, results: dict[int, list[ApplyResult]]) -> None:
        """Answer the writes of the batch's committed entries from their apply results
        while the transaction that applies them is still committing (its fsync), then
        ``finish`` does the rest. Without this a write waited for a whole persist more
        (the one that applies it, which also carries the next batch's append).

        Safe for durability and linearizability: an entry reaches ``apply`` only once
        committed, i.e. durable in a quorum's logs, so every replica applies it whatever
        becomes of this transaction; and the state machine is deterministic (an outcome
        depends only on the log prefix, statemachine/apply.py), so a crash before the
        commit, or a retried commit (storage full), re-applies the same entries to the
        same state with these same results. The log is never compacted past what a
        committed transaction applied (compaction runs in the applying transaction, up
        to its applied index), so the re-apply always finds its entries. No read sees the
        state before the write once it is answered: strong and causal reads wait for
        ``g.applied``, which moves only in ``after_persist``, after the commit (eventual
        reads may be stale by contract). Conf changes are still answered after the
        commit."""
        for g, rd in batch.readies:
            rs = results.get(g.id)
            if rs and rd.committed:
                self._resolve_writes(g, rd.committed, rs, confs=False)
        self.replies.flush()

    def plan(self, g: GroupState, rd: Ready) -> Plan:
        # Conf changes take effect in the core now, before the persist, so the membership
        # the storage records in this transaction is the one after these entries.
        cs: ConfState | None = None
        addresses: dict[int, str] = {}
        for e in rd.committed:
            if e.type == EntryType.CONF_CHANGE:
                cc = ConfChange.decode(e.data)
                cs = g.core.apply_conf_change(cc)
                log.event(
                    "conf_change_applied", group=g.id, index=e.index, voters=sorted(cs.voters)
                )
                for part in cc.singles():  # a joint change adds and removes several
                    address = address_change(part, cs)
                    if address is not None:
                        addresses[part.node_id] = address
                        self.learn_address(part.node_id, address)
        applied = g.applied
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            applied = max(applied, rd.snapshot.metadata.index)
        if rd.committed:
            applied = max(applied, rd.committed[-1].index)
        compact_to = 0
        n = self.snapshot_entries
        if n > 0 and applied - g.compacted >= n:
            # Keep a tail so briefly lagging followers still catch up from the log.
            compact_to = applied - n // 4
        at = self._size_compaction(g, applied)
        if at > g.compacted:
            compact_to = max(compact_to, at)
        if self.storage.tight and applied > g.compacted:
            # Nearly full: the log's old entries may hold most of the data; followers
            # that lag will need a snapshot.
            compact_to = applied
        hs = rd.hard_state
        log_changes = bool(
            rd.entries
            or rd.snapshot is not None
            or (hs is not None and (hs.term, hs.vote) != (g.persisted_term, g.persisted_vote))
        )
        return Plan(
            group=g.id,
            rd=rd,
            compact_to=compact_to,
            conf_state=cs,
            addresses=addresses,
            log_changes=log_changes,
        )

    def _size_compaction(self, g: GroupState, applied: int) -> int:
        """Where compaction by size may go (0: not now; log_bytes.py): on a leader, no
        further than what every other member stores (its match), until the log holds
        HOLD_FACTOR times the limit. A follower that installed a snapshot needs the
        entries after it: with only a quarter of the limit kept, one that took longer
        to send and install than the cluster took to write that much found the log
        compacted past its snapshot again, got another snapshot, and never caught up
        under a steady write load."""
        at = g.log_bytes.compact_point(applied, self.snapshot_bytes)
        if at <= g.compacted or g.role != Role.LEADER:
            return at
        if g.log_bytes.between(g.compacted, applied) >= HOLD_FACTOR * self.snapshot_bytes:
            return at  # a member that is down or far behind: a snapshot, as before
        others = [p.match for p in g.core.status(progress=True).progress if p.id != self.node_id]
        return min(at, *others) if others else at

    def learn_address(self, node: int, address: str) -> None:
        """A member's address from the log or a snapshot: reach it there from now on."""
        if address and self.endpoints.get(node) != address:
            log.event("member_address", node=node, address=address)
            self.endpoints[node] = address
            self.on_member_address(node, address)

    def after_persist(self, g: GroupState, rd: Ready, results: list[ApplyResult]) -> None:
        leadership_changed = rd.soft_state is not None and self._on_soft_state(
            g, rd.soft_state.leader, rd.soft_state.role
        )
        if rd.hard_state is not None:
            g.term = g.persisted_term = rd.hard_state.term
            g.persisted_vote = rd.hard_state.vote
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            for node, address in self.storage.member_addresses(g.id).items():
                self.learn_address(node, address)
            snap_index = rd.snapshot.metadata.index
            g.applied = max(g.applied, snap_index)
            g.compacted = max(g.compacted, snap_index)
            g.log_bytes.compacted(g.compacted)
            for idx in [i for i in g.inflight if i <= snap_index]:
                for w in g.inflight.pop(idx).writes:
                    fail(w.fut, UnavailableOp("replaced by a snapshot", definite=False))
        for e in rd.entries:
            g.log_bytes.stored(e.index, e.size())
            if e.type == EntryType.NORMAL:
                self.hlc.observe(entry_stamp(e.data))
        for e in rd.committed:  # applied in this persist (not entries merely stored)
            if e.type == EntryType.NORMAL:
                g.log_clock.observe(entry_time_ms(e.data))
        if rd.committed or (rd.snapshot is not None and not rd.snapshot.is_empty()):
            g.time.applied = self.storage.applied_time(g.id)
            self.hlc.observe(g.time.applied)
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            g.log_clock.observe(self.storage.log_time(g.id))
        if rd.committed:
            self._resolve_writes(g, rd.committed, results)
            g.applied = max(g.applied, rd.committed[-1].index)
        for rs in rd.read_states:
            for r in g.read_ctx.pop(rs.request_ctx, []):
                if g.applied >= rs.index:
                    self.replies.defer(r.fut, g.applied)
                else:
                    heapq.heappush(g.applied_waiters, (rs.index, next(self.seq), r))
        while g.applied_waiters and g.applied_waiters[0][0] <= g.applied:
            self.replies.defer(heapq.heappop(g.applied_waiters)[2].fut, g.applied)
        if g.time.waiters:
            for w in g.time.due():
                self.replies.defer(w.fut, g.applied)
        if leadership_changed:
            g.fail_unconfirmed_reads(self.not_leader(g))
        st = None
        if rd.hard_state is not None or rd.committed:
            st = g.core.status()
            m = self._group_metrics(g.id)
            m.term.set(st.term)
            m.commit.set(st.commit)
            m.applied.set(g.applied)
        if st is not None and g.compacted < st.applied:
            g.compacted = max(g.compacted, self.storage.first_index(g.id) - 1)
            g.log_bytes.compacted(g.compacted)

    def _on_soft_state(self, g: GroupState, leader: int, role: Role) -> bool:
        """Record the new leader/role; True when either changed."""
        changed = leader != g.leader or role != g.role
        if leader != g.leader:
            self.metrics.leader_changes.labels(self.metrics.shard(g.id)).inc()
            log.event("leader_changed", group=g.id, leader=leader, role=role.name.lower())
        g.leader = leader
        if role != g.role:
            log.event("role_changed", group=g.id, role=role.name.lower(), leader=leader)
        g.role = role
        self.metrics.shard_gauge(self.metrics.is_leader, g.id).set(1 if role == Role.LEADER else 0)
        if role != Role.LEADER and g.writes:
            err = self.not_leader(g)
            for w in g.writes:
                fail(w.fut, err)
            g.writes = []
        return changed

    def _resolve_writes(
        self,
        g: GroupState,
        committed: tuple[Entry, ...],
        results: list[ApplyResult],
        *,
        confs: bool = True,
    ) -> None:
        by_index: dict[int, list[ApplyResult]] = {}
        for r in results:
            by_index.setdefault(r.index, []).append(r)
        now = self.clock.now()
        hist = self._group_metrics(g.id).latency
        for e in committed:
            conf = g.conf_inflight.pop(e.index, None) if confs else None
            if conf is not None:
                if conf[0] == e.term:
                    ok(conf[1].fut, e.index)
                else:
                    fail(conf[1].fut, UnavailableOp("conf change lost", definite=True))
            inf = g.inflight.pop(e.index, None)
            if inf is None:
                continue
            if inf.term != e.term:
                err = UnavailableOp(
                    f"proposal lost: index {e.index} holds term {e.term}, not {inf.term}",
                    definite=True,
                )
                for w in inf.writes:
                    fail(w.fut, err)
                continue
            rs = by_index.get(e.index, [])
            if len(rs) != len(inf.writes):  # shifted answers lie (jepsen r7): say "unknown"
                rs = []
            for i, w in enumerate(inf.writes):
                if i < len(rs):
                    hist.observe(now - w.queued_at)
                    self.replies.defer(w.fut, rs[i])
                else:
                    fail(w.fut, UnavailableOp("no apply result", definite=False))


def _unsafe_ack(pid: ProposalId, chunk: list[Write]) -> None:
    for w in chunk:
        if not w.fut.done():
            w.fut.set_result(ApplyResult(pid.index, pid.index, True, None, None))
